"""The built-in gateway engine against real sockets on 127.0.0.1: in-process
backends (h11) and clients (httpx or raw sockets), hand-built routing tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from ninefold import defaults
from ninefold.gateway.builtin import BuiltinEngine
from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
from ninefold.spec.routing import BalanceSpec, RouteSpec
from tests.helpers import free_port

HOST = "127.0.0.1"


async def eventually(pred: Callable[[], object], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, as a killed process's kernel would for busy sockets."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Upstream:
    """A small HTTP/1.1 backend answering with its name and what it saw.

    Paths: /slow?t=SECONDS answers late, /chunked answers in chunks, /big?n=BYTES
    sends that many bytes, /reset resets the connection; 100-continue is
    honoured. Mode "reset" resets every request; mode "stale" answers the first
    request of a connection, then closes it unanswered (a keep-alive connection
    the server dropped just as the gateway reused it)."""

    def __init__(self, name: str, mode: str = "normal") -> None:
        self.name = name
        self.mode = mode
        self.port = 0
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._writers_by_conn: dict[int, asyncio.StreamWriter] = {}

    async def start(self, port: int = 0) -> Upstream:
        self._server = await asyncio.start_server(self._serve, HOST, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def backend(self, **kw: Any) -> Backend:
        return Backend(instance=self.name, node="n1", address=HOST, port=self.port, **kw)

    def kill(self) -> None:
        """Stop listening and reset every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _reset(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        self._writers_by_conn[id(conn)] = writer
        served = 0
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    break
                target = request.target.decode()
                headers = {k.decode(): v.decode() for k, v in request.headers}
                self.requests.append(
                    {"method": request.method.decode(), "path": target, "headers": headers}
                )
                if self.mode == "reset" or target.startswith("/reset"):
                    _reset(writer)
                    return
                if self.mode == "stale" and served:
                    writer.close()
                    return
                served += 1
                if "/slow" in target:
                    await asyncio.sleep(float(target.rsplit("t=", 1)[1]))
                await self._respond(conn, writer, request, target, headers, body)
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    info = h11.InformationalResponse(status_code=100, headers=[])
                    reader_writer = self._writers_by_conn[id(conn)]
                    reader_writer.write(conn.send(info))
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:  # ConnectionClosed
                return None, b""

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        if target.startswith("/big"):
            size = int(target.rsplit("n=", 1)[1])
            writer.write(
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(size))]))
            )
            block = b"0123456789abcdef" * 4096
            for start in range(0, size, len(block)):
                writer.write(conn.send(h11.Data(data=block[: size - start])))
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            return
        if target.startswith("/chunked"):
            parts = [f"{self.name}-{i};".encode() * 100 for i in range(5)]
            writer.write(conn.send(h11.Response(status_code=200, headers=[])))
            for part in parts:
                writer.write(conn.send(h11.Data(data=part)))
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            return
        payload = json.dumps(
            {
                "name": self.name,
                "method": request.method.decode(),
                "path": target,
                "headers": headers,
                "body": len(body),
                "digest": hash(body),
            }
        ).encode()
        response = h11.Response(
            status_code=200,
            headers=[("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        writer.write(conn.send(response))
        if request.method != b"HEAD":
            writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


def service(
    name: str,
    backends: list[Backend] | tuple[Backend, ...],
    http: str | None = "/",
    host: str | None = None,
    strip: bool = True,
    tcp: int | None = None,
    **balance: Any,
) -> ServiceRoutes:
    route = RouteSpec(tcp=tcp) if tcp else RouteSpec(http=http, host=host, strip_prefix=strip)
    return ServiceRoutes(name, route, BalanceSpec.model_validate(balance), tuple(backends))


def table(*services: ServiceRoutes) -> RoutingTable:
    return RoutingTable({s.service: s for s in services})


@pytest.fixture
async def engine() -> AsyncIterator[BuiltinEngine]:
    eng = BuiltinEngine(GatewaySettings("n1", HOST, 0, Path("/nonexistent"), Path("/nonexistent")))
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Any]]:
    started: list[Upstream] = []

    async def make(name: str, mode: str = "normal") -> Upstream:
        up = await Upstream(name, mode).start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.kill()


def client(eng: BuiltinEngine, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{HOST}:{eng.port}", timeout=10, **kw)


def refused_backend(name: str = "dead") -> Backend:
    return Backend(instance=name, node="n1", address=HOST, port=free_port())


# --- routing and answers -----------------------------------------------------------------


async def test_routes_by_prefix_and_host(engine: BuiltinEngine, upstreams: Any) -> None:
    web, api, shop, rest = [await upstreams(n) for n in ("web", "api", "shop", "rest")]
    await engine.apply(
        table(
            service("web", [web.backend()], http="/web"),
            service("api", [api.backend()], http="/api", strip=False),
            service("shop", [shop.backend()], http=None, host="shop.example"),
            service("rest", [rest.backend()], http="/"),
        )
    )
    async with client(engine) as c:
        seen = [
            (r.json()["name"], r.json()["path"])
            for r in [
                await c.get("/web/a/b?x=1"),
                await c.get("/web"),
                await c.get("/api/v1"),
                await c.get("/web/x", headers={"Host": "shop.example:8080"}),
                await c.get("/webby"),
            ]
        ]
    assert seen == [
        ("web", "/a/b?x=1"),
        ("web", "/"),
        ("api", "/api/v1"),
        ("shop", "/web/x"),
        ("rest", "/webby"),
    ]


async def test_error_answers_are_short_json(engine: BuiltinEngine, upstreams: Any) -> None:
    slow = await upstreams("slow")
    await engine.apply(
        table(
            service("empty", [], http="/empty"),
            service("dead", [refused_backend("d1"), refused_backend("d2")], http="/dead"),
            service("slow", [slow.backend()], http="/slow", timeouts={"server": 0.2}),
        )
    )
    async with client(engine) as c:
        answers = {
            path: await c.get(path)
            for path in ("/nowhere", "/empty/x", "/dead/x", "/slow/slow?t=2")
        }
    expected = {
        "/nowhere": (404, "no route"),
        "/empty/x": (503, "no backend"),
        "/dead/x": (502, "bad gateway"),
        "/slow/slow?t=2": (504, "backend timed out"),
    }
    for path, (status, error) in expected.items():
        r = answers[path]
        assert r.status_code == status, path
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == error
        assert len(r.content) < 200
    snap = engine.snapshot()
    assert snap["dead"].total.responses == {"error": 1}
    assert snap["dead"].total.retries == 1  # two backends, both refused
    assert snap["slow"].total.responses == {"error": 1}


async def test_keep_alive_both_sides(engine: BuiltinEngine, upstreams: Any) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()])))
    async with client(engine) as c:
        for i in range(50):
            r = await c.get(f"/n/{i}")
            assert r.status_code == 200
            assert "connection" not in r.headers
    assert up.connections == 1
    assert len(up.requests) == 50
    assert len(engine.clients) == 0 or len(engine.clients) == 1


