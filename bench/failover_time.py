"""Failover time after SIGKILL of a node's agent (its etcd member and services die with it).

One 3-node cluster (agents + embedded etcd on 127.0.0.1-3), default agent and
store timings, two services:

  web    replicated, 1 replica  -> killing its node forces a start elsewhere
  queue  active-passive, 2 replicas, hot standby, tcp check

Each round kills one node's agent and polls the store in-process every
--poll seconds (no CLI: its start-up alone costs ~0.8 s) for:

  (a) web running + healthy on another node
  (b) the queue's active lock held by an instance on another node
      (also: when that instance's published role becomes "active")

then restarts the agent and waits until the cluster is whole again. The victim
is the node running both web and the queue's active when there is one, else
whichever of the two measurements has fewer samples. Rounds stop when both
have --kills samples (at most 2 * --kills + 2 rounds).

Fencing tokens of the queue's promotions are read from the event journal: they
must strictly increase whenever the active changes (an active that resumes
after self-fencing, still holding its lock, keeps its token).

Each round also records a timeline from the kill: when a surviving etcd
member first named a new raft leader (its Status polled every --poll), the
victim's lease as the store counts it (LeaseTimeToLive: the jump to TTL + the
election timeout is etcd extending every lease on a leader change), when its
node key went (lease expired, or revoked early by the leader agent once its API
port refused connections: journal kind `node-dead`), the active lock taken
elsewhere, and the new active's published role. The summary gives the median
of each phase split by whether the victim's member was the raft leader, and
the p95 over all kills.

--victim chooses whom to kill: `services` (default, as above), `raft-leader`
(the node whose etcd member leads, measuring whatever it runs), `rotate`
(n1, n2, n3, ... in turn: whichever node dies) or `active-raft-leader` (the
queue's active's node, after handing it raft leadership with MoveLeader: the
worst case, which raft leader placement makes rare). --witness runs 2 workers and
1 witness (role: witness, n3) instead of 3 workers; the witness is never killed.

    .venv/bin/python bench/failover_time.py [--kills 10] [--quick] [--victim rotate] [--witness]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

import grpc.aio
from _cluster import (
    HTTP,
    ROOT,
    check_agents,
    local_cluster,
    log_lines,
    need_etcd,
    store_of,
    table,
    wait_for,
    write_result,
)
from aetcd import rpc

from ninefold import defaults
from ninefold.spec import ClusterSpec
from ninefold.state.keys import NODES, STATUS, active_lock, node_key
from ninefold.state.reads import read_events
from ninefold.state.records import Event, InstanceStatus
from ninefold.state.view import ClusterView, read_view
from ninefold.store.base import Store, StoreError
from ninefold.store.etcd import EtcdStore
from tests.cluster.harness import LocalCluster

NAME = "failover_time"
GOAL_B = 2.5  # s, median, unplanned active-passive failover (DESIGN.md section 7)
GOAL_P95 = 2.5  # s, (b) p95 over all kills, whichever node dies (issue 18 item 3)
CHECK = "interval: 200ms, rise: 1, fall: 2"

SERVICES = f"""
services:
  web:
    command: {HTTP}
    replicas: 1
    check: {{http: /, {CHECK}}}
  queue:
    mode: active-passive
    replicas: 2
    standby: hot
    command: {HTTP}
    check: {{tcp: main, {CHECK}}}
