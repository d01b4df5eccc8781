"""TLS termination at the gateway: which certificate, and checking it loads.

`gateway.tls` names a certificate and key, or none, meaning the node's own
certificate from the cluster CA (`<data-dir>/tls/node.crt` and `node.key`,
which the agent passes in `GatewaySettings`). Both engines listen on
`gateway.tls.port` with TLS 1.2 or later; the builtin engine with an
`ssl.SSLContext`, the haproxy engine with `bind ... ssl crt <pem>`, from a
copy of certificate and key in one file (mode 0600) in its run directory.

Every problem is a `GatewayTlsError` with one line: the agent logs it as the
reason the gateway could not start.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from ninefold.security.tls import paths_stamp
from ninefold.spec.routing import GatewayTlsSpec

__all__ = [
    "CertificateWatch",
    "GatewayTlsError",
    "GatewayTlsSpec",
    "TlsSettings",
    "combined_pem",
    "resolve_tls",
    "server_context",
    "write_private",
]


class GatewayTlsError(RuntimeError):
    """The gateway's certificate or key cannot be used; the message is one line."""


@dataclass(frozen=True)
class TlsSettings:
    """The TLS listener of one node's gateway, with its files resolved."""

    port: int
    cert: Path
    key: Path
    redirect_http: bool = False
    node_certificate: bool = False
    """cert and key are the node's own, from the cluster CA."""


def resolve_tls(
    spec: GatewayTlsSpec | None, node_cert: Path | None, node_key: Path | None
) -> TlsSettings | None:
    """The TLS settings `spec` means on a node whose own certificate files are
    `node_cert` and `node_key` (None when the agent does not know them)."""
    if spec is None:
        return None
    if spec.cert is not None and spec.key is not None:
        return TlsSettings(spec.port, Path(spec.cert), Path(spec.key), spec.redirect_http)
    if node_cert is None or node_key is None:
        raise GatewayTlsError(
            "gateway.tls: no cert and key given, and this agent knows no node certificate "
            "(give gateway.tls.cert and key)"
        )
    return TlsSettings(spec.port, node_cert, node_key, spec.redirect_http, node_certificate=True)


def _check_files(tls: TlsSettings) -> None:
    for what, path in (("certificate", tls.cert), ("key", tls.key)):
        if path.is_file():
            continue
        if tls.node_certificate:
            raise GatewayTlsError(
                f"gateway.tls: the node's {what} {path} is missing (issue the node's "
                "certificate from the cluster CA, or give gateway.tls.cert and key)"
            )
        raise GatewayTlsError(f"gateway.tls: {what} {path} is missing")


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context presenting `tls`'s certificate, TLS 1.2 or later
    (blocking: reads the files)."""
    _check_files(tls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    load_chain(context, tls)
    return context


def load_chain(context: ssl.SSLContext, tls: TlsSettings) -> None:
    """(Re)load the certificate and key into `context`; new connections get them."""
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except PermissionError:
        raise GatewayTlsError(
            f"gateway.tls: {tls.cert} or {tls.key} is not readable by the agent"
        ) from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise GatewayTlsError(
            f"gateway.tls: {tls.cert} and {tls.key} are not a PEM certificate and its "
            f"key ({reason.lower().replace('_', ' ')})"
        ) from None
    except OSError as exc:
        raise GatewayTlsError(f"gateway.tls: {exc.filename or tls.cert}: {exc.strerror}") from None


def combined_pem(tls: TlsSettings) -> bytes:
    """Certificate (chain) and key in one PEM, as HAProxy's `crt` wants it,
    once they load as a pair (blocking)."""
    server_context(tls)
    cert = tls.cert.read_bytes()
    key = tls.key.read_bytes()
    return cert.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n"


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the owner only (0600 from
    the first byte)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


class CertificateWatch:
    """Tells when the certificate or key file changed (a rotation)."""

    def __init__(self, tls: TlsSettings) -> None:
        self.tls = tls
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, ...]:
        return paths_stamp(self.tls.cert, self.tls.key)

    def changed(self) -> bool:
        """Whether the files changed since the last call (blocking: stats them)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True
