"""Requests lost when a backend node is killed under load, through the gateway.

A 3-node cluster (agents + embedded etcd on 127.0.0.1-3, the cluster-test
harness) per engine, set up like tests/cluster/test_gateway.py: service `web`
(tests/cluster/apps/whoami.py, a keep-alive HTTP server answering with its
instance name), 2 replicas placed by label on n2 and n3, route /web, http
check every 200 ms (rise 1, fall 2). Unlike the test, `allow_colocate: true`,
so that the killed instance can be replaced on the surviving backend node.

Each run: a client thread sends --requests sequential GETs (httpx, keep-alive,
5 s timeout) to http://127.0.0.1:<n1 gateway>/web/; once half are sent, the
agent of a node running one of the two instances (n2 in odd runs, n3 in even
ones) is SIGKILLed (its instances die with it). Per run:

  failures      non-200 answers and transport errors
  longest gap   between two successful responses, over the whole run
  replaced      from the kill until the gateway answers from the killed
                instance again (now running on the surviving node); the
                client keeps probing after its last request, up to --timeout

Then the agent is restarted and the bench waits until the cluster is whole:
3 nodes up, web 2/2 on two different nodes (when the replacement stayed next to
the survivor, `ninefold scale web 1` then `2` spreads them again), both
answering through the gateway.

Goal (DESIGN.md section 7): 0 failed idempotent requests (seed 000 lost 40 of
5000); traffic off a dead instance under 0.5 s.

    .venv/bin/python bench/failover_loss.py [--runs 5] [--requests 5000] [--engine both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

import httpx
import psutil
from _cluster import PY, ROOT, etcd_leader, local_cluster, table, write_result

from ninefold.gateway.haproxy import haproxy_available
from tests.cluster.harness import LocalCluster, until

NAME = "failover_loss"
GOAL_GAP = 0.5  # s, traffic off a dead instance
SEED_LOSS = "40 of 5000 (seed 000)"
WHOAMI = ROOT / "tests" / "cluster" / "apps" / "whoami.py"
CHECK = "interval: 200ms, rise: 1, fall: 2"
ORPHAN_AFTER = 2.0  # s: the killed agent's children must be gone by then


def services_yaml(engine: str) -> str:
    return f"""gateway: {{engine: {engine}}}
services:
  web:
    command: [{PY}, {WHOAMI}, "{{address}}", "{{port}}"]
    replicas: 2
    route: {{http: /web}}
    check: {{http: /, {CHECK}}}
    placement: {{constraints: {{role: backend}}, allow_colocate: true}}
    balance: {{drain_timeout: 5s}}
"""


def backend_cluster(engine: str, keep: bool) -> contextlib.AbstractContextManager[LocalCluster]:
    """The test_gateway cluster: n2 and n3 labelled role=backend; stopped afterwards."""
    labels = {"n2": {"role": "backend"}, "n3": {"role": "backend"}}
    return local_cluster(services_yaml(engine), f"loss-{engine}", keep, labels)


def gateway_url(c: LocalCluster) -> str:
    return f"http://{c.addresses['n1']}:{c.base + 3}/web/"


def check_agents(c: LocalCluster) -> None:
    for node, proc in c.procs.items():
        if proc.poll() is not None:
            tail = c.log_path(node).read_text(errors="replace").splitlines()[-12:]
            raise RuntimeError(f"agent {node} exited ({proc.returncode}):\n" + "\n".join(tail))


def routed(c: LocalCluster, names: int = 2) -> set[str] | None:
    """The instances answering through n1's gateway, once there are `names` of them."""
    seen = set()
    with httpx.Client(timeout=2) as client:
        for _ in range(4 * names):
            r = client.get(gateway_url(c))
            if r.status_code == 200:
                seen.add(r.text.split()[0])
    return seen if len(seen) == names else None


def web_placement(c: LocalCluster) -> dict[str, str]:
    """instance -> node of web's running, healthy instances."""
    check_agents(c)
    return c.serving("web")