"""


@dataclass
class Round:
    round: int
    victim: str
    measures: list[str]  # "web", "queue"
    was_leader: bool
    was_etcd_leader: bool
    t0_wall: float = 0.0
    old_active: str | None = None
    old_token: int | None = None
    node_gone: float | None = None  # nodes/<victim> gone from the store (lease expired)
    web_healthy: float | None = None  # (a)
    web_node: str | None = None
    queue_active: float | None = None  # (b) lock holder elsewhere
    queue_role_active: float | None = None  # new active's status says role active
    queue_active_node: str | None = None
    new_token: int | None = None
    # from the event journal, times relative to the kill
    journal_failover: float | None = None
    journal_token: int | None = None
    queue_promotions: list[dict[str, Any]] = field(default_factory=list)
    fenced: list[str] = field(default_factory=list)  # journal: active demoted, lease at risk
    lease_at_risk: list[str] = field(default_factory=list)  # logs: survivors that self-fenced
    queue_gap: float | None = None  # a survivor fenced the queue's active: s without one
    leader_elected: list[str] = field(default_factory=list)
    # the timeline's store side (times from the kill)
    victim_lease: int = 0
    raft_leader_after: str | None = None  # who leads raft once the kill is over
    raft_elected: float | None = None  # a survivor's member names a new raft leader
    lease_ttl_before: int | None = None  # victim's lease as etcd counts it, just before
    lease_ttl_seen: list[tuple[float, int]] = field(default_factory=list)  # (t, TTL) changes
    lease_overrun: float | None = None  # node_gone - lease TTL: how long it outlived its TTL
    revoked_early: float | None = None  # journal: the leader revoked the victim's lease
    web_moved: float | None = None  # journal: the leader placed web elsewhere
    notes: list[str] = field(default_factory=list)

    @property
    def failover(self) -> float | None:
        """The kill's failover time: the last of its measurements (None if one is missing)."""
        values = [self.web_healthy if m == "web" else self.queue_active for m in self.measures]
        return None if not values or None in values else max(v for v in values if v is not None)

    @property
    def spurious(self) -> bool:
        """The queue's active changed although its node was not killed."""
        return "queue" not in self.measures and bool(self.queue_promotions)


def timings() -> dict[str, Any]:
    return {
        "lease_ttl_s": defaults.LEASE_TTL,
        "keepalive_interval_s": defaults.KEEPALIVE_INTERVAL,
        "self_fence_after_s": defaults.SELF_FENCE_AFTER,
        "etcd_heartbeat_ms": defaults.STORE_HEARTBEAT_MS,
        "etcd_election_timeout_ms": defaults.STORE_ELECTION_TIMEOUT_MS,
        "etcd_pre_vote": "--pre-vote" in member_flags(),
        "service_check": CHECK,
    }


def member_flags() -> list[str]:
    """The flags the agent gives its etcd member (as built by store/embedded.py)."""
    from ninefold.spec import load_spec
    from ninefold.store.embedded import member_argv

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write("cluster: c\nstore: {mode: embedded}\nnodes:\n")
        f.write("  - {name: a, address: 127.0.0.1, store: true}\n")
        f.flush()
        spec = load_spec(f.name)
    return member_argv(spec, spec.nodes[0], Path("/nonexistent"), "etcd")


class WitnessCluster(LocalCluster):
    """n1, n2 workers and n3 a witness (a store member that runs nothing else)."""

    def spec_text(self, services_yaml: str) -> str:
        last = list(self.addresses)[-1]
        return (
            super()
            .spec_text(services_yaml)
            .replace(f"{{name: {last}, ", f"{{name: {last}, role: witness, ", 1)
        )