async def test_roundrobin_splits_1000_requests_500_500(
    engine: BuiltinEngine, upstreams: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    await engine.apply(table(service("web", [a.backend(), b.backend()])))
    names: Counter[str] = Counter()
    async with client(engine) as c:
        for _ in range(1000):
            r = await c.get("/")
            names[r.json()["name"]] += 1
    assert names == {"a": 500, "b": 500}
    snap = engine.snapshot()["web"]
    assert snap.total.requests == 1000
    assert snap.total.responses == {"2xx": 1000}
    assert snap.backends[a.backend().key].requests == 500
    assert sum(snap.total.latency_counts) <= 1000
    assert snap.total.active == 0


async def test_backend_killed_mid_loop_fails_nothing(engine: BuiltinEngine, upstreams: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    await engine.apply(table(service("web", [a.backend(), b.backend()])))
    done = 0
    failures: list[str] = []
    names: Counter[str] = Counter()

    async def worker(c: httpx.AsyncClient, n: int) -> None:
        nonlocal done
        for i in range(n):
            r = await c.get(f"/slow?t={0.002 if i % 10 == 0 else 0}")
            done += 1
            if r.status_code != 200:
                failures.append(r.text)
            else:
                names[r.json()["name"]] += 1

    async def killer() -> None:
        await eventually(lambda: done >= 1000, within=15)
        a.kill()

    async with client(engine) as c:
        await asyncio.gather(killer(), *(worker(c, 500) for _ in range(4)))
    assert failures == []
    assert done == 2000
    assert names["a"] < 1100 and names["b"] > 900


async def test_refused_backend_is_marked_down_and_request_succeeds(
    engine: BuiltinEngine, upstreams: Any
) -> None:
    up = await upstreams("up")
    dead = refused_backend()
    await engine.apply(table(service("web", [dead, up.backend()])))
    async with client(engine) as c:
        r = await c.get("/")
        assert r.status_code == 200 and r.json()["name"] == "up"
        assert engine.is_down(dead.key)
        for _ in range(10):
            assert (await c.get("/")).json()["name"] == "up"
    snap = engine.snapshot()["web"]
    assert snap.total.retries == 1
    assert snap.backends[dead.key].requests == 1  # not tried again while down
    assert snap.backends[dead.key].responses == {"error": 1}


async def test_post_is_not_retried_once_sent_but_get_is(
    engine: BuiltinEngine, upstreams: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "BACKEND_DOWN_FOR", 0.0)  # keep the resetting one in rotation
    bad, good = await upstreams("bad", mode="reset"), await upstreams("good")
    await engine.apply(table(service("web", [bad.backend(), good.backend()])))
    async with client(engine) as c:
        post = await c.post("/p", content=b"payload")  # round robin: bad first
        get1 = await c.get("/g1")  # good
        get2 = await c.get("/g2")  # bad resets, retried on good
    assert post.status_code == 502 and post.json()["error"] == "bad gateway"
    assert get1.status_code == 200 and get2.status_code == 200
    assert get2.json()["name"] == "good"
    assert [r["method"] for r in bad.requests] == ["POST", "GET"]
    assert [r["path"] for r in good.requests] == ["/g1", "/g2"]


async def test_stale_pooled_connection_is_retried_for_free(
    engine: BuiltinEngine, upstreams: Any
) -> None:
    up = await upstreams("stale", mode="stale")
    await engine.apply(table(service("web", [up.backend()], retries=0)))
    async with client(engine) as c:
        for i in range(5):
            r = await c.get(f"/{i}")
            assert r.status_code == 200, r.text
    snap = engine.snapshot()["web"]
    assert snap.total.retries == 0
    assert not engine.is_down(up.backend().key)
    assert up.connections >= 5


async def test_draining_backend_finishes_in_flight_requests(
    engine: BuiltinEngine, upstreams: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    await engine.apply(table(service("web", [a.backend(), b.backend()])))
    async with client(engine) as c:
        slow = asyncio.create_task(c.get("/slow?t=0.5"))  # round robin: a
        await eventually(lambda: engine.inflight(a.backend().key) == 1)
        await engine.apply(table(service("web", [a.backend(draining=True), b.backend()])))
        others = [(await c.get("/")).json()["name"] for _ in range(10)]
        assert others == ["b"] * 10
        assert engine.inflight(a.backend().key) == 1
        r = await slow
        assert r.status_code == 200 and r.json()["name"] == "a"
        await eventually(lambda: engine.inflight(a.backend().key) == 0)


async def test_forwarded_and_hop_by_hop_headers(engine: BuiltinEngine, upstreams: Any) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()])))
    async with client(engine) as c:
        r = await c.get(
            "/",
            headers={
                "Host": "shop.example:8080",
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "Connection": "X-Secret",
                "X-Secret": "hop",
                "Keep-Alive": "timeout=5",
                "X-Kept": "yes",
            },
        )
    seen = r.json()["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example:8080"
    assert seen["host"] == "shop.example:8080"
    assert seen["x-kept"] == "yes"
    assert "x-secret" not in seen and "keep-alive" not in seen and "connection" not in seen


async def test_sticky_cookie_pins_a_client(engine: BuiltinEngine, upstreams: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    await engine.apply(table(service("web", [a.backend(), b.backend()], sticky={"cookie": "PIN"})))
    async with client(engine) as c:
        first = await c.get("/")
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("PIN=") and "Path=/" in cookie and "HttpOnly" in cookie
        assert str(a.port) not in cookie and str(b.port) not in cookie
        pinned = first.json()["name"]
        for _ in range(10):  # httpx sends the cookie back
            r = await c.get("/")
            assert r.json()["name"] == pinned
            assert "set-cookie" not in r.headers
    async with client(engine) as c:  # no cookie: round robin, each told its pin
        names = [(await c.get("/", headers={"Cookie": "x=1"})).json()["name"] for _ in range(4)]
    assert sorted(names) == ["a", "a", "b", "b"]


async def test_chunked_bodies_both_ways(engine: BuiltinEngine, upstreams: Any) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()])))
    body = b"x" * 200_000  # longer than what is kept for a retry

    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 10_000):
            yield body[i : i + 10_000]

    async with client(engine) as c:
        r = await c.post("/upload", content=parts())
        assert r.status_code == 200
        assert r.json()["body"] == len(body) and r.json()["digest"] == hash(body)
        r = await c.put("/upload", content=body)
        assert r.json()["body"] == len(body) and r.json()["digest"] == hash(body)
        r = await c.get("/chunked")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.content == b"".join(f"a-{i};".encode() * 100 for i in range(5))
        r = await c.head("/x")
        assert r.status_code == 200 and r.content == b""
        r = await c.get("/after-head")
        assert r.json()["path"] == "/after-head"
    assert up.connections == 1


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)  # to EOF: the gateway closes
    writer.close()
    return data


