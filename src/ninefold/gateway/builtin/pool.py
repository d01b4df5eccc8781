"""Keep-alive connections from the gateway to one backend, and the protocol
that reads a backend's responses for the exchange it serves."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpResponseParser

from ninefold import defaults
from ninefold.gateway.builtin.mesh import open_upstream

if TYPE_CHECKING:
    from ninefold.gateway.builtin.http import Exchange
    from ninefold.gateway.mesh import MeshClientContext
    from ninefold.gateway.routes import Backend


# How a response body is passed to the client.
BODY_NONE = 0
BODY_RAW = 1  # as received (Content-Length, or until close to an HTTP/1.0 client)
BODY_CHUNKED = 2  # re-chunked for an HTTP/1.1 client


class _ExtraResponse(Exception):
    """The backend sent more than one response for one request."""


class Pool:
    """Idle connections to one backend, newest last (reused first)."""

    __slots__ = ("backend", "idle", "key", "mesh", "open")

    def __init__(self, backend: Backend, mesh: MeshClientContext | None = None) -> None:
        self.key = backend.key
        self.backend = backend
        """Where connections go: the instance, or its node's mesh listener."""
        self.mesh = mesh
        """This node's mesh client TLS (needed when `backend.mesh` is set)."""
        self.idle: deque[BackendConnection] = deque()
        self.open = True
        """False once the backend left the table or drains: connections are
        closed when their exchange ends instead of being kept."""

    async def connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> BackendConnection:
        async with asyncio.timeout(timeout):
            _, conn = await open_upstream(
                loop, lambda: BackendConnection(self, loop), self.backend, self.mesh
            )
        return conn

    def take(self, now: float, max_idle: float | None = None) -> BackendConnection | None:
        """The most recently used idle connection (None: open a new one);
        with `max_idle`, only one idle for less than that."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if max_idle is not None and now - conn.idle_since > max_idle:
                idle.append(conn)
                return None
            return conn
        return None

    def release(self, conn: BackendConnection, now: float) -> None:
        if not self.open or conn.closed or len(self.idle) >= defaults.GATEWAY_POOL_MAX_IDLE:
            conn.close()
            return
        conn.idle_since = now
        self.idle.append(conn)

    def discard(self, conn: BackendConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, deque()
        for conn in idle:
            conn.close()

    def close(self) -> None:
        self.open = False
        self.close_idle()

    def sweep(self, now: float) -> None:
        """Close connections idle longer than defaults.GATEWAY_POOL_IDLE_TIMEOUT (oldest first)."""
        idle = self.idle
        while idle and (
            idle[0].closed or now - idle[0].idle_since > defaults.GATEWAY_POOL_IDLE_TIMEOUT
        ):
            idle.popleft().close()


class BackendConnection(asyncio.Protocol):
    """One connection to a backend. Bound to an exchange while a request is on
    it; parses the response and passes it on to the exchange's client."""

    __slots__ = (
        "body_mode",
        "closed",
        "done",
        "exchange",
        "extra",
        "headers",
        "idle_since",
        "interim",
        "keep_alive",
        "last_read",
        "loop",
        "out",
        "parser",
        "pool",
        "reading_paused",
        "reason",
        "received",
        "server_timeout",
        "timer",
        "timer_due",
        "transport",
        "until_close",
        "wait_from",
    )

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self.out: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.received = False
        self.done = False
        self.extra = False
        self.interim = False
        self.keep_alive = False
        self.body_mode = BODY_NONE
        self.until_close = False
        self.reading_paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.server_timeout = 0.0
        self.wait_from = 0.0
        self.last_read = 0.0

    # --- life cycle ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def bind(self, exchange: Exchange, server_timeout: float) -> None:
        self.exchange = exchange
        self.server_timeout = server_timeout
        self.received = False
        self.done = False
        self.interim = False
        self.reason = b""
        self.headers = []
        self.body_mode = BODY_NONE
        self.until_close = False

    def unbind(self) -> None:
        self.exchange = None
        if self.reading_paused:
            self.resume_reading()

    def waiting(self, now: float) -> None:
        """The request is all sent: the server timeout runs from now."""
        self.wait_from = now
        due = now + self.server_timeout
        if self.timer is None or self.timer_due > due:
            self._arm(due)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        ex = self.exchange
        if ex is None or self.closed:
            return
        now = self.loop.time()
        if self.reading_paused or not ex.req_done:
            # the client is slow to read the response, or still sending its body
            self._arm(now + self.server_timeout)
            return
        due = max(self.wait_from, self.last_read) + self.server_timeout
        if now >= due:
            ex.upstream_failed(self, "timeout")
        else:
            self._arm(due)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if not self.closed:
                self.transport.resume_reading()

    # --- asyncio callbacks ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # an idle connection has nothing to say
            self.pool.discard(self)
            self.abort()
            return
        self.received = True
        self.last_read = self.loop.time()
        error = None
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            error = exc
        out = self.out
        if out:
            client = ex.client
            if not client.closed:
                client.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.done:
            if error is not None:
                self.extra = True
            ex.response_done(self)
        elif error is not None:
            ex.upstream_failed(self, "protocol")

    def eof_received(self) -> bool:
        ex = self.exchange
        if ex is not None:
            if self.until_close and ex.response_started and not self.done:
                if self.body_mode == BODY_CHUNKED:
                    ex.client.write(b"0\r\n\r\n")
                self.done = True
                self.extra = True  # not reusable
                ex.response_done(self)
            else:
                ex.upstream_failed(self, "eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ex = self.exchange
        if ex is not None:
            ex.upstream_failed(self, "reset" if exc is not None else "eof")
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.pause(ex.client.PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.resume(ex.client.PAUSE_UPSTREAM)

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _ExtraResponse

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _ExtraResponse  # we never ask for an upgrade
            self.out.append(ex.interim_head(status, self.reason, self.headers))
            self.interim = True
            self.reason = b""
            self.headers = []
            return
        # llhttp forgets the connection's flags once the message is complete
        self.keep_alive = self.parser.should_keep_alive()
        self.out.append(ex.response_head(self, status))
        if self.body_mode == BODY_NONE and ex.is_head:
            self.done = True  # httptools cannot be told the response to HEAD has no body

    def on_body(self, body: bytes) -> None:
        if self.body_mode == BODY_CHUNKED:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        elif self.body_mode == BODY_RAW:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.done:
            return
        if self.body_mode == BODY_CHUNKED:
            self.out.append(b"0\r\n\r\n")
        self.done = True
