"""The agent's own series (check latency, lease and store member, leader
actions, VIPs, volume copies), parsed back with prometheus_client's parser,
fed by the real parts that keep the numbers: a HealthMonitor probing a real
socket, a LeaseKeeper and a LeaderLoop over a MemoryStore. `promtool check
metrics` (Debian's prometheus) lints the whole text."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ninefold.agent.agent_metrics import (
    CheckCollector,
    CheckView,
    LeaderCollector,
    LeaderView,
    StoreCollector,
    StoreView,
    VipCollector,
    VolumeCollector,
    VolumeView,
    render,
    spec_vips,
    vip_views,
)
from ninefold.agent.journal import EventJournal
from ninefold.agent.leader import ACTIONS, LeaderLoop
from ninefold.agent.membership import LeaseKeeper
from ninefold.health import HealthMonitor
from ninefold.latency import LatencyHistogram
from ninefold.spec import dump_spec, parse_spec
from ninefold.state.keys import SPEC_KEY, node_key
from ninefold.state.records import CopyRecord, NodeRecord
from ninefold.store.etcd import MemberStatus
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_a_histogram_counts_into_cumulative_buckets() -> None:
    h = LatencyHistogram((0.1, 1.0))
    assert h.buckets() == [("0.1", 0.0), ("1.0", 0.0), ("+Inf", 0.0)] and h.last is None
    for seconds in (0.05, 0.1, 0.5, 3.0):
        h.observe(seconds)
    assert h.buckets() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.count == 4 and h.sum == pytest.approx(3.65) and h.last == 3.0


def store_view(member: bool, status: MemberStatus | None) -> StoreView:
    latency = LatencyHistogram()
    latency.observe(0.003)
    return StoreView(latency, renewal_failures=2, lease_valid=True, member=member, status=status)


def test_the_store_series_say_what_the_member_answered() -> None:
    status = MemberStatus(leader=True, has_leader=True, db_size=20480, db_size_in_use=16384,
                          learner=False)  # fmt: skip
    got = parse(render(StoreCollector("n1", lambda: store_view(True, status))))
    assert value(got, "ninefold_lease_renewal_duration_seconds_count", node="n1") == 1.0
    assert value(got, "ninefold_lease_renewal_duration_seconds_bucket", node="n1", le="0.005") == 1
    assert value(got, "ninefold_lease_renewal_duration_seconds_bucket", node="n1", le="0.0025") == 0
    assert value(got, "ninefold_lease_renewal_failures_total", node="n1") == 2.0
    assert value(got, "ninefold_lease_valid", node="n1") == 1.0
    assert value(got, "ninefold_store_member_up", node="n1") == 1.0
    assert value(got, "ninefold_store_member_leader", node="n1") == 1.0
    assert value(got, "ninefold_store_member_has_leader", node="n1") == 1.0
    assert value(got, "ninefold_store_db_size_bytes", node="n1") == 20480.0
    assert value(got, "ninefold_store_db_size_in_use_bytes", node="n1") == 16384.0

    # a member that did not answer: up 0, and nothing stale said of it
    down = parse(render(StoreCollector("n1", lambda: store_view(True, None))))
    assert value(down, "ninefold_store_member_up", node="n1") == 0.0
    assert not any(name.startswith("ninefold_store_member_leader") for name, _ in down)
    assert not any(name.startswith("ninefold_store_db") for name, _ in down)
    # no member on this node (external store, or store: false): lease series only
    none = parse(render(StoreCollector("n1", lambda: store_view(False, None))))
    assert {name for name, _ in none if name.startswith("ninefold_store")} == set()
    assert value(none, "ninefold_lease_valid", node="n1") == 1.0


def test_leader_vip_and_volume_series() -> None:
    leading = LeaderView(True, {"placed": 3, "moved": 1, "rolling": 0, "removed": 0})
    got = parse(render(LeaderCollector("n1", lambda: leading)))
    assert value(got, "ninefold_cluster_leader", node="n1") == 1.0
    assert value(got, "ninefold_leader_actions_total", node="n1", kind="placed") == 3.0
    assert value(got, "ninefold_leader_actions_total", node="n1", kind="rolling") == 0.0

    spec = parse_spec("""
cluster: t
nodes:
  - {name: n1, address: 10.99.0.1, store: true}
  - {name: n2, address: 10.99.0.2}
gateway: {enabled: true, vip: 10.99.0.10/24}
services:
  db: {command: [sleep, "1000"], mode: active-passive, vip: 10.99.0.11/24}
  web: {command: [sleep, "1000"]}
