"""Telling a service manager how the agent is doing: systemd's notify
protocol (sd_notify(3)), a datagram to the socket in $NOTIFY_SOCKET.

A no-op when the agent was not started by a `Type=notify` unit. Sending
never blocks the event loop: a non-blocking datagram that cannot be sent at
once is dropped (systemd reads them promptly; a lost STATUS line is harmless).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("ninefold.agent")


class ServiceNotifier:
    def __init__(self, address: str | None = None) -> None:
        """`address` defaults to $NOTIFY_SOCKET, which is then taken out of the
        environment: the agent's children (etcd, services) must not speak for
        it (etcd would send its own READY=1)."""
        raw = os.environ.pop("NOTIFY_SOCKET", None) if address is None else address
        self.address: str | None = None
        if raw and (raw.startswith("/") or raw.startswith("@")):
            # '@name' is Linux's abstract namespace: a leading NUL byte.
            self.address = "\0" + raw[1:] if raw.startswith("@") else raw
        elif raw:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying", raw)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines (`ready=1` becomes READY=1); True when sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("could not notify the service manager: %s", exc)
            return False
        return True

    def status(self, text: str) -> None:
        self.send(status=text)

    def ready(self, text: str) -> None:
        self.send(ready=1, status=text, mainpid=os.getpid())

    def stopping(self, text: str) -> None:
        self.send(stopping=1, status=text)
