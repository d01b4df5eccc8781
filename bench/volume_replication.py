"""Replicated volume: initial seeding against rsync -a, mirror lag and the
active's CPU under load, catch-up after a standby was away, and acknowledged
writes lost on a planned switchover and on an unplanned failover.

Seeding (no cluster yet): a tree of --files files (1-4 kB of random bytes, 100
to a directory, 10,000 by default) in a temporary directory (--seed-dir),
copied to a new directory by plain `rsync -a SRC/ DST/` and by ninefold's
`push()` to a `VolumeListener` on 127.0.0.1: plain TCP, mutual TLS (node
certificates of a test CA), and as the mirror makes a first copy (with
rsync's progress reported, when push() takes `progress`). Two more copies say
where a difference comes from: rsync with push's options (RSYNC_ARGS:
--delete --partial-dir --stats --modify-window=-1), and the same in rsync's
remote mode through a plain pipe (`-e` a shell that runs the server here, no
relay, no TCP). After one untimed copy, --seed-rounds rounds of every copy
(the order rotated each round); the median wall time of each, its ratio to
rsync -a, and the CPU seconds of everything involved (the rsyncs, the pipe,
the listener relaying in this process).

Then one 3-node cluster (agents + embedded etcd on 127.0.0.1-3), an
active-passive `db` (cold standbys) whose process writes --rate small files
(512 B) a second and, in a second thread, --mb-rate MB a second of 100 kB
files into its replicated volume, fsyncing each and logging it outside the
volume once written (the acknowledgement). The phases:

- lag (--seconds): the bench lists both standbys' copies every 10 ms and
  records when each file acknowledged in the window first appears there (the
  lag; a file still missing 15 s after the window counts with the time it
  waited). Over the same window, the CPU of the active node's agent and of
  its transfers (the sending rsyncs and their pipes; psutil: the running ones
  sampled before and after, the ones that ended through the agent's
  children_user/children_system), as % of one core and per MB sent (the
  files written in the window, times the 2 copies: the payload, not rsync's
  file lists). The transfers received (count, median duration) are from the
  standbys' agent logs.
- offline (--offline, 60 s): one standby's agent (not the leader's, if it
  can be) is stopped while the writer goes on: SIGSTOP, the node hangs (its
  listener accepts connections but takes no transfer), then SIGCONT; or with
  --offline-mode kill, SIGKILL and the harness starts the agent again. The
  lag to the other standby meanwhile; then the catch-up: from the return
  until every file acknowledged before the return is in its copy, and the
  transfers into it until then (from its log).
- switchover: acknowledged writes of the old active missing on the new one.
- SIGKILL of the active's node: acknowledged writes missing on the next
  active, with the age of each at the kill.

Results go to bench/results/volume_replication.json. On a shared or small
machine the seeding times vary from run to run (file creation on the disk
most of all): look at every run's time, or seed on tmpfs (--seed-dir /dev/shm)
to compare the transfer channels without the disk.

    .venv/bin/python bench/volume_replication.py [--seconds 20] [--rate 50]
        [--mb-rate 1] [--offline 60] [--offline-mode stop|kill] [--files 10000]
        [--seed-rounds 5] [--seed-dir DIR] [--no-tls] [--seed-only] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

from _cluster import check_agents, local_cluster, log_lines, table, write_result
from _volume_load import (
    KINDS,
    WRITER,
    acks,
    cpu_between,
    cpu_sample,
    names,
    pct,
    seeding,
)

from tests.cluster.harness import LocalCluster

BIG = 100_000
"""Bytes of one big file."""


def spec(work: Path, rate: float, mb_rate: float) -> str:
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
              "{{instance}}", "{rate}", "{mb_rate}", "{BIG}"]
    volumes: {{data: {{replicate: continuous}}}}
"""


def active(c: LocalCluster) -> str | None:
    try:
        svc = next(s for s in c.status()["services"] if s["name"] == "db")
    except RuntimeError:  # not answering yet, or between two leaders
        return None
    return svc["active"] or None


