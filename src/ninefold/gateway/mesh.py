"""Gateway to instance over mutual TLS (`route.mtls`): the TLS both engines share.

A gateway reaches an instance of an mtls service on another node through that
node's mesh listener (`ports.mesh`): a TLS connection with this node's
certificate as client certificate, the cluster CA as the only trust, the other
node's name as server name (its certificate must carry it), and the instance
named in ALPN (`ninefold/<instance>`). The mesh listener requires a client
certificate from the cluster CA, agrees to the ALPN names of its own node's
mtls instances only (routes.py `mesh_targets`), and pipes the bytes to the
instance agreed on; a connection that agreed on none is closed.

Why ALPN and not the server name for the instance: HAProxy 2.6 checks the
server's certificate against the server name it sends whenever it sends one
(`verifyhost` only applies without `sni`), so the server name has to be the
node's. Files are the node's own (`<data-dir>/tls/`), reloaded when they
change, so a rotated certificate is used from the next connection on.
"""

from __future__ import annotations

import logging
import ssl
import time

from ninefold import defaults
from ninefold.security.files import NodeTlsFiles, TlsError
from ninefold.security.tls import (
    ReloadingServerContext,
    files_stamp,
    load_revocations,
    server_context,
)

log = logging.getLogger("ninefold.gateway")

__all__ = [
    "MeshClientContext",
    "MeshError",
    "mesh_server_context",
]


class MeshError(RuntimeError):
    """The mesh's TLS files cannot be used; the message is one line."""


def mesh_server_context(files: NodeTlsFiles) -> ReloadingServerContext:
    """The mesh listener's context: the node's certificate, a client
    certificate from the cluster CA required (blocking: reads the files); its
    ALPN names are set as the node's mtls instances come and go."""
    try:
        return ReloadingServerContext(files, require_client_cert=True, what="mesh")
    except TlsError as exc:
        raise MeshError(f"mesh listener: {exc}") from None


def client_context(files: NodeTlsFiles) -> ssl.SSLContext:
    """This node's certificate as client certificate, trusting only the
    cluster CA, checking the server's name (blocking)."""
    try:
        ctx = ssl.create_default_context(cafile=str(files.ca))
        ctx.load_cert_chain(files.cert, files.key)
        load_revocations(ctx, files)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
        raise MeshError(
            f"mesh: cannot load the node's TLS files in {files.directory}: {reason or exc}"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class MeshClientContext:
    """The client side's contexts, one per ALPN name (an SSLContext has one
    list), following the node's files: looked at, at most every
    GATEWAY_TLS_CHECK_INTERVAL, when a connection is opened (a stat; the
    files are read again only after they changed)."""

    def __init__(self, files: NodeTlsFiles) -> None:
        self.files = files
        self._context: ssl.SSLContext | None = None
        self._by_alpn: dict[str, ssl.SSLContext] = {}
        self._stamp: tuple[int, ...] = ()
        self._checked = float("-inf")
        self.reloads = 0

    def context(self, alpn: str) -> ssl.SSLContext:
        """The current context offering `alpn` (MeshError if the files never loaded)."""
        now = time.monotonic()
        if self._context is None or now - self._checked >= defaults.GATEWAY_TLS_CHECK_INTERVAL:
            self._checked = now
            self._reload()
        ctx = self._by_alpn.get(alpn)
        if ctx is None:
            if self._context is None:
                raise MeshError(f"mesh: no usable node certificate in {self.files.directory}")
            ctx = client_context(self.files)
            ctx.set_alpn_protocols([alpn])
            self._by_alpn[alpn] = ctx
        return ctx

    def _reload(self) -> None:
        stamp = files_stamp(self.files)
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
        self._by_alpn.clear()


def check_server_files(files: NodeTlsFiles) -> None:
    """MeshError unless the node's files load as the mesh listener's (blocking)."""
    try:
        server_context(files, require_client_cert=True)
    except TlsError as exc:
        raise MeshError(f"mesh listener: {exc}") from None