def wait_whole(c: LocalCluster, timeout: float) -> tuple[dict[str, str], list[str]]:
    """3 nodes up, web 2/2 on 2 nodes, both routed; returns the placement and
    what had to be done for it."""
    done: list[str] = []

    def nodes_up() -> bool:
        check_agents(c)
        return all(n["state"] == "up" for n in c.status()["nodes"])

    until("3 nodes up", nodes_up, timeout, 0.25)
    placement = until("web 2/2 healthy", lambda: len(web_placement(c)) == 2, timeout, 0.25)
    placement = web_placement(c)
    if len(set(placement.values())) < 2:
        done.append(f"respread ({', '.join(f'{i}@{n}' for i, n in sorted(placement.items()))})")
        for replicas in ("1", "2"):
            result = c.cli("scale", "web", replicas)
            if result.returncode != 0:
                raise RuntimeError(f"ninefold scale web {replicas}: {result.stderr.strip()}")
            want = int(replicas)

            def scaled(want: int = want) -> bool:
                p = web_placement(c)
                return len(p) == want and len(set(p.values())) == want

            until(f"web {replicas}/{replicas} on {replicas} node(s)", scaled, timeout, 0.25)
        placement = web_placement(c)
    until("both instances answering through n1's gateway", lambda: routed(c), timeout, 0.2)
    return placement, done


@dataclass
class Load:
    """Sequential GETs through one gateway; successes are timestamped."""

    url: str
    limit: int
    sent: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)
    answered_by: Counter[str] = field(default_factory=Counter)
    first_answer: dict[str, float] = field(default_factory=dict)
    """Per instance: its first answer after `watch_from` (monotonic)."""
    watch_from: float = float("inf")
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while self.sent < self.limit and not self.stop.is_set():
                self.sent += 1
                self.get(client)

    def get(self, client: httpx.Client) -> bool:
        try:
            r = client.get(self.url)
            ok, detail = r.status_code == 200, f"{r.status_code} {r.text[:80]!r}"
        except httpx.HTTPError as exc:
            ok, detail = False, repr(exc)
        now = time.monotonic()
        if not ok:
            self.failures.append((now, detail))
            return False
        name = r.text.split()[0]
        self.ok_times.append(now)
        self.answered_by[name] += 1
        if now >= self.watch_from and name not in self.first_answer:
            self.first_answer[name] = now
        return True

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread


@dataclass
class Run:
    engine: str
    run: int
    victim: str
    killed_instance: str
    survivor: str
    victim_was_leader: bool
    victim_was_etcd_leader: bool
    requests: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    failures_after_kill_s: list[float] = field(default_factory=list)
    longest_gap_s: float = 0.0
    longest_gap_at_s: float | None = None
    """When that gap began, relative to the kill."""
    replaced_s: float | None = None
    load_s: float = 0.0
    children_gone_s: float | None = None
    """When the processes the agent had started (etcd, the instance) were gone."""
    orphans: list[int] = field(default_factory=list)
    """Those still alive ORPHAN_AFTER seconds after the kill."""
    restore: list[str] = field(default_factory=list)
    restore_s: float | None = None
    answered_before_kill: dict[str, int] = field(default_factory=dict)
    """Successful answers per instance before the kill: how the gateway split them."""


