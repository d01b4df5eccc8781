"""TCP routes: each accepted connection is spliced, byte for byte, to a backend
connection until both sides are done (a half-close is passed on).

Counters: a connection is a request; its latency is the time until the
backend connection was up; 'error' when no backend could be reached."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import TYPE_CHECKING

from ninefold.gateway.builtin.http import answered
from ninefold.gateway.builtin.mesh import Upstream, open_upstream
from ninefold.gateway.engine import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ninefold.gateway.builtin.engine import BuiltinEngine, ServiceState
    from ninefold.gateway.engine import Counters
    from ninefold.gateway.routes import Backend


class TcpClient(asyncio.Protocol):
    """A client connection to a TCP route's port."""

    __slots__ = (
        "backend",
        "bc",
        "closed",
        "early",
        "engine",
        "ip",
        "peer_eof",
        "port",
        "svc",
        "transport",
        "upstream",
        "upstream_eof",
    )

    def __init__(self, engine: BuiltinEngine, port: int) -> None:
        self.engine = engine
        self.port = port
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: Upstream | None = None
        self.svc: ServiceState | None = None
        self.backend: Backend | None = None
        self.bc: Counters | None = None
        self.ip = ""
        self.closed = False
        self.early: list[bytes] = []
        """Bytes the client sent before the backend connection was up (uvloop
        does not honour pause_reading() called from connection_made)."""
        self.peer_eof = False
        self.upstream_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        svc = self.engine.tcp_service(self.port)
        if svc is None:
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.svc = svc
        svc.total.requests += 1
        svc.total.active += 1
        self.engine.tunnels.add(self)
        task = self.engine.loop.create_task(self._connect(svc))
        self.engine.tasks.add(task)
        task.add_done_callback(self.engine.tasks.discard)

    async def _connect(self, svc: ServiceState) -> None:
        engine = self.engine
        loop = engine.loop
        started = loop.time()
        tried: set[str] = set()
        attempts = 0
        while not self.closed:
            backend = engine.choose(svc, self.ip, tried)
            if backend is None:
                break
            attempts += 1
            bc = svc.backend_counters(backend.key)
            bc.requests += 1
            attempt_started = loop.time()
            try:
                async with asyncio.timeout(svc.connect_timeout):
                    transport, upstream = await open_upstream(
                        loop, lambda: Upstream(self), backend, engine.mesh_client
                    )
            except (OSError, TimeoutError):
                engine.mark_down(backend.key)
                answered(bc, "error")
                _observe(bc, loop.time() - attempt_started)
                tried.add(backend.key)
                if attempts > svc.retries:
                    break
                svc.total.retries += 1
                bc.retries += 1
                continue
            if self.closed:
                transport.close()
                return
            self.upstream = upstream
            self.backend = backend
            self.bc = bc
            bc.active += 1
            engine.inflight_add(backend.key, 1)
            now = loop.time()
            _observe(svc.total, now - started)
            _observe(bc, now - attempt_started)
            if self.early:
                transport.write(b"".join(self.early))
                self.early = []
            if self.peer_eof:
                if not self.eof_received():
                    self.transport.close()
            else:
                self.transport.resume_reading()
            return
        if not self.closed:
            answered(svc.total, "error")
            _observe(svc.total, loop.time() - started)
            self.transport.close()

    # --- client side --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            self.early.append(data)
        elif not upstream.transport.is_closing():
            upstream.transport.write(data)

    def eof_received(self) -> bool:
        self.peer_eof = True
        upstream = self.upstream
        if upstream is None:
            return not self.closed  # passed on once the backend connection is up
        if self.upstream_eof:
            return False
        if upstream.transport.can_write_eof():
            upstream.transport.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.engine.tunnels.discard(self)
        svc = self.svc
        if svc is not None:
            svc.total.active -= 1
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            assert self.bc is not None and self.backend is not None
            self.bc.active -= 1
            self.engine.inflight_add(self.backend.key, -1)
            if exc is None:
                upstream.transport.close()
            else:
                upstream.transport.abort()

    def abort(self) -> None:
        self.transport.abort()

    # --- backend side -------------------------------------------------------------------------

    def from_upstream_eof(self) -> bool:
        self.upstream_eof = True
        if self.peer_eof or self.closed:
            return False
        if self.transport.can_write_eof():
            self.transport.write_eof()
            return True
        return False

    def from_upstream_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if exc is None:
            self.transport.close()
        else:
            self.transport.abort()


def _observe(counters: Counters, seconds: float) -> None:
    counters.latency_sum += seconds
    i = bisect_left(LATENCY_BUCKETS, seconds)
    if i < len(LATENCY_BUCKETS):
        counters.latency_counts[i] += 1
