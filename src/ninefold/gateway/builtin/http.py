"""HTTP/1.1 proxying: a client connection and the exchanges (one per request)
it carries to backends.

Request bodies are streamed to the backend as they arrive; up to
defaults.GATEWAY_RETRY_BODY_MAX bytes of one are also kept, so a request failing before its
response started can be replayed on another backend. Response bodies are
streamed to the client, re-chunked when the backend did not give a length.
Pipelined requests are served one after the other.
"""

from __future__ import annotations

import asyncio
import json
import re
from bisect import bisect_left
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, parse_url

from ninefold import defaults
from ninefold.gateway import access
from ninefold.gateway.balance import NOTHING
from ninefold.gateway.builtin.pool import (
    BODY_CHUNKED,
    BODY_NONE,
    BODY_RAW,
    BackendConnection,
    Pool,
)
from ninefold.gateway.engine import LATENCY_BUCKETS, Counters

if TYPE_CHECKING:
    from ninefold.gateway.builtin.engine import BuiltinEngine, ServiceState
    from ninefold.gateway.routes import Backend


IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})

# Request headers the gateway looks at; those in _REQ_DROP are not passed on.
_REQ_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"http2-settings",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
_REQ_WATCH = _REQ_DROP | {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"cookie",
    b"authorization",
}
_REDIRECT_HOST = re.compile(rb"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]")
_RESP_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
    }
)
_RESP_WATCH = _RESP_DROP | {b"content-length"}
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade", b""})

_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_NBUCKETS = len(LATENCY_BUCKETS)


def answered(counters: Counters, cls: str) -> None:
    responses = counters.responses
    responses[cls] = responses.get(cls, 0) + 1