def one_run(c: LocalCluster, engine: str, number: int, args: argparse.Namespace) -> Run:
    placement = web_placement(c)
    victim = sorted(set(placement.values()))[(number - 1) % 2]
    killed = next(i for i, n in sorted(placement.items()) if n == victim)
    leader = c.leader()
    etcd = asyncio.run(etcd_leader(c))
    r = Run(
        engine=engine,
        run=number,
        victim=victim,
        killed_instance=killed,
        survivor=next(i for i in placement if i != killed),
        victim_was_leader=leader == victim,
        victim_was_etcd_leader=etcd == victim,
    )
    load = Load(gateway_url(c), args.requests)
    started = time.monotonic()
    thread = load.start()
    until("half the requests sent", lambda: load.sent >= args.requests // 2, 120, 0.002)
    r.answered_before_kill = dict(sorted(load.answered_by.items()))
    proc = c.procs.pop(victim)
    children = [p.pid for p in c.descendants_of(proc.pid)]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # The killed instance may still answer until it is gone; from then on an
    # answer under its name comes from its replacement.
    deadline = t0 + ORPHAN_AFTER
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.005)
    r.orphans = [p for p in children if _alive(p)]
    r.children_gone_s = None if r.orphans else round(time.monotonic() - t0, 3)
    load.watch_from = time.monotonic()
    thread.join(timeout=args.requests * 0.1 + 60)
    if thread.is_alive():
        load.stop.set()
        thread.join(timeout=30)
    load_end = time.monotonic()
    r.load_s = round(load_end - started, 2)

    # keep probing, not counted, until the killed instance answers again
    if killed not in load.first_answer:
        deadline = t0 + args.timeout
        with httpx.Client(timeout=2) as client:
            while killed not in load.first_answer and time.monotonic() < deadline:
                load.get(client)
                time.sleep(0.01)
    if killed in load.first_answer:
        r.replaced_s = round(load.first_answer[killed] - t0, 3)

    # only what the counted requests saw
    counted = [t for t in load.ok_times if t <= load_end]
    failures = [(t, d) for t, d in load.failures if t <= load_end]
    r.requests = load.sent
    r.failures = len(failures)
    r.failure_samples = [f"{t - t0:+.3f}s {d}" for t, d in failures[:5]]
    r.failures_after_kill_s = [round(t - t0, 3) for t, _ in failures]
    gaps = [(b - a, a) for a, b in zip([started, *counted], counted, strict=False)]
    if gaps:
        gap, at = max(gaps)
        r.longest_gap_s, r.longest_gap_at_s = round(gap, 3), round(at - t0, 3)
    return r


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def engine_runs(engine: str, args: argparse.Namespace) -> tuple[list[Run], float]:
    started = time.monotonic()
    runs: list[Run] = []
    with backend_cluster(engine, args.keep) as c:
        placement, _ = wait_whole(c, 120)
        print(
            f"[{engine}] cluster whole after {time.monotonic() - started:.1f}s: "
            f"{', '.join(f'{i}@{n}' for i, n in sorted(placement.items()))}",
            file=sys.stderr,
        )
        for number in range(1, args.runs + 1):
            r = one_run(c, engine, number, args)
            restore_started = time.monotonic()
            c.start(r.victim)
            _, r.restore = wait_whole(c, 120)
            r.restore_s = round(time.monotonic() - restore_started, 1)
            runs.append(r)
            print(progress(r), file=sys.stderr)
    return runs, time.monotonic() - started


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress(r: Run) -> str:
    was = ", ".join(
        x for x, on in (("leader", r.victim_was_leader), ("etcd leader", r.victim_was_etcd_leader))
        if on
    )  # fmt: skip
    notes = [*r.failure_samples[:2], *r.restore]
    if r.orphans:
        notes.append(f"orphans {r.orphans}")
    return (
        f"[{r.engine}] run {r.run}: kill {r.victim}{f' ({was})' if was else ''} running "
        f"{r.killed_instance}: {r.failures} of {r.requests} failed, longest gap "
        f"{fmt(r.longest_gap_s, 3)}s, replaced after {fmt(r.replaced_s)}s, load {r.load_s:.1f}s, "
        f"whole again after {fmt(r.restore_s, 1)}s" + (f"  [{'; '.join(notes)}]" if notes else "")
    )


