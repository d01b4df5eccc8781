"""Small socket checks shared by the agent, the local cluster and the doctor."""

from __future__ import annotations

import socket


def bind_error(address: str, port: int) -> OSError | None:
    """Why a listener could not bind address:port now; None when it could."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc
    return None


def port_is_free(address: str, port: int) -> bool:
    return bind_error(address, port) is None