def node_up(c: LocalCluster, node: str) -> bool:
    try:
        return any(n["name"] == node and n["state"] == "up" for n in c.status()["nodes"])
    except RuntimeError:
        return False


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


def measure_lag(
    c: LocalCluster, work: Path, nodes: list[str], seconds: float, drain: float = 15.0
) -> dict[str, Any]:
    """Lags of the files acknowledged in the next `seconds` to each of
    `nodes`' copies; polling goes on up to `drain` seconds after the window
    until they are all there."""
    seen: dict[str, dict[str, float]] = {n: {} for n in nodes}

    def poll() -> float:
        now = time.time()
        for node in nodes:
            mine = seen[node]
            for name in names(copy_dir(c, node)) - mine.keys():
                mine[name] = now
        return now

    start = time.time()
    end = start + seconds
    while poll() < end:
        time.sleep(0.01)
    window = {name: at for name, at in acks(work).items() if start <= at <= end}
    deadline = time.time() + drain
    now = poll()
    while now < deadline and any(window.keys() - seen[n].keys() for n in nodes):
        time.sleep(0.01)
        now = poll()
    lags: dict[str, list[float]] = {kind: [] for kind in KINDS}
    missing = 0
    for node in nodes:
        for name, at in window.items():
            got = seen[node].get(name)
            if got is None:
                missing += 1
            lags[name[0]].append(max(0.0, (got or now) - at))
    every = sorted(lags["w"] + lags["b"])
    return {
        "start": start,
        "end": end,
        "all": every,
        "by_kind": {kind: sorted(values) for kind, values in lags.items()},
        "missing": missing,
        "written": window,
    }


def kill_or_stop(c: LocalCluster, node: str, mode: str) -> None:
    if mode == "stop":
        os.kill(c.procs[node].pid, signal.SIGSTOP)
    else:
        c.kill(node)


def resume(c: LocalCluster, node: str, mode: str) -> None:
    if mode == "stop":
        os.kill(c.procs[node].pid, signal.SIGCONT)
    else:
        c.start(node)


def catch_up(c: LocalCluster, work: Path, node: str, back: float, timeout: float) -> dict[str, Any]:
    """Seconds from `back` until every file acknowledged by then is in
    `node`'s copy."""
    wanted = {name for name, at in acks(work).items() if at <= back}
    behind = wanted - names(copy_dir(c, node))
    deadline = back + timeout
    while True:
        now = time.time()
        missing = wanted - names(copy_dir(c, node))
        if not missing or now > deadline:
            break
        time.sleep(0.02)
    return {
        "seconds": round(now - back, 2) if not missing else None,
        "files_behind": len(behind),
        "mb_behind": round(sum(BIG if n.startswith("b-") else 512 for n in behind) / 1e6, 1),
        "still_missing": len(missing),
    }


RECEIVED = re.compile(r"volume db/data@\d+ received from \S+ in ([\d.]+) s")


def received(
    c: LocalCluster, node: str | None, after: float, until: float
) -> list[tuple[float, float]]:
    """(when it started, seconds) of the transfers of db's volume that `node`
    (every node if None) received completely and that ran at some time
    between `after` and `until`, from the agents' logs (debug level)."""
    found = []
    for when, where, line in log_lines(c, "received from"):
        match = RECEIVED.search(line)
        if match and (node is None or where == node):
            took = float(match.group(1))
            if when >= after and when - took <= until:
                found.append((when - took, took))
    return found


def lost_on(c: LocalCluster, work: Path, node: str, before: float) -> list[float]:
    """Ages (at `before`) of acknowledged writes missing on `node`'s copy."""
    have = names(copy_dir(c, node))
    return sorted(
        before - at for name, at in acks(work).items() if at < before and name not in have
    )