def summarize(engine: str, runs: list[Run], requests: int) -> str:
    gaps = [r.longest_gap_s for r in runs]
    replaced = [r.replaced_s for r in runs if r.replaced_s is not None]
    return (
        f"failover loss over {len(runs)} runs ({engine}): failures "
        f"{' '.join(str(r.failures) for r in runs)} of {requests} each; longest gap max "
        f"{fmt(max(gaps, default=None))}s (goal: 0 failed, traffic off the dead instance "
        f"< {GOAL_GAP:g}s; seed 000: {SEED_LOSS.removesuffix(' (seed 000)')}); replaced and "
        f"serving elsewhere median {fmt(statistics.median(replaced) if replaced else None)}s"
        + ("" if len(replaced) == len(runs) else f" ({len(runs) - len(replaced)} not replaced)")
    )


def main() -> int:
    has_haproxy = haproxy_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="kills per engine")
    parser.add_argument("--requests", type=int, default=5000, help="GETs per run")
    parser.add_argument(
        "--engine",
        choices=["builtin", "haproxy", "both"],
        default="both" if has_haproxy else "builtin",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="limit for the replacement to answer (s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the clusters' logs and data")
    args = parser.parse_args()
    engines = ["builtin", "haproxy"] if args.engine == "both" else [args.engine]
    notes = []
    if "haproxy" in engines and not has_haproxy:
        if args.engine == "haproxy":
            sys.exit("no haproxy binary (apt-get install haproxy)")
        engines.remove("haproxy")
    if args.engine == "builtin" and not has_haproxy:
        notes.append("haproxy engine skipped: no haproxy binary")

    started = time.monotonic()
    outcome: dict[str, list[Run]] = {}
    took: dict[str, float] = {}
    for engine in engines:
        outcome[engine], took[engine] = engine_runs(engine, args)
    elapsed = time.monotonic() - started

    all_runs = [r for runs in outcome.values() for r in runs]
    result: dict[str, Any] = {
        "bench": NAME,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "elapsed_s": round(elapsed, 1),
        "elapsed_per_engine_s": {e: round(t, 1) for e, t in took.items()},
        "requests_per_run": args.requests,
        "service_check": CHECK,
        "goal": {"failed_requests": 0, "traffic_off_dead_instance_s": GOAL_GAP},
        "notes": notes,
        "summary": {
            engine: {
                "failures": [r.failures for r in runs],
                "longest_gap_max_s": max((r.longest_gap_s for r in runs), default=None),
                "replaced_s": [r.replaced_s for r in runs],
            }
            for engine, runs in outcome.items()
        },
        "runs": [asdict(r) for r in all_runs],
    }
    path = write_result(NAME, result)
    rows = [
        [
            r.engine,
            r.run,
            f"{r.victim} ({r.killed_instance})",
            ",".join(
                x
                for x, on in (("leader", r.victim_was_leader), ("etcd", r.victim_was_etcd_leader))
                if on
            )
            or "-",
            f"{r.failures} / {r.requests}",
            fmt(r.longest_gap_s, 3),
            fmt(r.longest_gap_at_s, 3),
            fmt(r.replaced_s),
            len(r.orphans) or "-",
            fmt(r.restore_s, 1),
        ]
        for r in all_runs
    ]
    headers = ["engine", "run", "killed", "victim was", "failed", "longest gap s", "gap from s"]
    headers += ["replaced s", "orphans", "whole s"]
    print(table(headers, rows))
    for r in all_runs:
        for sample in r.failure_samples:
            print(f"  {r.engine} run {r.run} failure at {sample}")
        if r.orphans:
            print(f"  {r.engine} run {r.run}: processes of the killed agent alive: {r.orphans}")
    print(
        f"client: sequential GETs (httpx, keep-alive) through n1's gateway; the kill after "
        f"{args.requests // 2}; service check {CHECK}; gap from s: when the longest gap began, "
        f"relative to the kill; replaced s: until the killed instance answered again through "
        f"the gateway (from the surviving node)"
    )
    for note in notes:
        print(f"note: {note}")
    print(f"result: {path.relative_to(ROOT)}")
    for engine, runs in outcome.items():
        print(summarize(engine, runs, args.requests) + f"; took {took[engine]:.0f}s")
    return 1 if any(r.orphans for r in all_runs) else 0


if __name__ == "__main__":
    sys.exit(main())
