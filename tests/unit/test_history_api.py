"""An agent's history (agent/history.py) sampling real metrics text, and
`GET /v1/history` on two real API servers on loopback, the first fanning out
to the second for `scope=cluster`."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from ninefold.agent.history import INTERVAL_ENV, History, configured_interval
from ninefold.api import ApiServer, create_app
from ninefold.gateway.engine import Counters, ServiceMetrics
from ninefold.gateway.metrics import render as render_gateway
from ninefold.spec import parse_spec
from ninefold.state.keys import node_key
from ninefold.state.records import NodeRecord
from ninefold.store.memory import MemoryStore
from tests.helpers import free_ports

SPEC = parse_spec(
    """
cluster: t
nodes:
  - {name: n1, address: 127.0.0.1, zone: a, store: true}
  - {name: n2, address: 127.0.0.2, zone: b}
services:
  web: {command: [x], route: {http: /web}}
"""
)


class Traffic:
    """A gateway's counters that grow by 10 requests (1 failed, each 30 ms) a sample."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.counters = Counters()

    def text(self) -> bytes:
        for _ in range(10):
            self.counters.requests += 1
            self.counters.observe(0.03)
            self.counters.answered(200)
        self.counters.answered(503)
        snapshot = {"web": ServiceMetrics(total=self.counters)}
        cpu = (
            "# TYPE ninefold_node_cpu_usage_ratio gauge\n"
            f'ninefold_node_cpu_usage_ratio{{node="{self.node}"}} 0.5\n'
        )
        return render_gateway(self.node, lambda: snapshot) + cpu.encode()


async def until(what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_sampler_keeps_rates_and_p99() -> None:
    history = History("n1", Traffic("n1").text, interval=0.05, keep=2.0)
    assert history.ring.capacity == 40
    task = asyncio.create_task(history.run())
    try:
        await until("four samples", lambda: history.ring.count >= 4)
    finally:
        task.cancel()
    answer = await history.window("15m")
    series = {(s["kind"], s["subject"], s["metric"]): s["values"] for s in answer["series"]}
    assert series[("node", "n1", "cpu_ratio")][-1] == 0.5
    rates = [v for v in series[("service", "web", "requests_per_second")] if v is not None]
    assert rates and all(r > 0 for r in rates)
    p99 = [v for v in series[("service", "web", "p99_seconds")] if v is not None]
    assert p99 and all(0.025 < v <= 0.05 for v in p99)
    errors = [v for v in series[("service", "web", "errors_per_second")] if v is not None]
    assert errors and all(e > 0 for e in errors)
    assert answer["memory_bytes"] == (len(history.ring.series) * 4 + 8) * 40
    assert len(answer["times"]) == len(series[("node", "n1", "cpu_ratio")])


async def test_a_bad_text_does_not_end_the_sampler(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def source() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            return b"ninefold_node_cpu_usage_ratio not-a-number\n"
        return b"ninefold_node_cpu_usage_ratio 0.1\n"

    history = History("n1", source, interval=0.02, keep=1.0)
    task = asyncio.create_task(history.run())
    try:
        await until("a good sample", lambda: history.ring.count >= 1)
    finally:
        task.cancel()
    assert "sample failed" in caplog.text


def test_a_short_interval_keeps_a_shorter_history_not_more_memory() -> None:
    assert History("n1", bytes, interval=0.2).ring.capacity == 8640
    assert History("n1", bytes).ring.capacity == 8640  # 24 h at 10 s


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert configured_interval() == 0.5
    for bad in ("", "x", "-1", "nan", "0"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        assert configured_interval() == 10.0


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def two_agents(store: MemoryStore) -> AsyncIterator[tuple[str, list[History]]]:
    """n1's and n2's APIs on loopback over one store, each with its history."""
    lease = await store.grant_lease(600)
    ports = free_ports(2)
    servers, histories = [], []
    for name, port in zip(("n1", "n2"), ports, strict=True):
        record = NodeRecord(
            name=name, address="127.0.0.1", zone="z", region="r", api_port=port, pid=1
        )
        await store.put(node_key(name), record.encode(), lease)
        history = History(name, Traffic(name).text, interval=0.05, keep=60.0)
        for _ in range(3):
            await history.sample()
        histories.append(history)
        server = ApiServer(create_app(store, SPEC, name, history=history.window), "127.0.0.1", port)
        assert await server.start()
        servers.append(server)
    for server in servers:
        await until("the API", lambda s=server: s.started)  # type: ignore[misc]
    try:
        yield f"http://127.0.0.1:{ports[0]}", histories
    finally:
        for server in servers:
            await server.stop()


async def test_history_of_this_node(two_agents: tuple[str, list[History]]) -> None:
    url, _ = two_agents
    async with httpx.AsyncClient() as client:
        answer = (await client.get(f"{url}/v1/history", params={"window": "1h"})).json()
        assert answer["node"] == "n1" and answer["window"] == "1h"
        assert answer["seconds"] == 3600 and answer["step"] == 0.05 * math.ceil(3600 / 360 / 0.05)
        metrics = {s["metric"] for s in answer["series"]}
        assert {"cpu_ratio", "requests_per_second", "errors_per_second", "p99_seconds"} <= metrics
        bad = await client.get(f"{url}/v1/history", params={"window": "2d"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"


async def test_history_of_the_cluster_fans_out(two_agents: tuple[str, list[History]]) -> None:
    url, _ = two_agents
    async with httpx.AsyncClient() as client:
        answer = (await client.get(f"{url}/v1/history?window=15m&scope=cluster")).json()
    assert [n["node"] for n in answer["nodes"]] == ["n1", "n2"]
    assert answer["unreachable"] == []
    assert all(n["series"] for n in answer["nodes"])


async def test_a_dead_node_is_unreachable_not_an_error(
    two_agents: tuple[str, list[History]], store: MemoryStore
) -> None:
    url, _ = two_agents
    (port,) = free_ports(1)  # nobody listens there: n3's agent is gone, its lease not yet
    record = NodeRecord(name="n3", address="127.0.0.1", zone="z", region="r", api_port=port, pid=1)
    await store.put(node_key("n3"), record.encode())
    async with httpx.AsyncClient() as client:
        answer = (await client.get(f"{url}/v1/history?window=24h&scope=cluster")).json()
    assert [n["node"] for n in answer["nodes"]] == ["n1", "n2"]
    assert [u["node"] for u in answer["unreachable"]] == ["n3"]
