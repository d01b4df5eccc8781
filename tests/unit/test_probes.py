"""Route probes (agent/probes.py) against real loopback servers standing in
for a node's gateway, writing into a MemoryStore: an outage's brackets, the
writes it makes (none per good probe), a TCP route, traffic counts, pruning,
and the API over what they wrote."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest

from ninefold.agent.probes import PROBE_FAST_EVERY, RouteProbes, probe_targets
from ninefold.api import create_app
from ninefold.decide.availability import KEEP
from ninefold.gateway.engine import Counters, MetricsSnapshot, ServiceMetrics
from ninefold.spec import ClusterSpec, dump_spec, parse_spec
from ninefold.state.keys import (
    AVAILABILITY_DOWN,
    AVAILABILITY_TRAFFIC,
    SPEC_KEY,
    down_key,
    node_key,
    probing_key,
    traffic_key,
)
from ninefold.state.records import (
    DownRecord,
    NodeRecord,
    ProbingRecord,
    TrafficRecord,
)
from ninefold.store.base import Compare, Delete, Put, TxnResult
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually, free_port


class CountingStore(MemoryStore):
    """A MemoryStore that counts its transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.txns = 0

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        self.txns += 1
        return await super().txn(compares, success, failure)


class Gateway:
    """An HTTP server answering 200, or 503 while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.unrouted = False
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        self.requests += 1
        status = b"503 Service Unavailable" if self.down else b"200 OK"
        body = b"ok"
        if self.unrouted:
            status, body = b"404 Not Found", b'{"error": "no route", "path": "/web"}'
        head = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body)
        writer.write(head + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()


def spec_for(port: int, tcp: int | None = None) -> ClusterSpec:
    route = f"{{tcp: {tcp}}}" if tcp else "{http: /web}"
    return parse_spec(f"""\
cluster: t
nodes:
  - {{name: n1, address: 127.0.0.1, zone: a, store: true, ports: {{gateway_http: {port}}}}}
  - {{name: n2, address: 127.0.0.2, zone: b}}
services:
  web:
    command: [web]
    route: {route}
  plain:
    command: [plain]
