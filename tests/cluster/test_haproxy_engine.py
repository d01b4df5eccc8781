"""The haproxy gateway engine with a real HAProxy on loopback and small asyncio backends."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psutil
import pytest

from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.haproxy import HaproxyEngine, HaproxyReloadError, haproxy_binary
from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
from ninefold.spec.models import CheckSpec
from ninefold.spec.routing import BalanceSpec, RouteSpec, StickySpec
from tests.cluster import test_gateway as cluster_gw
from tests.helpers import eventually, free_port, wait_for_port

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        haproxy_binary() is None, reason="no haproxy binary (apt-get install haproxy)"
    ),
]

HEALTH = CheckSpec(http="/healthz", interval=0.2, fall=2, rise=2)


# --- backends ------------------------------------------------------------------------------


class Upstream:
    """An HTTP/1.1 backend in this event loop: answers JSON {name, path}; `/slow`
    waits until `release` is set; `/healthz` is not counted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def backend(self, weight: int = 100, draining: bool = False) -> Backend:
        return Backend(self.name, "n1", "127.0.0.1", self.port, weight, draining)

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.release.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                first, *lines = head.split("\r\n")
                target = first.split(" ")[1]
                headers = {}
                for line in lines:
                    if ": " in line:
                        name, value = line.split(": ", 1)
                        headers[name.lower()] = value
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                if target != "/healthz":
                    self.requests.append((target, headers))
                if target.startswith("/slow"):
                    self.slow_started.set()
                    await self.release.wait()
                body = json.dumps({"name": self.name, "path": target}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


BACKEND_SCRIPT = """
import asyncio, json, sys
name, port = sys.argv[1], int(sys.argv[2])
body = json.dumps({"name": name}).encode()
reply = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body)
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(reply)
            await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    await server.serve_forever()
asyncio.run(main())
"""


class ProcessUpstream:
    """A backend in a process of its own, to be SIGKILLed or measured."""

    def __init__(self, name: str, tmp: Path, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        script = tmp / "backend.py"
        script.write_text(BACKEND_SCRIPT)
        self.proc = subprocess.Popen([sys.executable, str(script), name, str(self.port)])
        wait_for_port("127.0.0.1", self.port)

    def backend(self) -> Backend:
        return Backend(self.name, "n1", "127.0.0.1", self.port)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


MakeUpstream = Callable[[str], Awaitable[Upstream]]
MakeProcessUpstream = Callable[..., ProcessUpstream]
MakeGateway = Callable[..., Awaitable[HaproxyEngine]]


@pytest.fixture
async def upstreams() -> AsyncIterator[MakeUpstream]:
    made: list[Upstream] = []

    async def make(name: str) -> Upstream:
        made.append(await Upstream(name).start())
        return made[-1]

    yield make
    for upstream in made:
        await upstream.stop()


@pytest.fixture
def process_upstreams(tmp_path: Path) -> Iterator[MakeProcessUpstream]:
    made: list[ProcessUpstream] = []

    def make(name: str, port: int | None = None) -> ProcessUpstream:
        made.append(ProcessUpstream(name, tmp_path, port))
        return made[-1]

    yield make
    for upstream in made:
        upstream.kill()


# --- the gateway -------------------------------------------------------------------------------


def haproxies_under(path: Path) -> list[int]:
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(path) in a for a in cmdline):
            out.append(proc.pid)
    return out


@pytest.fixture
async def gateway() -> AsyncIterator[MakeGateway]:
    """Factory of started engines on 127.0.0.1 and a free port; stopped afterwards,
    and no HAProxy process of theirs may survive."""
    made: list[tuple[HaproxyEngine, Path]] = []

    async def make(table: RoutingTable | None = None, checks: dict | None = None) -> HaproxyEngine:
        root = Path(tempfile.mkdtemp(prefix="nf-hx-", dir="/tmp"))  # short: socket paths
        settings = GatewaySettings("n1", "127.0.0.1", free_port(), root / "run", root / "log")
        engine = HaproxyEngine(settings, checks)
        made.append((engine, root))
        if table is not None:
            await engine.apply(table)  # before start: rendered into the first configuration
        await engine.start()
        return engine

    yield make
    for engine, root in made:
        await engine.stop()
        left = haproxies_under(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"haproxy processes left: {left}"


def web(
    *backends: Backend, route: RouteSpec | None = None, balance: BalanceSpec | None = None
) -> ServiceRoutes:
    return ServiceRoutes("web", route or RouteSpec(http="/web"), balance or BalanceSpec(), backends)


def table(*services: ServiceRoutes) -> RoutingTable:
    return RoutingTable({s.service: s for s in services})


def get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def client_loop(
    port: int,
    count: int,
    path: str = "/web/x",
    *,
    keep_alive: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Counter[str]:
    """`count` sequential GETs; the backend names that answered, and failures."""
    results: Counter[str] = Counter()
    conn: http.client.HTTPConnection | None = None
    for i in range(count):
        if on_step is not None:
            on_step(i)
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200
            results[json.loads(body)["name"] if ok else f"status {resp.status}"] += 1
            if resp.will_close or not keep_alive:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            results[f"error {type(exc).__name__}"] += 1
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return results


def failures(results: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in results.items() if k.startswith(("error", "status"))}


async def worker_pid(engine: HaproxyEngine) -> int | None:
    return (await engine.processes()).worker


# --- tests ---------------------------------------------------------------------------------------


async def test_routes_by_prefix_and_host(gateway: MakeGateway, upstreams: MakeUpstream) -> None:
    a, b, c = await upstreams("a"), await upstreams("b"), await upstreams("c")
    routes = table(
        web(a.backend()),
        ServiceRoutes(
            "api", RouteSpec(http="/api", strip_prefix=False), BalanceSpec(), (b.backend(),)
        ),
        ServiceRoutes(
            "shop", RouteSpec(http="/", host="shop.example"), BalanceSpec(), (c.backend(),)
        ),
    )
    engine = await gateway(routes)
    port = engine.settings.http_port
    cases = [
        ("/web", None, "a"),
        ("/web/x/y?q=1", None, "a"),
        ("/api/v1", None, "b"),
        ("/web", "Shop.Example:8080", "c"),
        ("/anything", "shop.example", "c"),
    ]
    for path, host, name in cases:
        status, _, body = await asyncio.to_thread(get, port, path, {"Host": host} if host else None)
        assert status == 200, (path, host, body)
        answer = json.loads(body)
        assert answer["name"] == name, (path, host)
        match = routes.match(host, path)
        assert match is not None and answer["path"] == match[1]  # same as every engine
    _, headers = a.requests[-1]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{port}"

    status, response_headers, body = await asyncio.to_thread(
        get, port, '/webby"\\x', {"Host": 'ev"il'}
    )
    assert status == 404
    assert response_headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "no route", "host": 'ev"il', "path": '/webby"\\x'}


async def test_no_instance_is_a_json_503(gateway: MakeGateway) -> None:
    engine = await gateway(table(web()))
    status, headers, body = await asyncio.to_thread(get, engine.settings.http_port, "/web/")
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "no backend", "service": "web"}

    async def counted() -> bool:
        return engine.snapshot()["web"].total.responses == {"error": 1}

    await eventually(counted, 5, "the 503 counted as the gateway's own error")


async def test_instances_change_through_the_runtime_api(
    gateway: MakeGateway, upstreams: MakeUpstream
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    engine = await gateway(table(web(a.backend())), {"web": HEALTH})
    port = engine.settings.http_port
    master, worker = engine.master_pid, await worker_pid(engine)

    await engine.apply(table(web(a.backend(), b.backend())))
    results = await asyncio.to_thread(client_loop, port, 100)
    assert results == Counter({"a": 50, "b": 50})

    await engine.apply(table(web(a.backend(weight=30), b.backend(weight=10))))
    results = await asyncio.to_thread(client_loop, port, 100)
    assert abs(results["a"] - 75) <= 2 and results["a"] + results["b"] == 100
    results_a = results["a"]

    await engine.apply(table(web(b.backend())))
    results = await asyncio.to_thread(client_loop, port, 20)
    assert results == Counter({"b": 20})

    # more instances than slots: a reload, the rest was not
    assert engine.reloads == 0
    assert engine.master_pid == master and await worker_pid(engine) == worker
    assert (await engine.processes()).reloads == 0

    others = [await upstreams(f"x{i}") for i in range(5)]
    await engine.apply(table(web(b.backend(), *(u.backend() for u in others))))
    assert engine.reloads == 1
    assert engine.master_pid == master and await worker_pid(engine) != worker
    results = await asyncio.to_thread(client_loop, port, 60)
    assert set(results) == {"b", *(u.name for u in others)}

    async def counted() -> bool:
        return engine.snapshot()["web"].total.requests == 280

    await eventually(counted, 5, "all requests counted")
    snap = engine.snapshot()["web"]
    assert snap.backends[a.key].requests == 50 + results_a
    assert snap.total.responses["2xx"] == snap.total.requests


async def test_thousand_requests_split_evenly(
    gateway: MakeGateway, upstreams: MakeUpstream
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    engine = await gateway(table(web(a.backend(), b.backend())), {"web": HEALTH})
    results = await asyncio.to_thread(client_loop, engine.settings.http_port, 1000)
    assert not failures(results)
    assert abs(results["a"] - 500) <= 10 and abs(results["b"] - 500) <= 10


async def test_sticky_cookie_keeps_a_client_and_hides_the_address(
    gateway: MakeGateway, upstreams: MakeUpstream
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    sticky = BalanceSpec(sticky=StickySpec(cookie="NF"))
    engine = await gateway(table(web(a.backend(), b.backend(), balance=sticky)))
    port = engine.settings.http_port
    _, headers, body = await asyncio.to_thread(get, port, "/web/")
    first = json.loads(body)["name"]
    cookie = headers["set-cookie"].split(";")[0]
    name, value = cookie.split("=")
    assert name == "NF"
    assert "127.0.0.1" not in value and str(a.port) not in value and str(b.port) not in value
    for _ in range(10):
        _, _, body = await asyncio.to_thread(get, port, "/web/", {"Cookie": cookie})
        assert json.loads(body)["name"] == first


async def test_tcp_route(gateway: MakeGateway, upstreams: MakeUpstream) -> None:
    a = await upstreams("a")
    tcp_port = free_port()
    db = ServiceRoutes("db", RouteSpec(tcp=tcp_port), BalanceSpec(), (a.backend(),))
    engine = await gateway(table(db), {"db": CheckSpec(tcp="main", interval=0.2)})
    status, _, body = await asyncio.to_thread(get, tcp_port, "/raw/path")
    assert status == 200 and json.loads(body) == {"name": "a", "path": "/raw/path"}

    async def counted() -> bool:
        db_metrics = engine.snapshot().get("db")
        return db_metrics is not None and db_metrics.backends[a.key].requests == 1

    await eventually(counted, 5, "the tcp session counted")


async def test_structural_reload_refuses_no_connection(
    gateway: MakeGateway, upstreams: MakeUpstream
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    engine = await gateway(table(web(a.backend(), b.backend())))
    master, first_worker = engine.master_pid, await worker_pid(engine)
    port = engine.settings.http_port
    loop = asyncio.create_task(asyncio.to_thread(client_loop, port, 1500, keep_alive=False))
    reloads = 0
    while not loop.done():
        reloads += 1
        extra = ServiceRoutes(
            "api", RouteSpec(http=f"/api{reloads}"), BalanceSpec(), (b.backend(),)
        )
        await engine.apply(table(web(a.backend(), b.backend()), extra))
    results = await loop
    assert reloads >= 3 and engine.reloads == reloads
    assert not failures(results), results
    assert engine.master_pid == master and await worker_pid(engine) != first_worker
    status, _, _ = await asyncio.to_thread(get, port, f"/api{reloads}/")
    assert status == 200


async def test_killed_backend_fails_no_request(
    gateway: MakeGateway, process_upstreams: MakeProcessUpstream
) -> None:
    a, b = process_upstreams("a"), process_upstreams("b")
    engine = await gateway(table(web(a.backend(), b.backend())), {"web": HEALTH})

    def kill_a(i: int) -> None:
        if i == 700:
            a.kill()

    results = await asyncio.to_thread(client_loop, engine.settings.http_port, 2000, on_step=kill_a)
    assert not failures(results), results
    assert results["a"] >= 300 and results["b"] >= 1000


class GapLoop:
    """Sequential keep-alive GETs from a thread until stopped: who answered,
    what failed, and the longest time between two answers since `reset_gap`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered: Counter[str] = Counter()
        self.failures: list[str] = []
        self.longest_gap = 0.0
        self.stop = threading.Event()

    def reset_gap(self) -> None:
        self.longest_gap = 0.0

    def more_from(self, name: str, than: int) -> Callable[[], bool]:
        """A condition: `name` answered more than `than` requests."""
        return lambda: self.answered[name] > than

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        last_ok = time.monotonic()
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/web/x")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    self.failures.append(f"{resp.status} {body[:80]!r}")
                else:
                    now = time.monotonic()
                    self.longest_gap = max(self.longest_gap, now - last_ok)
                    last_ok = now
                    self.answered[json.loads(body)["name"]] += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


async def test_five_backend_kills_fail_no_request(
    gateway: MakeGateway, process_upstreams: MakeProcessUpstream
) -> None:
    """The builtin engine's test at a backend kill (tests/cluster/test_gateway.py),
    five times: each kill SIGKILLs one of two backends under a sequential
    client, and it comes back on its port before the next. Prints the
    longest gap between two answers per kill (bench/README.md; the goal is
    under 0.3 s, not asserted here)."""
    upstream = {"a": process_upstreams("a"), "b": process_upstreams("b")}
    engine = await gateway(
        table(web(upstream["a"].backend(), upstream["b"].backend())), {"web": HEALTH}
    )
    load = GapLoop(engine.settings.http_port)
    client = asyncio.create_task(asyncio.to_thread(load.run))
    gaps = []
    try:
        for kill in range(5):
            victim, survivor = ("a", "b") if kill % 2 == 0 else ("b", "a")
            await eventually(load.more_from(victim, 0), 20, f"{victim} answering")
            load.reset_gap()
            port = upstream[victim].port
            upstream[victim].kill()
            after = load.answered[survivor]
            await eventually(load.more_from(survivor, after + 300), 30, f"{survivor} takes over")
            upstream[victim] = process_upstreams(victim, port)
            back = load.answered[victim]
            await eventually(load.more_from(victim, back), 20, f"{victim} back after its restart")
            gaps.append(load.longest_gap)
    finally:
        load.stop.set()
        await client
    print(
        f"\nhaproxy engine, 5 backend kills: longest gap per kill {[round(g, 3) for g in gaps]} s"
    )
    assert load.failures == [], load.failures[:5]
    assert len(gaps) == 5


async def test_drain_lets_an_inflight_request_finish(
    gateway: MakeGateway, upstreams: MakeUpstream
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    engine = await gateway(table(web(a.backend(), b.backend())), {"web": HEALTH})
    port = engine.settings.http_port
    # round robin starts with a
    slow = asyncio.create_task(asyncio.to_thread(get, port, "/web/slow"))
    await asyncio.wait_for(a.slow_started.wait(), 5)
    await engine.apply(table(web(a.backend(draining=True), b.backend())))
    assert engine.inflight(a.key) == 1
    results = await asyncio.to_thread(client_loop, port, 20)
    assert results == Counter({"b": 20})
    assert not slow.done()
    a.release.set()
    status, _, body = await slow
    assert status == 200 and json.loads(body)["name"] == "a"

    async def drained() -> bool:
        return engine.inflight(a.key) == 0

    await eventually(drained, 5, "no request in flight to a")
    assert engine.reloads == 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="no wrk")
async def test_throughput_against_direct(
    gateway: MakeGateway, process_upstreams: MakeProcessUpstream
) -> None:
    """Not a speed assertion (bench/ holds those): prints gateway/direct req/s."""
    a = process_upstreams("a")
    engine = await gateway(table(web(a.backend())))

    async def wrk(url: str) -> float:
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t1", "-c20", "-d5s", url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        text = out.decode()
        assert "Non-2xx" not in text and "Socket errors" not in text, text
        found = re.search(r"Requests/sec:\s+([\d.]+)", text)
        assert found, text
        return float(found.group(1))

    direct = await wrk(f"http://127.0.0.1:{a.port}/")
    via = await wrk(f"http://127.0.0.1:{engine.settings.http_port}/web/")
    print(
        f"\nhaproxy engine: {via:.0f} req/s, direct: {direct:.0f} req/s, ratio {via / direct:.2f}"
    )
    assert via > 0


async def test_refused_reload_keeps_the_old_configuration(
    gateway: MakeGateway, upstreams: MakeUpstream
) -> None:
    a = await upstreams("a")
    engine = await gateway(table(web(a.backend())))
    port = engine.settings.http_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        db = ServiceRoutes("db", RouteSpec(tcp=busy), BalanceSpec(), (a.backend(),))
        with pytest.raises(HaproxyReloadError, match="cannot bind"):
            await engine.apply(table(web(a.backend()), db))
        status, _, _ = await asyncio.to_thread(get, port, "/web/")
        assert status == 200
        config = await asyncio.to_thread(Path(engine.paths.config).read_text)
        assert "tcp_" not in config
    await engine.apply(table(web(a.backend()), db))  # the port is free now
    assert engine.reloads == 1
    status, _, body = await asyncio.to_thread(get, busy, "/x")
    assert status == 200 and json.loads(body)["name"] == "a"


# --- on a real cluster, as tests/cluster/test_gateway.py ---------------------------------


def sent_more(load: cluster_gw.LoadLoop, count: int) -> Callable[[], bool]:
    """A condition: `load` sent `count` more requests than now."""
    mark = load.sent
    return lambda: load.sent >= mark + count


@pytest.mark.parametrize("engine", ["builtin", "haproxy"])
def test_five_node_kills_fail_no_request(local_cluster: cluster_gw.Factory, engine: str) -> None:
    """test_gateway.py's test at a backend node's kill, five kills in a row:
    clients through n1's gateway, web on n2 and n3; each kill SIGKILLs the
    agent (and so the instance) of the node serving web-0 or web-1 in turn,
    then starts it again and waits until both answer. Prints the longest gap
    between two answers per kill (bench/README.md; goal under 0.3 s, not
    asserted here); asserts that no request failed."""
    c = cluster_gw.start(local_cluster, engine, cluster_gw.web())
    cluster_gw.until("both replicas routed", cluster_gw.routed(c, 2), 60)
    load = cluster_gw.LoadLoop(cluster_gw.gateway_url(c) + "/web/", 10**9)
    thread = load.start()
    gaps = []
    try:
        for kill in range(5):
            victim = c.serving("web")[f"web-{kill % 2}"]
            cluster_gw.until("requests flowing", sent_more(load, 100), 60, 0.01)
            load.longest_gap = 0.0
            c.kill(victim)
            cluster_gw.until("500 requests after the kill", sent_more(load, 500), 60, 0.01)
            c.start(victim)
            cluster_gw.until("both replicas routed again", cluster_gw.routed(c, 2), 120)
            gaps.append(load.longest_gap)
    finally:
        load.stop.set()
        thread.join(timeout=30)
    print(f"\n{engine} engine, 5 node kills: longest gap per kill {[round(g, 3) for g in gaps]} s")
    assert load.failures == [], load.failures[:5]
    assert len(gaps) == 5
