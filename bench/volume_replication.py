"""Replicated volume: mirror lag, and acknowledged writes lost on a planned
switchover and on an unplanned failover.

One 3-node cluster (agents + embedded etcd on 127.0.0.1-3), an active-passive
`db` (cold standbys) whose process writes --rate small files per second into
its replicated volume, fsyncing each and logging it outside the volume once
written (the acknowledgement). The bench polls both standbys' directories
every 10 ms and records when each acknowledged file first appears there: the
lag. Then it asks for a switchover and counts acknowledged writes missing on
the new active, then SIGKILLs the active's node and counts again, with the age
of each lost write at the kill.

    .venv/bin/python bench/volume_replication.py [--seconds 20] [--rate 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

from _cluster import local_cluster, table, write_result

from tests.cluster.harness import LocalCluster

WRITER = r"""
import os, sys, time, pathlib
volume, log = pathlib.Path(sys.argv[1]), open(sys.argv[2], "a")
me, rate = sys.argv[3], float(sys.argv[4])
n = 0
while True:
    name = volume / f"w-{me}-{n:06d}"
    with open(name, "w") as f:
        f.write("x" * 512)
        f.flush(); os.fsync(f.fileno())
    log.write(f"{name.name} {time.time()}\n"); log.flush()
    n += 1
    time.sleep(1.0 / rate)
"""


def spec(work: Path, rate: float) -> str:
    script = work / "writer.py"
    script.write_text(WRITER)
    (work / "acks").mkdir(exist_ok=True)
    return f"""
services:
  db:
    mode: active-passive
    replicas: 3
    standby: cold
    command: [{sys.executable}, {script}, "{{volume.data}}", "{work}/acks/{{instance}}.log",
              "{{instance}}", "{rate}"]
    volumes: {{data: {{replicate: continuous}}}}
"""


def acks(work: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for log in (work / "acks").glob("*.log"):
        for line in log.read_text().splitlines():
            name, _, at = line.partition(" ")
            if at:
                found[name] = float(at)
    return found


def active(c: LocalCluster) -> str | None:
    try:
        svc = next(s for s in c.status()["services"] if s["name"] == "db")
    except RuntimeError:  # not answering yet, or between two leaders
        return None
    return svc["active"] or None


def wait(what: str, probe: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def copy_dir(c: LocalCluster, node: str) -> Path:
    return c.data_dir(node) / "volumes" / "db" / "data"


def measure_lag(c: LocalCluster, work: Path, node: str, seconds: float) -> list[float]:
    others = [n for n in c.addresses if n != node]
    seen: dict[tuple[str, str], float] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.time()
        for other in others:
            for path in copy_dir(c, other).glob("w-*"):
                seen.setdefault((other, path.name), now)
        time.sleep(0.01)
    done = acks(work)
    lags = [
        at - done[name]
        for (_other, name), at in seen.items()
        if name in done and done[name] > time.time() - seconds - 1  # written during the window
    ]
    return sorted(max(0.0, lag) for lag in lags)


def lost_on(c: LocalCluster, work: Path, node: str, before: float) -> list[float]:
    """Ages (at `before`) of acknowledged writes missing on `node`'s copy."""
    have = {p.name for p in copy_dir(c, node).glob("w-*")}
    return sorted(
        before - at for name, at in acks(work).items() if at < before and name not in have
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="lag measurement window")
    parser.add_argument("--rate", type=float, default=50.0, help="files written per second")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="ninefold-volbench-"))
    started = time.monotonic()
    with local_cluster(spec(work, args.rate), "volbench", keep=args.keep) as c:
        first = wait("an active db", lambda: active(c), 60)
        node = first.split("/")[0]
        wait("writes", lambda: len(acks(work)) > 20, 30)
        lags = measure_lag(c, work, node, args.seconds)

        api = f"http://{c.addresses['n1']}:{c.base + 2}"
        asked = time.time()
        httpx.post(f"{api}/v1/services/db/switchover", json={}, timeout=10).raise_for_status()
        second = wait("a new active", lambda: (a := active(c)) and a != first and a, 30)
        old = first.split("/")[1]
        switched_lost = [
            name
            for name in acks(work)
            if name.startswith(f"w-{old}-")
            and name not in {p.name for p in copy_dir(c, second.split("/")[0]).glob("w-*")}
        ]
        handover = time.time() - asked

        node2 = second.split("/")[0]
        wait(
            "writes after the switchover",
            lambda: any(n.startswith(f"w-{second.split('/')[1]}-") for n in acks(work)),
            30,
        )
        time.sleep(2.0)
        killed_at = time.time()
        c.kill(node2)
        third = wait("an active after the kill", lambda: (a := active(c)) and a != second and a, 30)
        lost = lost_on(c, work, third.split("/")[0], killed_at)
    result = {
        "writes_per_s": args.rate,
        "lag_samples": len(lags),
        "lag_p50_s": round(pct(lags, 0.5), 3),
        "lag_p99_s": round(pct(lags, 0.99), 3),
        "lag_max_s": round(max(lags), 3) if lags else None,
        "switchover_lost": len(switched_lost),
        "switchover_s": round(handover, 2),
        "failover_lost": len(lost),
        "failover_lost_oldest_age_s": round(max(lost), 3) if lost else 0.0,
        "bench_s": round(time.monotonic() - started, 1),
    }
    print(
        table(
            ["what", "measured", "goal / seeds"],
            [
                ["mirror lag p50", f"{result['lag_p50_s']} s", ""],
                ["mirror lag p99", f"{result['lag_p99_s']} s (n={len(lags)})",
                 "< 1 s; seed 003 every 5 min, lsyncd 15 s"],
                ["acked writes lost, switchover", str(len(switched_lost)), "0"],
                ["acked writes lost, SIGKILL",
                 f"{len(lost)} (oldest {result['failover_lost_oldest_age_s']} s old)",
                 "only the lag"],
            ],
        )
    )  # fmt: skip
    path = write_result("volume_replication", result)
    print(f"result: {path}")
    print(
        f"volume mirror at {args.rate:g} files/s: lag p50 {result['lag_p50_s']}s "
        f"p99 {result['lag_p99_s']}s (goal p99 < 1s); lost on switchover "
        f"{len(switched_lost)} (goal 0), on SIGKILL {len(lost)}; bench took {result['bench_s']}s"
    )


if __name__ == "__main__":
    main()
