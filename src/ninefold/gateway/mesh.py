"""Gateway to instance over mutual TLS (`route.mtls`): the TLS both engines share.

A gateway reaches an instance of an mtls service on another node through that
node's mesh listener (`ports.mesh`): a TLS connection with this node's
certificate as client certificate, the cluster CA as the only trust, the
instance's name as server name (SNI), and the peer's certificate checked for
the other node's name. The mesh listener requires a client certificate from
the cluster CA, reads the server name, and pipes the bytes to the instance
when it is one of its own node's mtls instances (routes.py `mesh_targets`).

The server name is the instance and the expected certificate name is the
node, so hostname checking cannot be OpenSSL's (it checks the server name):
the chain is verified against the CA as usual, and `peer_has_name` checks the
node's name in the certificate's subject alternative names after the
handshake. Files are the node's own (`<data-dir>/tls/`), reloaded when they
change, so a rotated certificate is used from the next connection on.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from ninefold import defaults
from ninefold.security.files import NodeTlsFiles, TlsError
from ninefold.security.tls import ReloadingServerContext, server_context

log = logging.getLogger("ninefold.gateway")

__all__ = [
    "MeshClientContext",
    "MeshError",
    "mesh_server_context",
    "peer_has_name",
]


class MeshError(RuntimeError):
    """The mesh's TLS files cannot be used; the message is one line."""


def mesh_server_context(files: NodeTlsFiles) -> ReloadingServerContext:
    """The mesh listener's context: the node's certificate, a client
    certificate from the cluster CA required, server names remembered
    (blocking: reads the files)."""
    try:
        return ReloadingServerContext(files, require_client_cert=True, what="mesh")
    except TlsError as exc:
        raise MeshError(f"mesh listener: {exc}") from None


def client_context(files: NodeTlsFiles) -> ssl.SSLContext:
    """This node's certificate as client certificate, trusting only the
    cluster CA; names are checked by `peer_has_name` (blocking)."""
    try:
        ctx = ssl.create_default_context(cafile=str(files.ca))
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
        raise MeshError(
            f"mesh: cannot load the node's TLS files in {files.directory}: {reason or exc}"
        ) from None
    ctx.check_hostname = False  # the server name is the instance, the certificate names the node
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def peer_has_name(peercert: dict[str, Any] | None, name: str) -> bool:
    """Whether a verified peer certificate (`getpeercert()`) names `name` as a
    DNS subject alternative name (node certificates do, see certs.py)."""
    if not peercert:
        return False
    return ("DNS", name) in peercert.get("subjectAltName", ())


class MeshClientContext:
    """The client side's context, following the node's files: looked at, at
    most every GATEWAY_TLS_CHECK_INTERVAL, when a connection is opened."""

    def __init__(self, files: NodeTlsFiles) -> None:
        self.files = files
        self._context: ssl.SSLContext | None = None
        self._stamp: tuple[int, ...] = ()
        self._checked = float("-inf")
        self.reloads = 0

    def context(self) -> ssl.SSLContext:
        """The current context (MeshError if the files never loaded)."""
        now = time.monotonic()
        if self._context is None or now - self._checked >= defaults.GATEWAY_TLS_CHECK_INTERVAL:
            self._checked = now
            self._reload()
        if self._context is None:
            raise MeshError(f"mesh: no usable node certificate in {self.files.directory}")
        return self._context

    def _reload(self) -> None:
        stamp = _stamp(self.files)
        if stamp == self._stamp and self._context is not None:
            return
        try:
            fresh = client_context(self.files)
        except MeshError as exc:
            if self._context is None:
                raise
            log.warning("mesh client keeps its old certificate: %s", exc)
            return
        if self._context is not None:
            self.reloads += 1
            log.info("mesh client certificate reloaded from %s", self.files.cert)
        self._context, self._stamp = fresh, stamp


def _stamp(files: NodeTlsFiles) -> tuple[int, ...]:
    out: list[int] = []
    for path in (files.ca, files.cert, files.key):
        try:
            st = path.stat()
        except OSError:
            out += [0, 0]
        else:
            out += [st.st_mtime_ns, st.st_ino]
    return tuple(out)


def check_server_files(files: NodeTlsFiles) -> None:
    """MeshError unless the node's files load as the mesh listener's (blocking)."""
    try:
        server_context(files, require_client_cert=True)
    except TlsError as exc:
        raise MeshError(f"mesh listener: {exc}") from None