""")


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, int]]:
    gw = Gateway()
    port = free_port()
    gw.server = await asyncio.start_server(gw.handle, "127.0.0.1", port)
    yield gw, port
    gw.server.close()
    await gw.server.wait_closed()


async def until(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    return await eventually(check, timeout, what)


async def downs(store: MemoryStore) -> list[DownRecord]:
    return [DownRecord.decode(i.value) for i in (await store.list(AVAILABILITY_DOWN)).items]


def test_targets_go_through_the_nodes_own_gateway() -> None:
    spec = spec_for(8080)
    assert probe_targets(spec, "n1")["web"].describe() == "http://127.0.0.1:8080/web"
    assert "plain" not in probe_targets(spec, "n1")  # no route: nothing to probe
    assert probe_targets(spec_for(8080, tcp=9000), "n2")["web"].describe() == "tcp://127.0.0.2:9000"


async def test_an_outage_is_bracketed_and_written_twice(gateway: tuple[Gateway, int]) -> None:
    gw, port = gateway
    store = CountingStore()
    spec = spec_for(port)
    await store.put(SPEC_KEY, dump_spec(spec).encode())
    probes = RouteProbes(store, "n1", spec, lambda: True, None)
    task = asyncio.create_task(probes.run())
    try:
        await until("probing", lambda: "web" in probes.probers and probes.probers["web"].last_ok)
        seen = gw.requests
        await until("three more good probes", lambda: gw.requests >= seen + 3)
        quiet = store.txns
        assert quiet <= 2, quiet
        gw.down = True
        began = time.time()
        opened = await until("the outage written", lambda: downs(store), 5)
        assert opened[0].first_ok is None and opened[0].error == "503"
        prober = probes.probers["web"]
        await until("ten failed probes", lambda: prober.probes_failed >= 10)
        gw.down = False
        ended = time.time()
        [record] = await until(
            "the outage closed",
            lambda: _closed(store),
            5,
        )
        assert record.last_ok is not None and record.first_ok is not None
        assert record.last_ok < began <= record.first_failed
        assert record.first_failed - record.last_ok <= 1.3  # a probe a second (a busy loop: late)
        assert record.last_failed < ended <= record.first_ok
        assert record.first_ok - record.last_failed <= PROBE_FAST_EVERY + 0.3  # ten a second
        assert record.failed_probes >= 10
        assert store.txns - quiet <= 4  # opened, closed (and perhaps the span)
        probing = ProbingRecord.decode((await store.get(probing_key("web", "n1"))).value)  # type: ignore[union-attr]
        assert probing.open and probing.target == f"http://127.0.0.1:{port}/web"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    probing = ProbingRecord.decode((await store.get(probing_key("web", "n1"))).value)  # type: ignore[union-attr]
    assert not probing.open, "a clean stop closes the span"


async def _closed(store: MemoryStore) -> list[DownRecord]:
    return [d for d in await downs(store) if d.first_ok is not None]


async def test_a_route_the_gateway_has_not_learnt_is_not_observed(
    gateway: tuple[Gateway, int],
) -> None:
    gw, port = gateway
    gw.unrouted = True
    store = MemoryStore()
    probes = RouteProbes(store, "n1", spec_for(port), lambda: True, None)
    task = asyncio.create_task(probes.run())
    try:
        await until("probed twice", lambda: gw.requests >= 2)
        prober = probes.probers["web"]
        assert prober.span_start is None and prober.last_ok is None
        gw.unrouted = False
        await until("observed once it answers", lambda: prober.span_start is not None)
        assert await downs(store) == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_node_without_its_lease_does_not_observe(gateway: tuple[Gateway, int]) -> None:
    gw, port = gateway
    store = MemoryStore()
    spec = spec_for(port)
    holds = {"lease": True, "asked": 0}

    def lease_valid() -> bool:
        holds["asked"] += 1  # once a probe slot
        return bool(holds["lease"])

    probes = RouteProbes(store, "n1", spec, lease_valid, None)
    task = asyncio.create_task(probes.run())
    try:
        await until("probing", lambda: "web" in probes.probers and probes.probers["web"].last_ok)
        holds["lease"] = False
        gw.down = True
        seen = holds["asked"]
        await until("two probe slots without the lease", lambda: holds["asked"] >= seen + 2)
        assert await downs(store) == []
        prober = probes.probers["web"]
        assert prober.span_start is None and len(prober.spans) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_tcp_route_is_down_when_the_gateway_closes_at_once() -> None:
    closing = {"now": False}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if closing["now"]:
            writer.close()
            return
        await reader.read(100)  # holds it open until the probe closes
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    store = MemoryStore()
    spec = spec_for(free_port(), tcp=port)
    probes = RouteProbes(store, "n1", spec, lambda: True, None)
    task = asyncio.create_task(probes.run())
    try:
        await until("probing", lambda: "web" in probes.probers and probes.probers["web"].last_ok)
        closing["now"] = True
        [record] = await until("the outage written", lambda: downs(store), 5)
        assert record.error == "closed by the gateway"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()


async def test_traffic_counts_leave_the_probes_out() -> None:
    store = CountingStore()
    counters = Counters()
    snapshot: MetricsSnapshot = {"web": ServiceMetrics(total=counters)}
    probes = RouteProbes(store, "n1", spec_for(free_port()), lambda: True, lambda: snapshot)
    await probes.sync()
    try:
        prober = probes.probers["web"]
        counters.responses = {"2xx": 20, "5xx": 1}  # counted from the gateway's start
        prober.probes_ok = 15
        await probes.read_traffic()
        await probes.flush(final=True)
        [item] = (await store.list(AVAILABILITY_TRAFFIC)).items
        assert list(TrafficRecord.decode(item.value).minutes.values()) == [(5, 1)]
        counters.responses = {"2xx": 120, "4xx": 3, "5xx": 2, "error": 1}
        prober.probes_ok, prober.probes_failed = 35, 1  # the probes' own, through it
        await probes.read_traffic()
        await probes.flush(final=True)
        [item] = (await store.list(AVAILABILITY_TRAFFIC)).items
        record = TrafficRecord.decode(item.value)
        assert sum(a for a, _ in record.minutes.values()) == 5 + (123 - 20) - 20
        assert sum(f for _, f in record.minutes.values()) == 1 + (3 - 1) - 1
        written = store.txns
        await probes.read_traffic()
        await probes.flush()  # nothing new: nothing written
        assert store.txns == written
    finally:
        for task in probes._tasks.values():
            task.cancel()
        await asyncio.gather(*probes._tasks.values(), return_exceptions=True)


async def test_pruning_takes_only_this_nodes_old_records() -> None:
    store = MemoryStore()
    now = time.time()
    old, recent = now - KEEP - 100, now - 100
    for node in ("n1", "n2"):
        for start in (old, recent):
            record = DownRecord(service="web", node=node, first_failed=start,
                                last_failed=start + 5, first_ok=start + 5.1)  # fmt: skip
            await store.put(down_key("web", node, start), record.encode())
        for hour in (old - 7200, recent):
            counted = TrafficRecord(service="web", node=node, hour=hour)
            await store.put(traffic_key("web", node, hour), counted.encode())
    current = math.floor(now / 3600) * 3600
    for hour in (current - 7200, current):  # summed up, not yet
        counted = TrafficRecord(service="web", node="n1", hour=hour, minutes={0: (5, 1), 7: (3, 0)})
        await store.put(traffic_key("web", "n1", hour), counted.encode())
    probes = RouteProbes(store, "n1", spec_for(free_port()), lambda: True, None)
    assert await probes.prune(now) == 2
    left = [i.key for i in (await store.list("availability/")).items]
    summed = await store.get(traffic_key("web", "n1", current - 7200))
    assert summed is not None
    assert TrafficRecord.decode(summed.value).buckets() == [(current - 7200, 3600.0, 8, 1)]
    kept = await store.get(traffic_key("web", "n1", current))
    assert kept is not None and len(TrafficRecord.decode(kept.value).buckets()) == 2
    assert (
        down_key("web", "n1", old) not in left and traffic_key("web", "n1", old - 7200) not in left
    )
    assert len(left) == 8


# -- the API over the records ----------------------------------------------------------


async def test_the_api_merges_the_nodes_records() -> None:
    store = MemoryStore()
    spec = spec_for(8080)
    await store.put(SPEC_KEY, dump_spec(spec).encode())
    now = time.time()
    lease = await store.grant_lease(600)
    for node in ("n1", "n2"):
        record = NodeRecord(name=node, address="127.0.0.1", zone="a", region="r", api_port=1, pid=1)
        await store.put(node_key(node), record.encode(), lease)
        probing = ProbingRecord(
            service="web", node=node, spans=[(now - 7200, now - 5)], open=True, written_at=now - 5
        )
        await store.put(probing_key("web", node), probing.encode())
    start = now - 600
    for node, phase in (("n1", 0.0), ("n2", 0.5)):
        down = DownRecord(
            service="web", node=node, first_failed=start + phase, last_failed=start + 9.95,
            last_ok=start + phase - 1, first_ok=start + 10.05, error="503",
        )  # fmt: skip
        await store.put(down_key("web", node, start + phase), down.encode())
    app = create_app(store, spec, "n1", lambda: b"", None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        whole = (await client.get("/v1/availability")).json()
        assert [s["service"] for s in whole["services"]] == ["web"]
        [web] = whole["services"]
        assert set(web["windows"]) == {"1h", "24h", "30d"}
        hour = web["windows"]["1h"]
        # the start within [start - 0.5, start] (both brackets), the end at start + 10
        assert hour["downtime_seconds"] == pytest.approx(10.25, abs=0.01)
        assert hour["observed_seconds"] == pytest.approx(3600, abs=1)
        [incident] = web["incidents"]
        assert set(incident) >= {"start", "end", "duration_seconds", "cause"}
        assert incident["cause"].startswith("unknown")
        assert web["observers"] == ["n1", "n2"]
        one = await client.get("/v1/availability/web")
        assert one.status_code == 200 and one.json()["services"][0]["service"] == "web"
        unknown = await client.get("/v1/availability/nope")
        assert unknown.status_code == 404
        assert "no service named 'nope'" in unknown.json()["error"]["message"]
        unrouted = await client.get("/v1/availability/plain")
        assert unrouted.status_code == 409 and "no route" in unrouted.json()["error"]["message"]