def r3(value: float | None) -> float | None:
    return None if value is None or value != value else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="lag window (20 s)")
    parser.add_argument("--rate", type=float, default=50.0, help="small files written per second")
    parser.add_argument(
        "--mb-rate", type=float, default=1.0, help="MB/s written besides, in 100 kB files"
    )
    parser.add_argument(
        "--offline", type=float, default=None, help="seconds a standby is away (60; 0: skip)"
    )
    parser.add_argument(
        "--offline-mode",
        choices=["stop", "kill"],
        default="stop",
        help="stop: SIGSTOP, then SIGCONT the standby's agent; kill: SIGKILL, then start it",
    )
    parser.add_argument(
        "--files", type=int, default=None, help="files of the seeding tree (10,000; 0: skip)"
    )
    parser.add_argument("--seed-rounds", type=int, default=None, help="runs of each copy (5)")
    parser.add_argument("--seed-dir", default=None, help="where the seeding tree goes (TMPDIR)")
    parser.add_argument("--no-tls", action="store_true", help="no TLS seeding variant")
    parser.add_argument("--seed-only", action="store_true", help="the seeding comparison only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="6 s lag window, 10 s offline, a 2,000-file tree seeded once (about 1.5 min)",
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    quick = {"seconds": 6.0, "offline": 10.0, "files": 2000, "seed_rounds": 1}
    full = {"seconds": 20.0, "offline": 60.0, "files": 10_000, "seed_rounds": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:  # given values win over --quick's
            setattr(args, key, value)

    started = time.monotonic()
    result: dict[str, Any] = {"writes_per_s": args.rate, "mb_per_s": args.mb_rate}
    tables: list[str] = []
    summary: list[str] = []
    if args.files:
        seed_phase(args, result, tables, summary)
    if not args.seed_only:
        cluster_phases(args, result, tables, summary)
    result["bench_s"] = round(time.monotonic() - started, 1)
    print("\n\n".join(tables))
    path = write_result("volume_replication", result)
    print(f"result: {path}")
    print("; ".join(summary) + f"; bench took {result['bench_s']}s")


def seed_phase(
    args: argparse.Namespace, result: dict[str, Any], tables: list[str], summary: list[str]
) -> None:
    work = Path(tempfile.mkdtemp(prefix="ninefold-volseed-", dir=args.seed_dir))
    try:
        seed = asyncio.run(seeding(work, args.files, args.seed_rounds, tls=not args.no_tls))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seeding"] = seed
    variants = seed["variants"]
    base = variants["rsync -a"]["wall_s"]
    rows = []
    for variant, got in variants.items():
        got["ratio"] = round(got["wall_s"] / base, 2) if base else None
        rows.append([
            variant,
            f"{got['wall_s']:.2f} s",
            f"{got['ratio']:.2f}x",
            f"{got['cpu_s']:.2f} s",
            " ".join(f"{w:.2f}" for w in got["runs_wall_s"]),
            ("within 1.2x" if variant.startswith("push") else "")
            + ("" if got["ok"] else f" FAILED: {got['error']}"),
        ])  # fmt: skip
    tables.append(
        f"initial seeding of {seed['files']} files ({seed['mb']} MB), median of "
        f"{args.seed_rounds} run(s), {work.parent}:\n"
        + table(["copy", "wall", "vs rsync -a", "CPU", "runs (s)", "goal"], rows)
    )
    plain = variants["push, plain TCP"]
    result.update({
        "seed_rsync_s": base,
        "seed_push_s": plain["wall_s"],
        "seed_ratio": plain["ratio"],
    })  # fmt: skip
    line = (
        f"seeding {seed['files']} files: push {plain['wall_s']:.2f}s vs rsync -a {base:.2f}s "
        f"= {plain['ratio']:.2f}x (goal 1.2x)"
    )
    if tls := variants.get("push, mutual TLS"):
        result["seed_push_tls_s"], result["seed_tls_ratio"] = tls["wall_s"], tls["ratio"]
        line += f", with TLS {tls['ratio']:.2f}x"
    summary.append(line)


def cluster_phases(
    args: argparse.Namespace, result: dict[str, Any], tables: list[str], summary: list[str]
) -> None:
    work = Path(tempfile.mkdtemp(prefix="ninefold-volbench-"))
    rows: list[list[str]] = []
    load = f"{args.rate:g} files/s + {args.mb_rate:g} MB/s"
    with local_cluster(spec(work, args.rate, args.mb_rate), "volbench", keep=args.keep) as c:
        first = wait("an active db", lambda: active(c), 60)
        node = first.split("/")[0]
        standbys = [n for n in c.addresses if n != node]
        wait("writes", lambda: len(acks(work)) > 20, 30)
        time.sleep(2.0)  # both copies seeded

        # -- lag, and the CPU of the active's node ------------------------------------------
        pid = c.procs[node].pid
        cpu0 = cpu_sample(pid)
        lag = measure_lag(c, work, standbys, args.seconds)
        cpu1 = cpu_sample(pid)  # after the drain: the window's files have all been sent
        cpu = cpu_between(cpu0, cpu1)
        transfers = received(c, None, lag["start"], lag["end"])
        payload = 2 * sum(BIG if n.startswith("b-") else 512 for n in lag["written"])
        mb = payload / 1e6
        total = cpu["agent"] + cpu["transfers"]
        lags, by_kind = lag["all"], lag["by_kind"]
        result.update({
            "lag_samples": len(lags),
            "lag_p50_s": r3(pct(lags, 0.5)),
            "lag_p99_s": r3(pct(lags, 0.99)),
            "lag_max_s": r3(max(lags)) if lags else None,
            "lag_missing": lag["missing"],
            "lag_small_p50_s": r3(pct(by_kind["w"], 0.5)),
            "lag_small_p99_s": r3(pct(by_kind["w"], 0.99)),
            "lag_big_p50_s": r3(pct(by_kind["b"], 0.5)),
            "lag_big_p99_s": r3(pct(by_kind["b"], 0.99)),
            "transfers": len(transfers),
            "transfer_p50_s": r3(pct([s for _, s in transfers], 0.5)),
            "sent_payload_mb": round(mb, 2),
            "cpu_window_s": round(cpu["seconds"], 2),
            "cpu_agent_s": round(cpu["agent"], 2),
            "cpu_transfers_s": round(cpu["transfers"], 2),
            "cpu_pct_of_core": round(100 * total / cpu["seconds"], 1),
            "cpu_s_per_mb_sent": round(total / mb, 3) if mb else None,
        })  # fmt: skip
        rows += [
            [f"mirror lag p50, {load}", f"{result['lag_p50_s']} s", ""],
            [f"mirror lag p99, {load}", f"{result['lag_p99_s']} s",
             "< 1 s; seed 003 every 5 min, lsyncd 15 s"],
            ["  samples, max, not there at the end",
             f"{len(lags)}, {result['lag_max_s']} s, {lag['missing']}", ""],
            ["  512 B files p50 / p99", f"{result['lag_small_p50_s']} / "
             f"{result['lag_small_p99_s']} s", ""],
            ["  100 kB files p50 / p99", f"{result['lag_big_p50_s']} / "
             f"{result['lag_big_p99_s']} s", ""],
            ["  transfers received, median duration",
             f"{len(transfers)}, {result['transfer_p50_s']} s", ""],
            ["mirror CPU on the active's node", f"{result['cpu_pct_of_core']}% of a core", ""],
            ["  agent + transfers (rsync, pipe)",
             f"{cpu['agent']:.2f} + {cpu['transfers']:.2f} s in {cpu['seconds']:.1f} s", ""],
            ["  per MB sent (files written x 2 copies)",
             f"{result['cpu_s_per_mb_sent']} CPU-s/MB of {mb:.1f} MB", ""],
        ]  # fmt: skip
        summary.append(
            f"lag at {load}: p50 {result['lag_p50_s']}s p99 {result['lag_p99_s']}s "
            f"(goal p99 < 1s); mirror CPU {result['cpu_pct_of_core']}% of a core, "
            f"{result['cpu_s_per_mb_sent']} CPU-s/MB"
        )

        # -- a standby away, then its catch-up -----------------------------------------------
        if args.offline > 0:
            leader = c.leader()
            victim = next((n for n in standbys if n != leader), standbys[0])
            other = next(n for n in standbys if n != victim)
            away = time.time()
            kill_or_stop(c, victim, args.offline_mode)
            try:
                during = measure_lag(c, work, [other], args.offline, drain=0.0)
            finally:
                back = time.time()
                resume(c, victim, args.offline_mode)
            caught = catch_up(c, work, victim, back, timeout=max(120.0, 2 * args.offline))
            done = back + (caught["seconds"] or 0.0)
            wait(f"{victim} up again", lambda: node_up(c, victim), 60)
            time.sleep(1.0)  # the agent's log lines of the catch-up are written
            into = received(c, victim, back, done)
            how = "SIGSTOP" if args.offline_mode == "stop" else "SIGKILL + restart"
            result.update({
                "offline_mode": args.offline_mode,
                "offline_s": round(back - away, 1),
                "catchup_s": caught["seconds"],
                "catchup_files_behind": caught["files_behind"],
                "catchup_mb_behind": caught["mb_behind"],
                "catchup_transfers": [
                    {"started_s": round(start - back, 2), "took_s": took}
                    for start, took in into
                ],
                "offline_other_lag_p50_s": r3(pct(during["all"], 0.5)),
                "offline_other_lag_p99_s": r3(pct(during["all"], 0.99)),
                "offline_other_lag_max_s": r3(max(during["all"])) if during["all"] else None,
            })  # fmt: skip
            took = (
                f"{caught['seconds']} s"
                if caught["seconds"] is not None
                else f"NOT within the timeout ({caught['still_missing']} missing)"
            )
            rows += [
                [f"catch-up after {back - away:.0f} s away ({how})", took, ""],
                ["  behind at the return",
                 f"{caught['files_behind']} files, {caught['mb_behind']} MB", ""],
                ["  transfers into it until caught up (start after the return, took)",
                 ", ".join(f"{t['started_s']:+.2f} s, {t['took_s']:.2f} s"
                           for t in result["catchup_transfers"]) or "none logged", ""],
                ["  lag to the other standby meanwhile, p50 / p99 / max",
                 f"{result['offline_other_lag_p50_s']} / {result['offline_other_lag_p99_s']}"
                 f" / {result['offline_other_lag_max_s']} s", ""],
            ]  # fmt: skip
            summary.append(f"catch-up after {back - away:.0f}s away ({how}): {took}")
        check_agents(c)

        # -- planned switchover --------------------------------------------------------------
        first = wait("an active db", lambda: active(c), 30)
        api = f"http://{c.addresses['n1']}:{c.base + 2}"
        asked = time.time()
        httpx.post(f"{api}/v1/services/db/switchover", json={}, timeout=10).raise_for_status()
        second = wait("a new active", lambda: (a := active(c)) and a != first and a, 30)
        old = first.split("/")[1]
        have = names(copy_dir(c, second.split("/")[0]))
        switched_lost = [
            name
            for name in acks(work)
            if name.split("-", 1)[1].startswith(f"{old}-") and name not in have
        ]
        handover = time.time() - asked

        # -- SIGKILL of the active's node ----------------------------------------------------
        node2, instance2 = second.split("/")
        wait(
            "writes after the switchover",
            lambda: any(n.startswith(f"w-{instance2}-") for n in acks(work)),
            30,
        )
        time.sleep(2.0)
        killed_at = time.time()
        c.kill(node2)
        third = wait("an active after the kill", lambda: (a := active(c)) and a != second and a, 30)
        lost = lost_on(c, work, third.split("/")[0], killed_at)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    result.update({
        "switchover_lost": len(switched_lost),
        "switchover_s": round(handover, 2),
        "failover_lost": len(lost),
        "failover_lost_oldest_age_s": round(max(lost), 3) if lost else 0.0,
    })  # fmt: skip
    rows += [
        ["acked writes lost, switchover", str(len(switched_lost)), "0"],
        ["acked writes lost, SIGKILL",
         f"{len(lost)} (oldest {result['failover_lost_oldest_age_s']} s old)", "only the lag"],
    ]  # fmt: skip
    tables.append(table(["what", "measured", "goal / seeds"], rows))
    summary.append(f"lost on switchover {len(switched_lost)} (goal 0), on SIGKILL {len(lost)}")


if __name__ == "__main__":
    main()