@contextlib.contextmanager
def witness_cluster(services_yaml: str, name: str, keep: bool = False) -> Iterator[LocalCluster]:
    """_cluster.local_cluster with a witness as the last node."""
    need_etcd()
    root = Path(tempfile.mkdtemp(prefix=f"ninefold-{name}-"))
    cluster = WitnessCluster(root, services_yaml, name=name)
    ok = False
    try:
        cluster.start_all()
        yield cluster
        ok = True
    finally:
        cluster.stop_all()
        if keep or not ok:
            print(f"cluster files (logs, data) left in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def whole(view: ClusterView) -> ClusterView | None:
    """3 nodes up, web 1/1 and queue 2/2 healthy, one active whose status says so."""
    if any(n.state != "up" for n in view.nodes):
        return None
    services = {s.name: s for s in view.services}
    if any(s.healthy != s.desired for s in services.values()):
        return None
    active = services["queue"].active
    if not active:
        return None
    node, instance = active.split("/", 1)
    roles = [i.role for i in view.instances if i.instance == instance and i.node == node]
    return view if roles == ["active"] else None


async def wait_whole(
    cluster: LocalCluster, store: Store, spec: ClusterSpec, timeout: float
) -> ClusterView:
    async def probe() -> ClusterView | None:
        check_agents(cluster)
        return whole(await read_view(store, spec))

    return await wait_for("the cluster whole (3 up, web 1/1, queue 2/2 + active)", probe, timeout)


async def measure(
    store: Store,
    r: Round,
    t0: float,
    poll: float,
    timeout: float,
    old_holder: str,
    raft: RaftWatch,
) -> None:
    """Poll the store until the round's measurements are all taken (or
    timeout); meanwhile the survivors' raft status and the victim's lease."""
    side = [
        asyncio.create_task(raft.until_new_leader(r, t0, poll, t0 + timeout)),
        asyncio.create_task(lease_ttl(store, r, t0, poll, t0 + timeout)),
    ]
    try:
        await poll_store(store, r, t0, poll, timeout, old_holder)
        await asyncio.wait(side, timeout=max(0.1, t0 + timeout - time.monotonic()))
    finally:
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
    if r.node_gone is not None:
        r.lease_overrun = round(r.node_gone - defaults.LEASE_TTL, 3)


async def lease_ttl(store: Store, r: Round, t0: float, poll: float, deadline: float) -> None:
    """The victim's lease as the store counts it (whole seconds), each change."""
    assert isinstance(store, EtcdStore)
    last: int | None = r.lease_ttl_before
    while r.victim_lease and time.monotonic() < deadline:
        try:
            ttl = await store.lease_time_to_live(r.victim_lease)
        except StoreError:
            await asyncio.sleep(poll)
            continue
        if ttl is None:
            return
        if ttl > 3600:  # a member between raft leaders: its lessor counts no expiry
            await asyncio.sleep(poll)
            continue
        if ttl != last:
            r.lease_ttl_seen.append((round(time.monotonic() - t0, 3), ttl))
            last = ttl
        await asyncio.sleep(poll)


class RaftWatch:
    """The etcd members' own view of who leads raft (Maintenance.Status)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._cluster = cluster
        self.names: dict[int, str] = {}

    async def _status(self, node: str) -> tuple[int, int] | None:
        """(this member's id, the leader's id) as the node's member says."""
        address = self._cluster.addresses[node]
        async with grpc.aio.insecure_channel(f"{address}:{self._cluster.base}") as channel:
            try:
                status = await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=0.3)
            except grpc.aio.AioRpcError:
                return None
        return int(status.header.member_id), int(status.leader)

    async def leader(self) -> str | None:
        """Learn the members' ids; the name of the raft leader now."""
        found = await asyncio.gather(*(self._status(n) for n in self._cluster.addresses))
        leader = 0
        for node, got in zip(self._cluster.addresses, found, strict=True):
            if got is not None:
                self.names[got[0]] = node
                leader = leader or got[1]
        return self.names.get(leader)

    async def until_new_leader(self, r: Round, t0: float, poll: float, deadline: float) -> None:
        """When the victim led raft: the first time a survivor names another leader."""
        if not r.was_etcd_leader:
            return
        survivors = [n for n in self._cluster.addresses if n != r.victim]
        while time.monotonic() < deadline:
            found = await asyncio.gather(*(self._status(n) for n in survivors))
            for got in found:
                if got is not None and got[1] and self.names.get(got[1]) != r.victim:
                    r.raft_elected = round(time.monotonic() - t0, 3)
                    r.raft_leader_after = self.names.get(got[1], str(got[1]))
                    return
            await asyncio.sleep(poll)