async def test_http10_pipelining_and_bad_requests(engine: BuiltinEngine, upstreams: Any) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()])))
    # HTTP/1.0 without keep-alive: a length-less (chunked upstream) body ends with the connection
    data = await _raw(engine.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, content = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert content == b"".join(f"a-{i};".encode() * 100 for i in range(5))
    # two requests in one packet, answered in order; the second asks to close
    data = await _raw(
        engine.port,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.index(b'"/one"') < data.index(b'"/two"')
    data = await _raw(engine.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")


async def test_pipelined_body_http10_keep_alive_and_100_continue(
    engine: BuiltinEngine, upstreams: Any
) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()])))
    # a POST with its body waits behind a slow GET in the same packet
    data = await _raw(
        engine.port,
        b"GET /slow?t=0.05 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /q HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [(b["path"], b["body"]) for b in bodies] == [
        ("/slow?t=0.05", 0),
        ("/p", 5),
        ("/q", 3),
        ("/end", 0),
    ]

    reader, writer = await asyncio.open_connection(HOST, engine.port)
    for i in range(2):  # HTTP/1.0 keep-alive: two requests on one connection
        writer.write(b"GET /ten%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Connection: keep-alive" in head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["path"] == f"/ten{i}"
    # Expect: 100-continue: the backend's interim answer comes through first
    writer.write(b"PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 \r\n\r\n"
    writer.write(b"data")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_client_timeout_and_client_going_away(engine: BuiltinEngine, upstreams: Any) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()], timeouts={"client": 0.2})))
    reader, writer = await asyncio.open_connection(HOST, engine.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    rest = await asyncio.wait_for(reader.read(), 5)  # the gateway closes the idle connection
    assert b"HTTP" not in rest and loop.time() - idle_since < 2
    writer.close()

    # a client leaving (reset) while its request waits: the backend connection
    # goes, nothing leaks (a mere half-close would still get its answer)
    reader, writer = await asyncio.open_connection(HOST, engine.port)
    writer.write(b"GET /slow?t=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    key = up.backend().key
    await eventually(lambda: engine.inflight(key) == 1)
    _reset(writer)
    await eventually(lambda: engine.inflight(key) == 0)
    await eventually(lambda: engine.snapshot()["web"].total.active == 0)


async def test_large_bodies_stream_through(engine: BuiltinEngine, upstreams: Any) -> None:
    up = await upstreams("a")
    await engine.apply(table(service("web", [up.backend()])))
    size = 8_000_000
    async with client(engine) as c, c.stream("GET", f"/big?n={size}") as r:
        assert r.headers["content-length"] == str(size)
        got = 0
        async for chunk in r.aiter_bytes():
            got += len(chunk)
            if got < 1_000_000:
                await asyncio.sleep(0.001)  # a slow reader at first: backpressure
        assert got == size


CANNED = {
    b"/close-delimited": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"/no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/not-modified": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
    b"/garbage": b"SPDY/9 what\r\n\r\n",
    b"/head-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
}


async def _canned(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw backend: answers each request with CANNED[path] (and closes when
    the answer is close-delimited)."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            writer.write(CANNED[path])
            if path in (b"/close-delimited", b"/garbage"):
                break
    writer.close()


async def test_odd_backend_answers(engine: BuiltinEngine) -> None:
    server = await asyncio.start_server(_canned, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    await engine.apply(table(service("raw", [Backend("r", "n1", HOST, port)])))
    async with client(engine) as c:
        r = await c.get("/close-delimited")
        assert r.status_code == 200 and r.content == b"until the end"
        assert r.headers["transfer-encoding"] == "chunked"
        assert (await c.get("/no-content")).status_code == 204
        assert (await c.get("/not-modified")).status_code == 304
        r = await c.head("/head-chunked")
        assert r.status_code == 200 and r.content == b""
        assert (await c.get("/no-content")).status_code == 204  # still in step after HEAD
        r = await c.get("/garbage")
        assert r.status_code == 502 and r.json()["detail"] == "bad response"
    data = await _raw(engine.port, b"GET /close-delimited HTTP/1.0\r\n\r\n")
    assert data.endswith(b"\r\n\r\nuntil the end") and b"chunked" not in data
    server.close()


async def test_routing_change_keeps_client_connections(
    engine: BuiltinEngine, upstreams: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    await engine.apply(table(service("web", [a.backend()])))
    async with client(engine) as c:
        assert (await c.get("/")).json()["name"] == "a"
        await engine.apply(table(service("web", [b.backend()])))
        assert (await c.get("/")).json()["name"] == "b"
        await engine.apply(table(service("web", [a.backend(), b.backend()], algorithm="leastconn")))
        names = {(await c.get("/")).json()["name"] for _ in range(4)}
    assert names == {"a", "b"}


# --- TCP ---------------------------------------------------------------------------------


class Echo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Echo:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def backend(self) -> Backend:
        return Backend(instance=self.name, node="n1", address=HOST, port=self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        writer.write(self.name.encode() + b"\n")
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(b"bye\n")  # after the client's half-close
            await writer.drain()
        except (ConnectionError, RuntimeError):  # RuntimeError: uvloop, closed under us
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def kill(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            _reset(writer)


async def _tcp_open(port: int) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    name = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    return name, reader, writer


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def test_tcp_splice_and_backend_loss(engine: BuiltinEngine) -> None:
    e1, e2 = await Echo("e1").start(), await Echo("e2").start()
    port = free_port()
    await engine.apply(table(service("echo", [e1.backend(), e2.backend()], tcp=port)))
    conns = [await _tcp_open(port) for _ in range(4)]
    assert sorted(name for name, _, _ in conns) == ["e1", "e1", "e2", "e2"]
    for _, reader, writer in conns:
        assert await _echo(reader, writer, b"hello" * 1000) == b"hello" * 1000
    assert engine.inflight(e1.backend().key) == 2

    # a table change (a new backend list) leaves open connections alone
    await engine.apply(table(service("echo", [e2.backend()], tcp=port)))
    for _, reader, writer in conns:
        assert await _echo(reader, writer, b"still\n") == b"still\n"

    await engine.apply(table(service("echo", [e1.backend(), e2.backend()], tcp=port)))
    e1.kill()
    for name, reader, writer in conns:
        if name == "e1":
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await _echo(reader, writer, b"x")
        else:
            assert await _echo(reader, writer, b"y") == b"y"
    for _ in range(3):  # e1 refuses: marked down, the next connections go to e2
        name, reader, writer = await _tcp_open(port)
        assert name == "e2"
        writer.close()
    await eventually(lambda: engine.inflight(e1.backend().key) == 0)
    snap = engine.snapshot()["echo"]
    assert snap.total.requests == 7 and snap.total.retries >= 1
    assert sum(snap.total.latency_counts) == 7  # time to the backend connection
    assert snap.backends[e1.backend().key].responses["error"] >= 1

    # half-close goes through: the backend still answers after our EOF
    _, reader, writer = await _tcp_open(port)
    writer.write(b"last words")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"last wordsbye\n"
    writer.close()
    for _, _, writer in conns:
        writer.close()
    e2.kill()


async def test_tcp_listener_closes_without_dropping_connections(engine: BuiltinEngine) -> None:
    e1 = await Echo("e1").start()
    port = free_port()
    await engine.apply(table(service("echo", [e1.backend()], tcp=port)))
    _, reader, writer = await _tcp_open(port)
    await engine.apply(table())  # route gone: the port stops listening
    with pytest.raises(OSError):
        await _tcp_open(port)
    assert await _echo(reader, writer, b"alive") == b"alive"
    writer.close()
    e1.kill()


# --- under uvloop ----------------------------------------------------------------------------


async def _uvloop_scenario() -> None:
    eng = BuiltinEngine(GatewaySettings("n1", HOST, 0, Path("/x"), Path("/x")))
    await eng.start()
    a, b = await Upstream("a").start(), await Upstream("b").start()
    e1 = await Echo("e1").start()
    port = free_port()
    try:
        await eng.apply(
            table(
                service("web", [a.backend(), b.backend()]),
                service("echo", [e1.backend()], tcp=port),
            )
        )
        async with client(eng) as c:
            names = Counter([(await c.get("/")).json()["name"] for _ in range(200)])
            assert names == {"a": 100, "b": 100}
            a.kill()
            for _ in range(50):
                r = await c.get("/chunked")
                assert r.status_code == 200 and r.content.startswith(b"b-0;")
        # bytes sent before the backend connection is up are passed on
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"early\n")
        assert await asyncio.wait_for(reader.readuntil(b"early\n"), 5) == b"e1\nearly\n"
        await eng.apply(table(service("web", [b.backend()])))
        assert await _echo(reader, writer, b"ping") == b"ping"
        writer.close()
    finally:
        await eng.stop()
        b.kill()
        e1.kill()


def test_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(_uvloop_scenario(), 20))


async def test_the_gateway_listens_on_its_vips_too_even_before_holding_them() -> None:
    port = free_port()
    # 127.0.0.5: a second local address, like a VIP this node holds;
    # 10.255.255.77: one it does not hold (bound with IP_FREEBIND all the same).
    vips = ("127.0.0.5", "10.255.255.77")
    eng = BuiltinEngine(GatewaySettings("n1", HOST, port, Path("/x"), Path("/x"), vips=vips))
    await eng.start()
    a = await Upstream("a").start()
    try:
        await eng.apply(table(service("web", [a.backend()])))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.5:{port}") as c:
            assert (await c.get("/")).json()["name"] == "a"
    finally:
        await eng.stop()
        a.kill()
