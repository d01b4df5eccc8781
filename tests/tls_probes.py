"""Probes of TLS ports the security tests share: is a connection refused?"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def plain_refused(host: str, port: int) -> bool:
    """A plain-text HTTP request gets no HTTP answer (a TLS port drops it or alerts)."""
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            data = sock.recv(64)
        except OSError:
            return True
    return not data.startswith(b"HTTP/") and b"\x00\x00\x00\x04" not in data[:16]


def tls_refused(
    host: str, port: int, ca: Path, cert: Path | None = None, key: Path | None = None
) -> bool:
    """A TLS client trusting `ca`, presenting `cert` (or none), cannot get an answer:
    the handshake fails, or (TLS 1.3) the first read does."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection((host, port), timeout=3) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as sock,
        ):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = sock.recv(64)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return not data


def served_cert(host: str, port: int, ca: Path, cert: Path, key: Path) -> bytes:
    """The DER certificate the server at host:port presents to a good client."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection((host, port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def mesh_get(
    host: str,
    port: int,
    node: str,
    instance: str,
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    tls12: bool = True,
) -> bytes | None:
    """GET / through a gateway's mesh port as another node's gateway would:
    server name `node` (checked against the certificate), ALPN
    `ninefold/<instance>`, `cert` as client certificate (or none). `tls12`:
    at most TLS 1.2, where a refused client certificate fails the handshake
    itself (with 1.3 the client learns it at its first read). None: refused;
    b"": closed without an answer; else what was answered."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols([f"ninefold/{instance}"])
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=node) as sock,
        ):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(4096)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return None