""")
    known = spec_vips(spec)
    assert known == [("10.99.0.10", "gateway"), ("10.99.0.11", "db")]
    views = vip_views(known, {"10.99.0.11": "db-0", "10.99.0.12": "old-0"}, {"db-0": "db"})
    got = parse(render(VipCollector("n1", lambda: views)))
    assert value(got, "ninefold_vip_held", node="n1", vip="10.99.0.10", owner="gateway") == 0.0
    assert value(got, "ninefold_vip_held", node="n1", vip="10.99.0.11", owner="db") == 1.0
    # held though the spec no longer names it: still said (it is on the interface)
    assert value(got, "ninefold_vip_held", node="n1", vip="10.99.0.12", owner="old-0") == 1.0

    copies = {
        "n2": CopyRecord(node="n2", source="n1", token=7, seq=4, synced_at=990.0,
                         completed_at=995.0, behind_since=970.0, bytes_behind=4096),
        "n3": CopyRecord(node="n3", source="n1", token=7, seq=0, synced_at=0.0,
                         error="connection refused"),
    }  # fmt: skip
    volumes = [VolumeView("db", "data", copies)]
    got = parse(render(VolumeCollector("n1", lambda: volumes, clock=lambda: 1000.0)))
    n2 = {"node": "n1", "service": "db", "volume": "data", "target": "n2"}
    n3 = {**n2, "target": "n3"}
    assert value(got, "ninefold_volume_lag_seconds", **n2) == 30.0
    assert value(got, "ninefold_volume_behind_bytes", **n2) == 4096.0
    assert value(got, "ninefold_volume_last_sync_timestamp_seconds", **n2) == 995.0
    assert value(got, "ninefold_volume_last_transfer_ok", **n2) == 1.0
    assert value(got, "ninefold_volume_lag_seconds", **n3) == 0.0
    assert value(got, "ninefold_volume_last_transfer_ok", **n3) == 0.0
    assert ("ninefold_volume_last_sync_timestamp_seconds", frozenset(n3.items())) not in got


@pytest.fixture
def listening() -> Iterator[int]:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


async def test_check_latency_comes_from_the_checks_run(listening: int) -> None:
    monitor = HealthMonitor.build("tcp", port=listening, interval=0.02, rise=1)
    kept = LatencyHistogram()
    monitor.latency = kept  # as an InstanceRunner hands its own
    await monitor.start()
    try:
        await eventually(lambda: _true(kept.count >= 3), 5, "three checks")
    finally:
        await monitor.stop()
    got = parse(render(CheckCollector("n1", lambda: [CheckView("web", "web-0", kept)])))
    labels = {"node": "n1", "service": "web", "instance": "web-0"}
    count = value(got, "ninefold_instance_check_duration_seconds_count", **labels)
    assert count == kept.count >= 3
    assert (
        value(got, "ninefold_instance_check_duration_seconds_bucket", le="+Inf", **labels) == count
    )
    last = value(got, "ninefold_instance_last_check_duration_seconds", **labels)
    assert 0.0 <= last < 1.0 and last == kept.last


async def _true(value: bool) -> bool:
    return value


SPEC = """
cluster: t
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
services:
  web: {command: [sleep, "1000"], replicas: 1}
"""


@pytest.fixture
async def leading() -> AsyncIterator[tuple[MemoryStore, LeaseKeeper, LeaderLoop]]:
    spec = parse_spec(SPEC)
    store = MemoryStore()
    await store.put(SPEC_KEY, dump_spec(spec).encode())
    keeper = LeaseKeeper(store, ttl=5.0, interval=0.05, fence_after=3.0)
    leader = LeaderLoop(store, "n1", keeper, EventJournal(store, "n1"), spec)
    await keeper.start()
    record = NodeRecord(name="n1", address="127.0.0.1", zone="z", region="r", api_port=1, pid=1)
    await store.put(node_key("n1"), record.encode(), keeper.lease)
    task = asyncio.create_task(leader.run())
    leader.poke()
    try:
        yield store, keeper, leader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await keeper.stop()
        await store.close()


async def test_the_leader_counts_what_it_applied_and_the_lease_its_renewals(
    leading: tuple[MemoryStore, LeaseKeeper, LeaderLoop],
) -> None:
    store, keeper, leader = leading
    await eventually(lambda: _true(leader.actions["placed"] == 1), 10, "web-0 placed")
    view = LeaderView(leader.is_leader, dict(leader.actions))
    got = parse(render(LeaderCollector("n1", lambda: view)))
    assert value(got, "ninefold_cluster_leader", node="n1") == 1.0
    assert value(got, "ninefold_leader_actions_total", node="n1", kind="placed") == 1.0
    for kind in ACTIONS:  # every kind from the start: rate() needs no first increment
        assert value(got, "ninefold_leader_actions_total", node="n1", kind=kind) >= 0

    await eventually(lambda: _true(keeper.renewal_latency.count >= 3), 5, "renewals")
    assert keeper.renewal_failures == 0 and keeper.renewal_latency.last is not None
    store.expire_lease(keeper.lease)  # the store says the lease is gone: a failure
    await eventually(lambda: _true(keeper.renewal_failures >= 1), 5, "a failed renewal")


@pytest.mark.process
def test_promtool_accepts_every_series(tmp_path: object) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    latency = LatencyHistogram()
    latency.observe(0.02)
    status = MemberStatus(leader=False, has_leader=True, db_size=1, db_size_in_use=1,
                          learner=False)  # fmt: skip
    copy = CopyRecord(node="n2", source="n1", token=1, seq=1, synced_at=1.0, completed_at=2.0)
    text = render(
        CheckCollector("n1", lambda: [CheckView("web", "web-0", latency)]),
        StoreCollector("n1", lambda: store_view(True, status)),
        LeaderCollector("n1", lambda: LeaderView(False, dict.fromkeys(ACTIONS, 0))),
        VipCollector("n1", lambda: vip_views([("10.0.0.9", "gateway")], {}, {})),
        VolumeCollector("n1", lambda: [VolumeView("db", "data", {"n2": copy})]),
    )
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout.decode() + result.stderr.decode()
    )