async def poll_store(
    store: Store, r: Round, t0: float, poll: float, timeout: float, old_holder: str
) -> None:
    """Poll the store until the round's measurements are all taken (or timeout)."""
    lock = active_lock("queue")
    deadline = t0 + timeout
    errors = 0
    while time.monotonic() < deadline:
        try:
            statuses, hold, nodes = await asyncio.gather(
                store.list(STATUS), store.lock_holder(lock), store.list(NODES)
            )
        except StoreError:
            errors += 1
            await asyncio.sleep(poll)
            continue
        now = time.monotonic() - t0
        if r.node_gone is None and not any(i.key.endswith("/" + r.victim) for i in nodes.items):
            r.node_gone = now
        for item in statuses.items:
            s = InstanceStatus.decode(item.value)
            if s.node == r.victim or s.service not in r.measures:
                continue
            if s.service == "web" and r.web_healthy is None and s.serving:
                r.web_healthy, r.web_node = now, s.node
            if s.service == "queue" and r.queue_role_active is None and s.role == "active":
                r.queue_role_active = now
        moved = hold is not None and hold.holder != old_holder
        if "queue" in r.measures and r.queue_active is None and moved:
            assert hold is not None
            node = hold.holder.split("/", 1)[0]
            if node != r.victim:
                r.queue_active, r.new_token, r.queue_active_node = now, hold.fencing_token, node
        done = r.node_gone is not None
        if "web" in r.measures:
            done = done and r.web_healthy is not None
        if "queue" in r.measures:
            done = done and r.queue_active is not None and r.queue_role_active is not None
        if done:
            break
        await asyncio.sleep(poll)
    if errors:
        r.notes.append(f"{errors} polls failed (store unavailable)")


def kill(cluster: LocalCluster, node: str) -> tuple[float, float]:
    """SIGKILL the node's agent; returns (monotonic, wall) time just before."""
    proc = cluster.procs.pop(node)
    t0, wall = time.monotonic(), time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return t0, wall


def choose(
    args: argparse.Namespace,
    view: ClusterView,
    counts: dict[str, int],
    number: int,
    raft_leader: str | None,
    workers: list[str],
) -> tuple[str, list[str]]:
    """(victim, what its death is measured for) per --victim."""
    services = {s.name: s for s in view.services}
    web_node = next(i.node for i in view.instances if i.service == "web")
    holder = services["queue"].active
    assert holder is not None
    queue_node = holder.split("/", 1)[0]
    if args.victim == "services":
        if web_node == queue_node:
            return web_node, ["web", "queue"]
        if counts["web"] < counts["queue"]:
            return web_node, ["web"]
        return queue_node, ["queue"]
    if args.victim == "raft-leader" and raft_leader in workers:
        victim = raft_leader
    elif args.victim == "active-raft-leader":
        victim = queue_node
    else:
        victim = workers[(number - 1) % len(workers)]
    runs = {"web": web_node == victim, "queue": queue_node == victim}
    return victim, [m for m in ("web", "queue") if runs[m]]


async def lead_from(
    cluster: LocalCluster, store: Store, raft: RaftWatch, target: str
) -> str | None:
    """Hand raft leadership to `target` (the worst case: the active's node
    leads raft; the leader agent would move it away within CHECK_EVERY)."""
    assert isinstance(store, EtcdStore)

    async def moved() -> bool:
        now = await raft.leader()
        if now == target:
            return True
        if now is not None:
            await store.move_raft_leader(f"{cluster.addresses[now]}:{cluster.base}", target)
        return False

    await wait_for(f"raft leadership on {target}", moved, 20, interval=0.1)
    return target


