"""SSL contexts for the agent's API and for clients of it.

The API's context follows its files: `ReloadingServerContext` checks the
node's certificate and key files at most every `RELOAD_CHECK_EVERY` seconds
(on a TLS handshake, from the event loop: a stat and a few KB read) and moves
new handshakes to a fresh context when they changed. Connections already open
keep the certificate they started with. The node's revocation list
(`crl.pem`) is one of those files: a certificate revoked is refused from the
next handshake on. The gateway's mesh listener uses the
same class, requiring a client certificate and offering its own ALPN names.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path

from ninefold.security.files import NodeTlsFiles, TlsError

log = logging.getLogger("ninefold.security")

RELOAD_CHECK_EVERY = 1.0
"""Seconds between two looks at a node's certificate files."""


def server_context(files: NodeTlsFiles, require_client_cert: bool = False) -> ssl.SSLContext:
    """TLS 1.2+ server context with the node's certificate that verifies a client
    certificate when one is presented (CERT_OPTIONAL): a certificate from
    another CA, or an expired one, fails the handshake; no certificate passes
    (people and the CLI authenticate with bearer tokens instead).
    `require_client_cert`: no certificate fails the handshake too."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.ca)
        load_revocations(ctx, files)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS files in {files.directory}: {_reason(exc)}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def load_revocations(ctx: ssl.SSLContext, files: NodeTlsFiles) -> None:
    """Check the peer's certificate against the node's revocation list, when it
    has one (OpenSSL then needs a CRL from the CA, so the flag goes only with
    the file)."""
    if files.crl.is_file():
        ctx.load_verify_locations(cafile=files.crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Client context trusting only the cluster CA, presenting `cert` if given."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS files ({ca}): {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


class ReloadingServerContext:
    """A server context whose certificate follows the files on disk."""

    def __init__(
        self, files: NodeTlsFiles, require_client_cert: bool = False, what: str = "API"
    ) -> None:
        self.files = files
        self.what = what
        self._require = require_client_cert
        self._stamp = self._stat()
        self._current = server_context(files, require_client_cert)
        self._checked = time.monotonic()
        self.context = server_context(files, require_client_cert)
        """The context to give the server: it hands each handshake to the current one."""
        self.context.sni_callback = self._choose
        self.reloads = 0
        self._alpn: list[str] | None = None

    def _stat(self) -> tuple[int, ...]:
        return files_stamp(self.files)

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_EVERY:
            self._checked = now
            self.reload()
        return self._current

    def reload(self) -> bool:
        """Load the files again if they changed; False if they did not or cannot
        be loaded now (mid-rotation: the next look tries again)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        try:
            fresh = server_context(self.files, self._require)
        except TlsError as exc:
            log.warning("keeping the current certificate: %s", exc)
            return False
        if self._alpn is not None:
            fresh.set_alpn_protocols(self._alpn)
        self._current, self._stamp = fresh, stamp
        self.reloads += 1
        log.info("%s certificate reloaded from %s", self.what, self.files.cert)
        return True

    def set_alpn_protocols(self, protocols: list[str]) -> None:
        """The ALPN protocols to agree to from the next handshake on (the
        client's first one that is listed; none listed: none agreed)."""
        self._alpn = list(protocols)
        for ctx in (self.context, self._current):
            ctx.set_alpn_protocols(self._alpn)

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sock.context = self.current()


def files_stamp(files: NodeTlsFiles) -> tuple[int, ...]:
    """What changes when any of a node's TLS files is rewritten or replaced."""
    return paths_stamp(files.ca, files.cert, files.key, files.crl)


def paths_stamp(*paths: Path | str | None) -> tuple[int, ...]:
    """The mtime and inode of each file (zeros for a missing one, or None).
    Blocking: a stat each."""
    out: list[int] = []
    for path in paths:
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        out += [st.st_mtime_ns, st.st_ino] if st is not None else [0, 0]
    return tuple(out)
