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

    .venv/bin/python bench/failover_time.py [--kills 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

from _cluster import (
    HTTP,
    ROOT,
    check_agents,
    etcd_leader,
    local_cluster,
    log_lines,
    store_of,
    table,
    wait_for,
    write_result,
)

from ninefold import defaults
from ninefold.spec import ClusterSpec
from ninefold.state.keys import NODES, STATUS, active_lock
from ninefold.state.reads import read_events
from ninefold.state.records import Event, InstanceStatus
from ninefold.state.view import ClusterView, read_view
from ninefold.store.base import Store, StoreError
from tests.cluster.harness import LocalCluster

NAME = "failover_time"
GOAL_B = 2.5  # s, median, unplanned active-passive failover (DESIGN.md section 7)
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
    notes: list[str] = field(default_factory=list)

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
        "service_check": CHECK,
    }


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


async def run(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    store, spec = store_of(cluster)
    rounds: list[Round] = []
    try:
        started = time.monotonic()
        view = await wait_whole(cluster, store, spec, 90)
        print(f"cluster whole after {time.monotonic() - started:.1f}s", file=sys.stderr)
        counts = {"web": 0, "queue": 0}
        for number in range(1, 2 * args.kills + 3):
            if min(counts.values()) >= args.kills:
                break
            if number > 1:
                await wait_whole(cluster, store, spec, 90)
                await asyncio.sleep(args.settle)
                view = await wait_whole(cluster, store, spec, 90)
            services = {s.name: s for s in view.services}
            web_node = next(i.node for i in view.instances if i.service == "web")
            old_holder = services["queue"].active
            assert old_holder is not None
            queue_node = old_holder.split("/", 1)[0]
            if web_node == queue_node:
                victim, measures = web_node, ["web", "queue"]
            elif counts["web"] < counts["queue"]:
                victim, measures = web_node, ["web"]
            else:
                victim, measures = queue_node, ["queue"]
            r = Round(
                round=number,
                victim=victim,
                measures=measures,
                was_leader=view.leader == victim,
                was_etcd_leader=await etcd_leader(cluster) == victim,
                old_active=old_holder,
                old_token=services["queue"].fencing_token,
            )
            t0, r.t0_wall = kill(cluster, victim)
            await measure(store, r, t0, args.poll, args.timeout, old_holder)
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
        f"{'+'.join(r.measures)}: lease gone {fmt(r.node_gone)}s, web healthy "
        f"{fmt(r.web_healthy)}s, queue active {fmt(r.queue_active)}s "
        f"(role {fmt(r.queue_role_active)}s)" + (f"  [{'; '.join(r.notes)}]" if r.notes else "")
    )


def stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
    }


def column(rounds: list[Round], attr: str, service: str, etcd_leader: bool | None = None) -> list:
    return [
        getattr(r, attr)
        for r in rounds
        if service in r.measures
        and getattr(r, attr) is not None
        and (etcd_leader is None or r.was_etcd_leader == etcd_leader)
    ]


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
    args = parser.parse_args()
    if args.quick:
        args.kills = 3
    started = time.monotonic()
    with local_cluster(SERVICES, "failover", keep=args.keep) as cluster:
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
    }
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
        "goal": {"active_passive_median_s": GOAL_B},
        "summary": {" ".join(k.split()): v for k, v in summary.items()},
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
    print(
        table(
            ["time from SIGKILL", "n", "median s", "max s", "min s"],
            [
                [k, v["n"], fmt(v["median"]), fmt(v["max"]), fmt(v["min"])]
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
    return 0 if increasing and not missed_a and not missed_b else 1


if __name__ == "__main__":
    sys.exit(main())
