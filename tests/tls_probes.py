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