def error_response(
    status: int,
    body: dict[str, Any],
    keep_alive: bool,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A short JSON answer from the gateway itself; `extra`: more header lines."""
    payload = json.dumps(body, separators=(", ", ": ")).encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
        % (
            status,
            HTTPStatus(status).phrase.encode(),
            len(payload),
            extra,
            b"" if keep_alive else b"Connection: close\r\n",
            b"" if head_only else payload,
        )
    )


def _connection_options(value: bytes) -> set[bytes]:
    """Header names a Connection header marks as hop-by-hop."""
    return {t.strip().lower() for t in value.split(b",")} - _CONNECTION_OPTIONS


class ClientConnection(asyncio.Protocol):
    """One client connection to the gateway's HTTP port."""

    PAUSE_PIPELINE = 1  # a request waits for the one before it
    PAUSE_BODY = 2  # a body waits for a backend connection
    PAUSE_UPSTREAM = 4  # the backend reads the body slower than the client sends it

    __slots__ = (
        "active",
        "closed",
        "engine",
        "headers",
        "ignore",
        "ip",
        "ip_bytes",
        "last_activity",
        "loop",
        "parser",
        "parsing",
        "paused",
        "queue",
        "redirect",
        "scheme",
        "timeout",
        "timer",
        "timer_due",
        "transport",
        "url",
        "write_paused",
    )

    def __init__(
        self, engine: BuiltinEngine, scheme: bytes = b"http", redirect: int | None = None
    ) -> None:
        """`scheme`: what X-Forwarded-Proto says (https on the TLS listener);
        `redirect`: answer every request with a redirect to https on that port."""
        self.engine = engine
        self.scheme = scheme
        self.redirect = redirect
        self.loop = engine.loop
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.ip = ""
        self.ip_bytes = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parsing: Exchange | None = None
        self.active: Exchange | None = None
        self.queue: deque[Exchange] | None = None
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.ignore = False
        self.timeout = defaults.GATEWAY_CLIENT_TIMEOUT
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0

    # --- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.ip_bytes = self.ip.encode()
        self.engine.clients.add(self)
        self.last_activity = now = self.loop.time()
        self._arm(now + self.timeout)

    def data_received(self, data: bytes) -> None:
        if self.ignore:
            return
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            # Upgrades are not proxied: the request went on without its Upgrade
            # header; whatever follows it is not HTTP, so the connection ends
            # after the response.
            self.ignore = True
        except HttpParserError:
            self._bad_request()

    def eof_received(self) -> bool:
        # A client that half-closes after its request still gets the response.
        if self.active is None:
            return False
        self.ignore = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.engine.clients.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.active is not None:
            self.active.abort()
            self.active = None
        self.queue = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.last_activity = self.loop.time()
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_activity = self.loop.time()
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        ex = Exchange(
            self,
            parser.get_method(),
            self.url,
            self.headers,
            parser.get_http_version() == "1.1",
            parser.should_keep_alive(),
        )
        self.parsing = ex
        if self.active is None:
            self.active = ex
            ex.begin()
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)
            self.pause(self.PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            ex.request_complete()

    # --- used by exchanges --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def exchange_done(self, ex: Exchange, keep_alive: bool, now: float) -> None:
        if self.active is not ex:
            return
        self.active = None
        self.last_activity = now
        if not keep_alive or self.ignore or self.closed:
            self.close()
            return
        if self.timer_due > now + self.timeout:  # the route has a shorter client timeout
            self._arm(now + self.timeout)
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            self.active = nxt
            if not queue:
                self.resume(self.PAUSE_PIPELINE)
            nxt.begin()

    def close(self) -> None:
        # `closed` from here on: uvloop refuses writes to a closing transport
        if not self.closed:
            self.closed = self.ignore = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = self.ignore = True
            self.transport.abort()

    # --- internals ------------------------------------------------------------------------

    def _bad_request(self) -> None:
        self.ignore = True
        ex = self.active
        if ex is None:
            self.write(error_response(400, {"error": "bad request"}, keep_alive=False))
            self.close()
        elif not ex.req_done:
            ex.abort()
            self.close()
        # else: the connection closes once the active response is sent

    def _on_timer(self) -> None:
        """The client timeout, checked lazily: fires at the earliest moment it
        could expire and looks at what happened since."""
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        ex = self.active
        due = self.last_activity + self.timeout
        waiting_on_client = ex is None or self.parsing is ex or self.write_paused
        if waiting_on_client and now >= due:
            if ex is not None:
                ex.abort()
                self.active = None
            self.close()
            return
        self._arm(due if due > now else now + self.timeout)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = when
        self.timer = self.loop.call_at(when, self._on_timer)


class Exchange:
    """One request from a client and the attempts to have a backend answer it."""

    __slots__ = (
        "attempts",
        "backend",
        "bc",
        "chunked",
        "client",
        "connecting",
        "cookie",
        "early",
        "engine",
        "finished",
        "head",
        "headers",
        "held",
        "held_size",
        "http11",
        "idempotent",
        "is_head",
        "keep_alive",
        "key",
        "method",
        "no_host",
        "replayable",
        "req_done",
        "response_started",
        "reused",
        "sent",
        "set_cookie",
        "status",
        "svc",
        "t0",
        "t_attempt",
        "tried",
        "upstream",
        "url",
    )

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
        keep_alive: bool,
    ) -> None:
        self.client = client
        self.engine = client.engine
        self.method = method
        self.url = url
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.idempotent = method in IDEMPOTENT
        self.is_head = method == b"HEAD"
        self.svc: ServiceState | None = None
        self.head = b""
        self.no_host = False
        self.cookie: bytes | None = None
        self.chunked = False
        self.req_done = False
        self.held: list[bytes] = []
        self.held_size = 0
        self.early: list[bytes | None] | None = []
        """Body parts (None: the end) that came before begin()."""
        self.replayable = True
        self.attempts = 0
        self.tried: set[str] | frozenset[str] = NOTHING
        self.backend: Backend | None = None
        self.key = ""
        self.bc: Counters | None = None
        self.upstream: BackendConnection | None = None
        self.connecting: asyncio.Task[BackendConnection] | None = None
        self.reused = False
        self.sent = False
        self.response_started = False
        self.status = 0
        self.set_cookie = False
        self.finished = False
        self.t0 = 0.0
        self.t_attempt = 0.0

    # --- the request ------------------------------------------------------------------------

    def begin(self) -> None:
        """Route the request (its headers are in) and start the first attempt."""
        client = self.client
        engine = self.engine
        self.t0 = engine.loop.time()
        host = None
        xff = None
        cl = None
        te = False
        options = None
        authorization: tuple[bytes, ...] = ()  # no allocation without the header
        parts = [self.method, b" ", b"", b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            lname = name.lower()
            if lname in _REQ_WATCH:
                if lname in _REQ_DROP:
                    if lname == b"x-forwarded-for":
                        xff = value if xff is None else xff + b", " + value
                    elif lname == b"connection":
                        options = _connection_options(value) or None
                    continue
                if lname == b"host":
                    host = value
                elif lname == b"content-length":
                    cl = value
                elif lname == b"transfer-encoding":
                    te = True
                elif lname == b"cookie":
                    self.cookie = value if self.cookie is None else self.cookie + b"; " + value
                elif lname == b"authorization":
                    authorization += (value,)
            parts += (name, b": ", value, b"\r\n")
        if options:
            parts = parts[:4]
            for name, value in self.headers:
                lname = name.lower()
                if lname not in _REQ_DROP and lname not in options:
                    parts += (name, b": ", value, b"\r\n")
        self.headers = []  # not needed any more
        self.chunked = te
        if not te and (cl is None or cl.strip() == b"0"):
            self.req_done = True  # no body: complete with its headers
        early, self.early = self.early, None
        if early:  # a pipelined request's body, read while it waited
            for part in early:
                if part is None:
                    self.request_complete()
                else:
                    self.request_body(part)

        url = self.url
        if url[:1] != b"/" and url != b"*":
            try:
                parsed = parse_url(url)
            except HttpParserError:
                return self.fail(400, {"error": "bad request"})
            if parsed.host:
                host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        if client.redirect is not None:
            return self.redirect(host, url, client.redirect)
        match = engine.match(host, url)
        if match is None:
            host_text = host.decode("latin-1") if host is not None else None
            path = url.decode("latin-1")
            return self.fail(404, {"error": "no route", "host": host_text, "path": path})
        svc, path_out = match
        self.svc = svc
        client.timeout = svc.client_timeout
        total = svc.total
        total.requests += 1
        total.active += 1
        if svc.access is not None:
            decision = access.authorize(svc.access, authorization, path_out.decode("latin-1"))
            if type(decision) is access.Deny:
                return self.refuse(decision)
            parts = _without_header(parts, svc.subject_lname)
            subject = decision.subject  # type: ignore[union-attr]
            if subject is not None:
                parts += (svc.subject_header, b": ", subject.encode(), b"\r\n")

        parts[2] = path_out
        ip = client.ip_bytes
        parts += (b"X-Forwarded-For: ", xff + b", " + ip if xff else ip, b"\r\n")
        parts += (b"X-Forwarded-Proto: ", client.scheme, b"\r\n")
        if host is not None:
            parts += (b"X-Forwarded-Host: ", host, b"\r\n\r\n")
            self.head = b"".join(parts)
        else:
            self.no_host = True
            self.head = b"".join(parts)  # Host (the backend's) and the blank line come later
        if not svc.live:
            return self.fail(503, {"error": "no backend", "service": svc.name})
        self.attempt()

    def request_body(self, data: bytes) -> None:
        if self.early is not None:
            self.early.append(data)
            return
        if self.finished:
            return
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._body(data)

    def request_complete(self) -> None:
        if self.early is not None:
            self.early.append(None)
            return
        if self.req_done:
            return
        self.req_done = True
        if self.finished:
            return
        if self.chunked:
            self._body(b"0\r\n\r\n")
        if self.upstream is not None:
            self.upstream.waiting(self.engine.loop.time())

    def _body(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None:
            if not upstream.closed:
                upstream.transport.write(data)
            if not self.replayable:
                return
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > defaults.GATEWAY_RETRY_BODY_MAX:
            self.replayable = False
            if upstream is None:
                self.client.pause(ClientConnection.PAUSE_BODY)
            else:
                self.held = []

    # --- attempts ---------------------------------------------------------------------------

    def attempt(self) -> None:
        """The first attempt: to the backend the sticky cookie names, or the
        one the balancer picks."""
        engine = self.engine
        svc = self.svc
        assert svc is not None
        pinned = None
        if svc.sticky is not None and self.cookie is not None:
            pinned = svc.sticky.backend_for(self.cookie.decode("latin-1"))
            if pinned is not None and engine.is_down(pinned.key):
                pinned = None
        backend = pinned or engine.choose(svc, self.client.ip, self.tried)
        if backend is None:
            self.fail(503, {"error": "no backend", "service": svc.name})
            return
        self.set_cookie = svc.sticky is not None and backend is not pinned
        self._start(backend, fresh=False)

    def _start(self, backend: Backend, fresh: bool) -> None:
        """Send the request to `backend`; `fresh`: on a new connection, a
        reused one having been stale (not counted as an attempt)."""
        engine = self.engine
        svc = self.svc
        assert svc is not None
        key = backend.key
        self.backend = backend
        self.key = key
        bc = svc.metrics.backends.get(key) or svc.backend_counters(key)
        self.bc = bc
        if not fresh:
            self.attempts += 1
            bc.requests += 1
        bc.active += 1
        inflight = engine.inflight_counts
        inflight[key] = inflight.get(key, 0) + 1
        pool = engine.pools.get(key) or engine.pool_for(backend)
        now = engine.loop.time()
        self.t_attempt = now
        if not fresh:
            conn = pool.take(
                now, None if self.idempotent else defaults.GATEWAY_POOL_REUSE_UNSAFE_MAX_IDLE
            )
            if conn is not None:
                self._attach(conn, reused=True)
                return
        self._connect(pool, svc.connect_timeout)

    def _connect(self, pool: Pool, timeout: float) -> None:
        task = self.engine.loop.create_task(pool.connect(self.engine.loop, timeout))
        self.connecting = task
        self.engine.tasks.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[BackendConnection]) -> None:
        self.engine.tasks.discard(task)
        if self.connecting is task:
            self.connecting = None
        if task.cancelled():
            if not self.finished:
                self._end_attempt(None, reusable=False, answer="error")
                self.fail(502, {"error": "gateway stopping"})
            return
        exc = task.exception()
        if exc is None:
            conn = task.result()
            if self.finished:  # the client left meanwhile; the connection is good
                conn.pool.release(conn, self.engine.loop.time())
            else:
                self._attach(conn, reused=False)
            return
        if self.finished:
            return
        backend = self.backend
        assert backend is not None
        self.engine.mark_down(backend.key)
        self._end_attempt(None, reusable=False, answer="error")
        what = "timed out" if isinstance(exc, TimeoutError) else "refused"
        self._retry_or_fail(f"connection {what}")

    def _attach(self, conn: BackendConnection, reused: bool) -> None:
        svc = self.svc
        assert svc is not None
        self.upstream = conn
        self.reused = reused
        conn.bind(self, svc.server_timeout)
        head = self.head
        if self.no_host:
            head += b"Host: %s\r\n\r\n" % conn.pool.key.encode()
        held = self.held
        if held:
            conn.transport.write(head + b"".join(held))
            if not self.replayable:
                self.held = []
                self.client.resume(ClientConnection.PAUSE_BODY)
        else:
            conn.transport.write(head)
        self.sent = True
        if self.req_done:
            conn.waiting(self.engine.loop.time())
        if self.client.write_paused:
            conn.pause_reading()

    def _end_attempt(
        self, conn: BackendConnection | None, reusable: bool, answer: str | None
    ) -> None:
        """Account for the end of the current attempt and let go of its connection."""
        engine = self.engine
        engine.inflight_add(self.key, -1)
        bc = self.bc
        assert bc is not None
        bc.active -= 1
        now = engine.loop.time()
        if answer is not None:
            responses = bc.responses
            responses[answer] = responses.get(answer, 0) + 1
            seconds = now - self.t_attempt
            bc.latency_sum += seconds
            i = bisect_left(LATENCY_BUCKETS, seconds)
            if i < _NBUCKETS:
                bc.latency_counts[i] += 1
        if conn is not None:
            self.upstream = None
            conn.unbind()
            if reusable:
                conn.pool.release(conn, now)
            elif answer is not None and answer != "error":
                conn.close()  # answered, but not to be kept (Connection: close)
            else:
                conn.abort()
            if self.client.paused:
                self.client.resume(ClientConnection.PAUSE_UPSTREAM)

    def _retry_or_fail(self, detail: str) -> None:
        svc = self.svc
        backend = self.backend
        assert svc is not None and backend is not None and self.bc is not None
        safe = not self.sent or (self.idempotent and self.replayable)
        if safe and self.attempts <= svc.retries:
            if not self.tried:
                self.tried = set()
            self.tried.add(backend.key)  # type: ignore[union-attr]
            following = self.engine.choose(svc, self.client.ip, self.tried)
            if following is not None:
                svc.total.retries += 1
                self.bc.retries += 1
                self.set_cookie = svc.sticky is not None
                self._start(following, fresh=False)
                return
        self.fail(502, {"error": "bad gateway", "service": svc.name, "detail": detail})

    def upstream_failed(self, conn: BackendConnection, kind: str) -> None:
        """The backend connection failed: `kind` is eof, reset, timeout or protocol."""
        if conn is not self.upstream or self.finished:
            conn.abort()
            return
        if (
            self.reused
            and not conn.received
            and kind != "timeout"
            and self.idempotent
            and self.replayable
        ):
            # A kept-alive connection the backend had closed: try a fresh one,
            # not counted as a retry.
            self._end_attempt(conn, reusable=False, answer=None)
            assert self.backend is not None
            self._start(self.backend, fresh=True)
            return
        self._end_attempt(conn, reusable=False, answer="error")
        svc = self.svc
        backend = self.backend
        assert svc is not None and backend is not None
        if kind in ("eof", "reset") and (conn.received or not self.reused):
            # not a stale kept-alive connection: the backend went away
            self.engine.mark_down(backend.key)
        if self.response_started:
            self._finish("error", keep_alive=False, abort=True)
            return
        if kind == "timeout":
            self.fail(504, {"error": "backend timed out", "service": svc.name})
            return
        if kind == "protocol":
            self.fail(502, {"error": "bad gateway", "service": svc.name, "detail": "bad response"})
            return
        self._retry_or_fail("connection reset" if kind == "reset" else "connection closed")

    # --- the response -----------------------------------------------------------------------

    def interim_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        if not self.http11:
            return b""
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        for name, value in headers:
            if name.lower() not in _RESP_DROP:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def response_head(self, conn: BackendConnection, status: int) -> bytes:
        """The response head for the client; sets how the body is passed on."""
        self.response_started = True
        self.status = status
        has_length = False
        te = None
        options = None
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, conn.reason)]
        for name, value in conn.headers:
            lname = name.lower()
            if lname in _RESP_WATCH:
                if lname == b"content-length":
                    has_length = True
                elif lname == b"transfer-encoding":
                    te = value
                    continue
                else:
                    if lname == b"connection":
                        options = _connection_options(value) or None
                    continue
            parts += (name, b": ", value, b"\r\n")
        if options:
            parts = [parts[0]]
            for name, value in conn.headers:
                lname = name.lower()
                if lname not in _RESP_DROP and lname not in options:
                    parts += (name, b": ", value, b"\r\n")
        if self.is_head or status == 204 or status == 304:
            conn.body_mode = BODY_NONE
        elif has_length and te is None:
            conn.body_mode = BODY_RAW
        else:
            conn.until_close = te is None
            if self.http11:
                conn.body_mode = BODY_CHUNKED
                if te is not None and te.strip().lower() != b"chunked":
                    parts += (b"Transfer-Encoding: ", te, b"\r\n")
                else:
                    parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                conn.body_mode = BODY_RAW
                self.keep_alive = False  # the end of the body is the end of the connection
        if self.set_cookie:
            svc = self.svc
            assert svc is not None and self.backend is not None
            parts.append(svc.set_cookie_header(self.backend))
        if not self.req_done:
            self.keep_alive = False  # answered before the body was all in: close after
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n\r\n")
        elif not self.http11:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def response_done(self, conn: BackendConnection) -> None:
        if conn is not self.upstream or self.finished:
            return
        reusable = not conn.extra and not conn.until_close and self.req_done and conn.keep_alive
        if self.is_head and reusable:
            conn.parser = type(conn.parser)(conn)
        status = self.status
        cls = _CLASS[status // 100] if status < 600 else "5xx"
        self._end_attempt(conn, reusable, cls)
        self._finish(cls, self.keep_alive and self.req_done)

    # --- endings ----------------------------------------------------------------------------

    def _finish(self, cls: str | None, keep_alive: bool, abort: bool = False) -> None:
        self.finished = True
        now = self.engine.loop.time()
        svc = self.svc
        if svc is not None:
            total = svc.total
            total.active -= 1
            if cls is not None:
                responses = total.responses
                responses[cls] = responses.get(cls, 0) + 1
                seconds = now - self.t0
                total.latency_sum += seconds
                i = bisect_left(LATENCY_BUCKETS, seconds)
                if i < _NBUCKETS:
                    total.latency_counts[i] += 1
        if abort:
            self.client.abort()
        self.client.exchange_done(self, keep_alive, now)

    def fail(
        self, status: int, body: dict[str, Any], extra: bytes = b"", cls: str = "error"
    ) -> None:
        """Answer the client from the gateway: nothing could serve the request
        (or the access policy refused it, counted as `cls`); `extra`: more header lines."""
        if self.finished:
            return
        if self.response_started:
            self._finish("error", keep_alive=False, abort=True)
            return
        keep_alive = self.keep_alive and self.req_done
        self.client.write(error_response(status, body, keep_alive, self.is_head, extra))
        self._finish(cls, keep_alive)

    def refuse(self, deny: access.Deny) -> None:
        """Answer a request the service's access policy refuses: no backend sees it."""
        svc = self.svc
        assert svc is not None
        challenge = access.challenge(svc.name, deny)
        extra = b"WWW-Authenticate: %s\r\n" % challenge.encode() if challenge else b""
        # a refusal is the client's doing (4xx); an unloadable policy is ours
        cls = "error" if deny.status >= 500 else _CLASS[deny.status // 100]
        self.fail(deny.status, access.body(svc.name, deny), extra, cls)

    def redirect(self, host: bytes | None, url: bytes, port: int) -> None:
        """The plain-HTTP listener with redirect_http: send the client to https."""
        name = host.rsplit(b":", 1)[0] if host and not host.endswith(b"]") else host
        if not name or not _REDIRECT_HOST.fullmatch(name):
            address = self.engine.settings.address
            name = (f"[{address}]" if ":" in address else address).encode()
        target = url if url.startswith(b"/") else b"/"
        location = b"https://%s%s%s" % (name, b"" if port == 443 else b":%d" % port, target)
        status = 301 if self.method in (b"GET", b"HEAD") else 308
        keep_alive = self.keep_alive and self.req_done
        self.client.write(
            b"HTTP/1.1 %d %s\r\nLocation: %s\r\nContent-Length: 0\r\n%s\r\n"
            % (
                status,
                HTTPStatus(status).phrase.encode(),
                location,
                b"" if keep_alive else b"Connection: close\r\n",
            )
        )
        self._finish(None, keep_alive)

    def abort(self) -> None:
        """The client went away (or timed out): give up the exchange."""
        if self.finished:
            return
        self.finished = True
        if self.backend is not None and (self.upstream is not None or self.connecting is not None):
            self._end_attempt(self.upstream, reusable=False, answer=None)
        svc = self.svc
        if svc is not None:
            svc.total.active -= 1


def _without_header(parts: list[bytes], lname: bytes) -> list[bytes]:
    """The request head parts (method line, then name/": "/value/CRLF groups)
    without the header `lname` (lower case): a client must not set it itself."""
    kept = parts[:4]
    for i in range(4, len(parts), 4):
        if parts[i].lower() != lname:
            kept += parts[i : i + 4]
    return kept
