"""The API served by uvicorn inside the agent's own event loop.

The agent owns the process: its signals stay the agent's (uvicorn would
otherwise install its own handlers), and a port that cannot be bound is
reported, not fatal (uvicorn would exit the process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from ninefold.security.files import NodeTlsFiles, TlsError
from ninefold.security.tls import ReloadingServerContext

log = logging.getLogger("ninefold.api")

STOP_TIMEOUT = 5
"""Seconds a stopping server gives requests in flight before cancelling them."""


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ApiServer:
    """Serves `app` on host:port until stop()."""

    def __init__(self, app: FastAPI, host: str, port: int, tls: NodeTlsFiles | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        """With the node's TLS files: HTTPS, verifying a client certificate when
        one is presented, reloading the files when they change."""
        self.tls_context: ReloadingServerContext | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Listen and serve; False (after one log line) when the port cannot be bound."""
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            log.error(
                "API could not listen on %s:%s: %s; the agent runs on without it",
                self.host,
                self.port,
                exc.strerror or exc,
            )
            return False
        self.port = sock.getsockname()[1]
        if self.tls is not None:
            try:
                self.tls_context = ReloadingServerContext(self.tls)
            except TlsError as exc:
                sock.close()
                log.error("API on %s:%s not started: %s", self.host, self.port, exc)
                return False
        context = self.tls_context.context if self.tls_context is not None else None
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=STOP_TIMEOUT,
            ssl_context_factory=(lambda _c, _d: context) if context is not None else None,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._serve(self._server, sock), name="api")
        return True

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except (Exception, SystemExit) as exc:  # uvicorn exits on a failed startup
            log.error("API on %s:%s stopped: %r", self.host, self.port, exc)
        finally:
            sock.close()

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        streams = getattr(self.app.state, "event_streams", None)
        if streams is not None:
            streams.close()  # event streams never end on their own
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None