async def run(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    store, spec = store_of(cluster)
    workers = [n.name for n in spec.nodes if not n.witness]
    raft = RaftWatch(cluster)
    rounds: list[Round] = []
    try:
        started = time.monotonic()
        view = await wait_whole(cluster, store, spec, 90)
        print(f"cluster whole after {time.monotonic() - started:.1f}s", file=sys.stderr)
        counts = {"web": 0, "queue": 0}
        limit = 2 * args.kills + 2 if args.victim == "services" else args.kills
        for number in range(1, limit + 1):
            if args.victim == "services" and min(counts.values()) >= args.kills:
                break
            if number > 1:
                await wait_whole(cluster, store, spec, 90)
                await asyncio.sleep(args.settle)
                view = await wait_whole(cluster, store, spec, 90)
            services = {s.name: s for s in view.services}
            old_holder = services["queue"].active
            assert old_holder is not None
            raft_leader = await raft.leader()
            victim, measures = choose(args, view, counts, number, raft_leader, workers)
            if args.victim == "active-raft-leader" and raft_leader != victim:
                raft_leader = await lead_from(cluster, store, raft, victim)
            r = Round(
                round=number,
                victim=victim,
                measures=measures,
                was_leader=view.leader == victim,
                was_etcd_leader=raft_leader == victim,
                old_active=old_holder,
                old_token=services["queue"].fencing_token,
            )
            with contextlib.suppress(StoreError):
                record = await store.get(node_key(victim))
                r.victim_lease = record.lease if record is not None else 0
                if r.victim_lease:
                    assert isinstance(store, EtcdStore)
                    r.lease_ttl_before = await store.lease_time_to_live(r.victim_lease)
            t0, r.t0_wall = kill(cluster, victim)
            await measure(store, r, t0, args.poll, args.timeout, old_holder, raft)
            if not r.was_etcd_leader:
                r.raft_leader_after = raft_leader
            cluster.start(victim)
            for m in measures:
                counts[m] += 1
            if "queue" in measures and r.queue_active is None:
                r.notes.append("queue never active elsewhere within the timeout")
            if "web" in measures and r.web_healthy is None:
                r.notes.append("web never healthy elsewhere within the timeout")
            rounds.append(r)
            print(progress(r), file=sys.stderr)
        view = await wait_whole(cluster, store, spec, 90)
        events = await read_events(store, 0)
    finally:
        await store.close()
    tokens = attribute(rounds, events)
    return {"rounds": rounds, "tokens": tokens}


def attribute(rounds: list[Round], events: list[Event]) -> list[tuple[int, str]]:
    """Give each round the journal events between its kill and the next one;
    returns (fencing token, new active) of every queue promotion, in time order."""
    if rounds and (not events or events[0].time > rounds[0].t0_wall):
        for r in rounds:
            r.notes.append("journal pruned: events of the first rounds missing")
    tokens = []
    for event in events:
        if event.kind in ("failover", "promoted") and event.subject == "queue":
            tokens.append((int(event.data["token"]), str(event.data.get("new_active"))))
    for r, after in zip(rounds, [*rounds[1:], None], strict=True):
        end = after.t0_wall if after else float("inf")
        mine = [e for e in events if r.t0_wall <= e.time < end]
        for e in mine:
            at = round(e.time - r.t0_wall, 3)
            if e.kind in ("failover", "promoted") and e.subject == "queue":
                r.queue_promotions.append(
                    {"t": at, "kind": e.kind, "node": e.node, "token": e.data.get("token"),
                     "old_active": e.data.get("old_active"), "new_active": e.data.get("new_active")}
                )  # fmt: skip
            elif e.kind == "demoted" and e.reason == "lease at risk":
                r.fenced.append(f"{e.subject}@{e.node} {at:.2f}s")
            elif e.kind == "leader":
                r.leader_elected.append(f"{e.subject} {at:.2f}s")
            elif e.kind == "node-dead" and e.subject == r.victim and r.revoked_early is None:
                r.revoked_early = at
            elif e.kind == "moved" and e.subject.startswith("web") and r.web_moved is None:
                r.web_moved = at
        if "queue" in r.measures:
            moved = [p for p in r.queue_promotions if p["node"] != r.victim]
            if not moved:
                r.notes.append("no failover event in the journal")
                continue
            r.journal_failover, r.journal_token = moved[0]["t"], moved[0]["token"]
            if r.new_token is not None and r.journal_token != r.new_token:
                r.notes.append(f"journal token {r.journal_token} != lock token {r.new_token}")
            if moved[0]["old_active"] != r.old_active:
                r.notes.append(
                    f"journal says old_active={moved[0]['old_active']}, it was {r.old_active}"
                )
    return tokens


def self_fencing(cluster: LocalCluster, rounds: list[Round]) -> None:
    """From the agents' logs: which surviving agents found their lease at risk
    (renewals failing for SELF_FENCE_AFTER) after each kill, and when a
    surviving queue active was fenced, how long the queue then had no active."""
    at_risk = log_lines(cluster, "demoting before it can expire")
    fences = log_lines(cluster, "fencing the active (lease at risk)")
    for r, after in zip(rounds, [*rounds[1:], None], strict=True):
        end = after.t0_wall if after else float("inf")
        for when, node, _ in at_risk:
            if r.t0_wall - 0.01 <= when < end and node != r.victim:
                r.lease_at_risk.append(f"{node} {when - r.t0_wall:.2f}s")
        for when, node, line in fences:
            if r.t0_wall - 0.01 <= when < end and node != r.victim and "queue-" in line:
                fenced_at = when - r.t0_wall
                back = [p["t"] for p in r.queue_promotions if p["t"] >= fenced_at]
                r.queue_gap = round(back[0] - fenced_at, 3) if back else None
                r.notes.append(
                    f"survivor {node} fenced the queue's active at {fenced_at:.2f}s; "
                    f"active again after {fmt(r.queue_gap)}s"
                )
                break


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def progress(r: Round) -> str:
    was = ", ".join(
        x for x, on in (("leader", r.was_leader), ("etcd leader", r.was_etcd_leader)) if on
    )
    return (
        f"round {r.round:2d} kill {r.victim}{f' ({was})' if was else ''} for "
        f"{'+'.join(r.measures) or 'nothing'}: raft leader {fmt(r.raft_elected)}s, "
        f"revoked {fmt(r.revoked_early)}s, lease gone {fmt(r.node_gone)}s, web healthy "
        f"{fmt(r.web_healthy)}s, queue active {fmt(r.queue_active)}s "
        f"(role {fmt(r.queue_role_active)}s)" + (f"  [{'; '.join(r.notes)}]" if r.notes else "")
    )


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile: with fewer than 20 samples, the maximum."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None, "min": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "p95": round(p95(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
    }


PHASES = (
    ("raft leader elected", "raft_elected"),
    ("lease revoked early", "revoked_early"),
    ("victim's node key gone", "node_gone"),
    ("  lease outlived its TTL by", "lease_overrun"),
    ("queue lock taken elsewhere", "queue_active"),
    ("queue role=active published", "queue_role_active"),
    ("web placed elsewhere (journal)", "web_moved"),
    ("web healthy elsewhere", "web_healthy"),
    ("failover (last service back)", "failover"),
)


def phases(rounds: list[Round]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Each phase's stats over the rounds whose victim led raft, and the others."""
    out = {}
    for label, attr in PHASES:
        out[label.strip()] = {
            who: stats(
                [
                    v
                    for r in rounds
                    if r.was_etcd_leader == led and (v := getattr(r, attr)) is not None
                ]
            )
            for who, led in (("raft_leader_killed", True), ("raft_leader_survived", False))
        }
    return out


def column(
    rounds: list[Round], attr: str, service: str, etcd_leader: bool | None = None
) -> list[Any]:
    return [
        getattr(r, attr)
        for r in rounds
        if service in r.measures
        and getattr(r, attr) is not None
        and (etcd_leader is None or r.was_etcd_leader == etcd_leader)
    ]


def timeline_table(rounds: list[Round]) -> str:
    """One row per kill: each phase in seconds from the SIGKILL."""
    rows = [
        [
            r.round,
            r.victim + (" (raft leader)" if r.was_etcd_leader else ""),
            fmt(r.raft_elected),
            " ".join(f"{t:.2f}:{ttl}" for t, ttl in r.lease_ttl_seen) or "-",
            fmt(r.revoked_early),
            fmt(r.node_gone),
            fmt(r.lease_overrun),
            fmt(r.queue_active),
            fmt(r.queue_role_active),
            fmt(r.web_moved),
            fmt(r.web_healthy),
            fmt(r.failover),
        ]
        for r in rounds
    ]
    headers = ["round", "killed", "raft elected", "lease TTL seen (t:s)", "revoked"]
    headers += ["key gone", "over TTL", "lock taken", "promoted", "web placed", "web ok"]
    headers += ["failover"]
    return "timeline per kill (s from SIGKILL)\n" + table(headers, rows)


def phase_table(by_phase: dict[str, dict[str, dict[str, float | int | None]]]) -> str:
    rows = []
    for label, _ in PHASES:
        cells = by_phase[label.strip()]
        killed, survived = cells["raft_leader_killed"], cells["raft_leader_survived"]
        rows.append(
            [label, f"{fmt(killed['median'])} (n={killed['n']})",
             f"{fmt(survived['median'])} (n={survived['n']})"]
        )  # fmt: skip
    return "median of each phase, s from SIGKILL\n" + table(
        ["phase", "raft leader killed", "raft leader survived"], rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="samples of each measurement")
    parser.add_argument("--quick", action="store_true", help="3 kills of each (about 1 minute)")
    parser.add_argument("--poll", type=float, default=0.025, help="store poll interval (s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="limit per failover (s)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="pause once whole, before the next kill (s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the cluster's logs and data")
    parser.add_argument(
        "--victim",
        choices=("services", "raft-leader", "rotate", "active-raft-leader"),
        default="services",
        help="whom to kill (see above); with raft-leader or rotate, --kills is the rounds",
    )
    parser.add_argument("--witness", action="store_true", help="2 workers + 1 witness (n3)")
    parser.add_argument("--label", default="", help="a note kept in the JSON (what was changed)")
    args = parser.parse_args()
    if args.quick:
        args.kills = 3
    started = time.monotonic()
    opened = witness_cluster if args.witness else local_cluster
    with opened(SERVICES, "failover", keep=args.keep) as cluster:
        outcome = asyncio.run(run(cluster, args))
        self_fencing(cluster, outcome["rounds"])
    elapsed = time.monotonic() - started
    rounds: list[Round] = outcome["rounds"]
    promotions: list[tuple[int, str]] = outcome["tokens"]
    tokens = [t for t, _ in promotions]

    summary = {
        "(a) web healthy elsewhere": stats(column(rounds, "web_healthy", "web")),
        "(a)  etcd leader survived": stats(column(rounds, "web_healthy", "web", False)),
        "(a)  etcd leader killed": stats(column(rounds, "web_healthy", "web", True)),
        "(b) queue lock elsewhere": stats(column(rounds, "queue_active", "queue")),
        "(b)  etcd leader survived": stats(column(rounds, "queue_active", "queue", False)),
        "(b)  etcd leader killed": stats(column(rounds, "queue_active", "queue", True)),
        "(b') new active role=active": stats(column(rounds, "queue_role_active", "queue")),
        "killed node's lease gone": stats([r.node_gone for r in rounds if r.node_gone]),
        "failover, all kills": stats([f for r in rounds if (f := r.failover) is not None]),
    }
    overall = summary["failover, all kills"]
    sb_all = summary["(b) queue lock elsewhere"]
    p95_ok = sb_all["p95"] is not None and sb_all["p95"] < GOAL_P95
    sa, sb = summary["(a) web healthy elsewhere"], summary["(b) queue lock elsewhere"]
    killed = summary["(b)  etcd leader killed"]
    survived = summary["(b)  etcd leader survived"]
    missed_a = sum(1 for r in rounds if "web" in r.measures and r.web_healthy is None)
    missed_b = sum(1 for r in rounds if "queue" in r.measures and r.queue_active is None)
    increasing = all(
        x < y or (x == y and a == b) for (x, a), (y, b) in itertools.pairwise(promotions)
    )
    resumes = sum(1 for (x, a), (y, b) in itertools.pairwise(promotions) if x == y and a == b)
    spurious = [r.round for r in rounds if r.spurious]
    gaps = [r.queue_gap for r in rounds if r.spurious and r.queue_gap is not None]
    fenced = [r.round for r in rounds if r.lease_at_risk]
    ok = sb["median"] is not None and sb["median"] < GOAL_B and not missed_b

    result = {
        "bench": NAME,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kills": len(rounds),
        "elapsed_s": round(elapsed, 1),
        "timings": timings(),
        "poll_interval_s": args.poll,
        "label": args.label,
        "victim_choice": args.victim,
        "witness": args.witness,
        "load_average": os.getloadavg(),
        "goal": {"active_passive_median_s": GOAL_B, "active_passive_p95_s": GOAL_P95},
        "summary": {" ".join(k.split()): v for k, v in summary.items()},
        "phases": phases(rounds),
        "p95_goal_met": p95_ok,
        "missed": {"web": missed_a, "queue": missed_b},
        "fencing_tokens": tokens,
        "fencing_tokens_increase_on_every_change": increasing,
        "resumes_with_same_token": resumes,
        "rounds_with_self_fencing": fenced,
        "rounds_with_survivor_active_fenced": spurious,
        "survivor_active_fenced_gaps_s": gaps,
        "goal_met": ok,
        "rounds": [asdict(r) for r in rounds],
    }
    path = write_result(NAME, result)

    rows = [
        [
            r.round,
            r.victim,
            "+".join(r.measures),
            ",".join(
                x for x, on in (("leader", r.was_leader), ("etcd-leader", r.was_etcd_leader)) if on
            )
            or "-",
            fmt(r.node_gone),
            fmt(r.web_healthy),
            fmt(r.queue_active),
            fmt(r.queue_role_active),
            fmt(r.journal_failover),
            r.journal_token or "-",
            len(r.lease_at_risk) or "-",
            fmt(r.queue_gap) if r.spurious else "-",
        ]
        for r in rounds
    ]
    headers = ["round", "killed", "measured", "victim was", "lease gone s", "(a) web s"]
    headers += ["(b) active s", "role active s", "journal s", "token", "self-fenced", "no active s"]
    print(table(headers, rows))
    print()
    print(timeline_table(rounds))
    print()
    print(phase_table(result["phases"]))
    print()
    print(
        table(
            ["time from SIGKILL", "n", "median s", "p95 s", "max s", "min s"],
            [
                [k, v["n"], fmt(v["median"]), fmt(v["p95"]), fmt(v["max"]), fmt(v["min"])]
                for k, v in summary.items()
            ],
        )
    )
    print(
        f"timings: agent defaults (lease TTL {defaults.LEASE_TTL:g}s, keepalive "
        f"{defaults.KEEPALIVE_INTERVAL:g}s, self-fence after {defaults.SELF_FENCE_AFTER:g}s; "
        f"etcd heartbeat {defaults.STORE_HEARTBEAT_MS}ms, election "
        f"{defaults.STORE_ELECTION_TIMEOUT_MS}ms); service checks {CHECK}; "
        f"store polled every {args.poll * 1000:g}ms"
    )
    print(
        "fencing tokens of the queue's promotions "
        + " ".join(
            str(t) if i == 0 else {-1: "> ", 0: "= ", 1: "< "}[(t > p) - (t < p)] + str(t)
            for i, (t, p) in enumerate(zip(tokens, [0, *tokens], strict=False))
        )
        + (
            ": strictly increasing on every change of active"
            + (f" ({resumes} resumed by the same active, same token)" if resumes else "")
            if increasing
            else ": NOT STRICTLY INCREASING"
        )
    )
    if fenced or spurious:
        print(
            f"surviving agents self-fenced (lease renewals failing for "
            f"{defaults.SELF_FENCE_AFTER:g}s) in rounds {fenced or '-'}; the queue's active "
            f"was fenced and re-promoted though its node was not killed in rounds "
            f"{spurious or '-'}"
            + (f" (no active for {', '.join(f'{g:.2f}s' for g in gaps)})" if gaps else "")
        )
    if missed_a or missed_b:
        print(f"missed: web {missed_a}, queue {missed_b} (no failover within {args.timeout:g}s)")
    print(f"result: {path.relative_to(ROOT)}")
    print(
        f"failover over {len(rounds)} kills: replicated healthy elsewhere median "
        f"{fmt(sa['median'])}s max {fmt(sa['max'])}s (n={sa['n']}); active-passive active "
        f"elsewhere median {fmt(sb['median'])}s max {fmt(sb['max'])}s (n={sb['n']}) "
        f"(goal < {GOAL_B:g}s median: {'met' if ok else 'NOT met'}); with the etcd leader "
        f"killed ({killed['n']} of {sb['n']}) median {fmt(killed['median'])}s, else "
        f"{fmt(survived['median'])}s; bench took {elapsed:.0f}s"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"(b) active-passive failover p95 over all {sb_all['n']} kills {fmt(sb_all['p95'])}s "
        f"(goal < {GOAL_P95:g}s: {'met' if p95_ok else 'NOT met'}); with (a), the last service "
        f"back: p95 {fmt(overall['p95'])}s, median {fmt(overall['median'])}s; "
        f"victims: {args.victim}{', 2 workers + witness' if args.witness else ''}; "
        f"load average {load}"
    )
    return 0 if increasing and not missed_a and not missed_b else 1


if __name__ == "__main__":
    sys.exit(main())
