"""The five seed systems, measured side by side with ninefold in one run.

Each seed document (../shared/seeds/) reports figures of the system it built.
This bench runs, in turn, the experiment that gives ninefold's figure for
each, and prints one table: seed, what was measured, the seed's figure,
ninefold's figure. Most experiments are the other benches of this folder, run
as subprocesses with short settings; their JSON results (bench/results/) are
read back. Seeds 001 and 003 run here, in the lab.

  000 MUSA framework   failover_loss.py (the split over 2 instances, requests
                       lost when a backend node dies), gateway_throughput.py
                       (p50 added per hop), agent_footprint.py (memory and
                       control traffic per node)
  001 STORM block      examples/ha-block.yaml in the lab: the active's node
                       killed (tests/lab/test_ha_block.py's measurement)
  002 Hydra            machine_replacement.py, scenarios S1-S5
  003 Raspberry Pi     examples/static-site.yaml in the lab: mirror lag and
                       the VIP's move when its holder dies
                       (tests/lab/test_static_site.py's measurement)
  004 Domain Registry  registry_scaling.py: req/s with 1, 2, 3 replicas

The lab experiments (001, 002, 003) need root; without it they are reported
as skipped. A seed whose experiment fails is reported with its error and the
others still run; the exit status is then 1.

    sudo .venv/bin/python bench/seeds.py [--seeds 000,001,002,003,004] [--readme]

`--readme` replaces the table in README.md (between the `seeds-table`
markers) with this run's, dated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._cluster import PY, RESULTS, write_result  # noqa: E402

NAME = "seeds"
README = ROOT / "README.md"
BEGIN, END = "<!-- seeds-table -->", "<!-- /seeds-table -->"


@dataclass
class Row:
    seed: str
    measured: str
    theirs: str
    ours: str


class Skipped(Exception):
    """An experiment this machine cannot run (e.g. the lab without root)."""


def run_bench(script: str, *args: str, timeout: float = 900.0) -> dict[str, Any]:
    """Run bench/<script>.py with `args`; its fresh JSON result."""
    path = RESULTS / f"{script}.json"
    started = time.time()
    print(f"--- {script} {' '.join(args)}", flush=True)
    done = subprocess.run(
        [PY, str(ROOT / "bench" / f"{script}.py"), *args], cwd=ROOT, timeout=timeout
    )
    if done.returncode != 0 and not path.exists():
        raise RuntimeError(f"bench/{script}.py exited {done.returncode}")
    if not path.exists() or path.stat().st_mtime < started:
        raise RuntimeError(f"bench/{script}.py wrote no result (exit {done.returncode})")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def need_root() -> None:
    if os.geteuid() != 0:
        raise Skipped("needs root (the lab)")


def f(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


# --- seed 000: MUSA -----------------------------------------------------------------------


def seed_000(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    loss = run_bench("failover_loss", "--runs", "1", "--requests", "5000", "--engine", "both")
    for run in loss["runs"]:
        split = run["answered_before_kill"]
        rows.append(
            Row(
                "000",
                f"split of requests over 2 instances ({run['engine']})",
                "500 / 500 of 1000",
                " / ".join(str(n) for n in split.values()) + f" of {sum(split.values())}",
            )
        )
        ok = run["requests"] - run["failures"]
        rows.append(
            Row(
                "000",
                f"a backend node killed mid-run ({run['engine']})",
                "4960 / 5000 ok (4990 with graceful reload)",
                f"{ok} / {run['requests']} ok, longest gap {run['longest_gap_s']:.2f} s",
            )
        )
    throughput = run_bench("gateway_throughput", "--duration", "5", "--warmup", "1")
    results = throughput["results"]
    direct = results["direct"]["p50_ms"]
    for engine in ("builtin", "haproxy"):
        if engine in results:
            added = results[engine]["p50_ms"] - direct
            rows.append(
                Row("000", f"p50 added per gateway hop ({engine})", "~7 ms", f"{added:.2f} ms")
            )
    footprint = run_bench("agent_footprint", "--quick")
    nodes = footprint["nodes"]
    rss = [n["sum_rss"] / 2**20 for n in nodes]
    rows.append(
        Row(
            "000",
            "memory per node (agent + store member RSS)",
            "150-200 MB",
            f"{min(rss):.0f}-{max(rss):.0f} MB",
        )
    )
    kbits = [n["traffic_kbit_s"]["payload"] for n in nodes]
    rows.append(
        Row(
            "000",
            "control traffic per node (TCP payload)",
            "~10 kbit/s (40 for 4 nodes)",
            f"{min(kbits):.0f}-{max(kbits):.0f} kbit/s",
        )
    )
    return rows


# --- seed 001: the HA building block ------------------------------------------------------


def seed_001(args: argparse.Namespace) -> list[Row]:
    """examples/ha-block.yaml in the lab (as tests/lab/test_ha_block.py runs it):
    20 notes through the VIP, the standby's copy holding them, then every
    process of the active's node killed; the time until the notes answer again
    through the VIP, how many are missing, when the notices arrived."""
    need_root()
    import tempfile

    from ninefold.lab import Lab
    from tests.lab import test_ha_block as block
    from tests.lab.conftest import UP_TIMEOUT

    here = Path(tempfile.mkdtemp(prefix="seed001-"))
    lab = Lab.up(
        block.lab_variant(here), progress=lambda line: print(line, flush=True), wait=UP_TIMEOUT
    )
    try:
        receiver = block.Receiver(lab)
        try:
            active, standby = block.until("db and its standby", lambda: block.serving(lab, "w"))
            block.until("the notes through the VIP", lambda: block.notes(lab) is not None)
            written = {block.post_note(lab, f"note {n}"): f"note {n}" for n in range(20)}
            block.until(
                "the standby's copy",
                lambda: all((block.copy_of(lab, standby) / f"{i}.note").exists() for i in written),
            )
            killed_at = time.monotonic()
            lab.kill(active)
            after = block.until("the notes through the VIP again", lambda: block.notes(lab))
            answered = time.monotonic() - killed_at
            block.until("the failover notice", lambda: receiver.notices("failover", service="db"))
            failover_notice = time.monotonic() - killed_at
            block.until("node-down", lambda: receiver.notices("node-down", node=active))
            down_notice = time.monotonic() - killed_at
            holders = lab.holders(block.DB_VIP)
        finally:
            receiver.close()
    finally:
        lab.down()
    missing = len(set(written) - set(after))
    theirs = "Pacemaker pair + quorum node (no figure)"
    return [
        Row("001", "active's node killed: the service answers again through its VIP", theirs,
            f"{answered:.2f} s, VIP on {', '.join(holders) or 'nobody'}"),
        Row("001", "notes lost in that failover (written, then mirrored, before the kill)",
            "DRBD: a coherent copy at any time (synchronous)",
            f"{missing} of {len(written)} (the mirror is asynchronous: lag ~0.1 s)"),
        Row("001", "notices: failover / node down (rule for: 5s)", "Zabbix triggers (no figure)",
            f"{failover_notice:.1f} s / {down_notice:.1f} s after the kill"),
    ]  # fmt: skip


# --- seed 002: the Hydra ------------------------------------------------------------------

HYDRA = {
    "S1": "~2 min (master + web servers)",
    "S2": "~33 min (a site, after controller loss)",
    "S3": "(no figure)",
    "S4": "(no figure)",
    "S5": "(no figure)",
}


def seed_002(args: argparse.Namespace) -> list[Row]:
    need_root()
    result = run_bench("machine_replacement", timeout=1200)
    rows = []
    for s in result["scenarios"]:
        if s.get("serve_s") is None:
            ours = "not serving: " + "; ".join(s.get("problems", []))[:80]
        else:
            ours = f"{s['serve_s']:.1f} s, {s['failed']}/{s['requests']} failed via gateway"
            if s["scenario"] == "S5" and s.get("refused"):
                ours += f", stolen cert refused on {len(s['refused'])} ports"
        rows.append(
            Row(
                "002",
                f"{s['scenario']} {s['title']}: fault to replacement serving",
                HYDRA.get(s["scenario"], "-"),
                ours,
            )
        )
    return rows


# --- seed 003: the Raspberry Pi web cluster -----------------------------------------------


def seed_003(args: argparse.Namespace) -> list[Row]:
    need_root()
    from ninefold.lab import Lab
    from tests.lab import test_static_site as site
    from tests.lab.conftest import UP_TIMEOUT

    started = time.monotonic()
    lab = Lab.up(site.EXAMPLE, progress=lambda line: print(line, flush=True), wait=UP_TIMEOUT)
    up_s = time.monotonic() - started
    try:
        nodes = site.poll("web 2/2", lambda: site.web_nodes(lab, lab.nodes[0]), 60.0)
        assert isinstance(nodes, tuple)
        source, copy = nodes
        lags = [
            site.mirror_lag(lab, source, copy, f"<h1>version {n}</h1>\n")
            for n in range(args.mirror_rounds)
        ]
        expected = f"<h1>version {args.mirror_rounds - 1}</h1>\n".encode()
        moves = [site.vip_move_after_kill(lab, expected) for _ in range(args.vip_rounds)]
    finally:
        lab.down()
    gaps = [m.gap for m in moves]
    return [
        Row(
            "003",
            f"mirror lag, a change in web-0's docroot to the other copy ({len(lags)} changes)",
            "up to 5 min (rsync from cron)",
            f"median {statistics.median(lags):.2f} s, max {max(lags):.2f} s",
        ),
        Row(
            "003",
            f"site unreachable through the VIP when its holder dies ({len(gaps)} kills)",
            "~3.6 s (keepalived defaults)",
            f"median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s, "
            f"{sum(m.failures for m in moves)} failed requests",
        ),
        Row("003", "3-node cluster from nothing to serving (lab up)", "-", f"{up_s:.1f} s"),
    ]


# --- seed 004: the Domain Registry --------------------------------------------------------


def seed_004(args: argparse.Namespace) -> list[Row]:
    result = run_bench("registry_scaling", "--quick", timeout=1200)
    rows = []
    for point in result["points"]:
        rows.append(
            Row(
                "004",
                f"registry req/s, GET/PUT mix, {point['replicas']} replica(s)",
                f"{point['seed_rps']} req/s (1 vCPU each)",
                f"{point['rps']:.0f} req/s, {point['cpu_ms_per_request']:.2f} CPU-ms/req",
            )
        )
    if result.get("read_p50_ms") is not None:
        rows.append(Row("004", "read latency p50", "~15 ms", f"{result['read_p50_ms']:.1f} ms"))
    return rows


SEEDS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "000": seed_000,
    "001": seed_001,
    "002": seed_002,
    "003": seed_003,
    "004": seed_004,
}


def markdown(rows: list[Row]) -> str:
    lines = ["| seed | measured | the seed's figure | ninefold |", "|---|---|---|---|"]
    lines += [f"| {r.seed} | {r.measured} | {r.theirs} | {r.ours} |" for r in rows]
    return "\n".join(lines)


def write_readme(table_md: str, date: str, took: float) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = f"\n{table_md}\n\nMeasured {date} by `bench/seeds.py` in {took / 60:.0f} min.\n"
    README.write_text(head + BEGIN + body + END + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(SEEDS), help="comma-separated")
    parser.add_argument("--mirror-rounds", type=int, default=5)
    parser.add_argument("--vip-rounds", type=int, default=3)
    parser.add_argument("--readme", action="store_true", help="put the table in README.md")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.seeds.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SEEDS]
    if unknown:
        parser.error(f"unknown seed(s) {', '.join(unknown)}; known: {', '.join(SEEDS)}")

    started = time.monotonic()
    rows: list[Row] = []
    failed: dict[str, str] = {}
    for seed in chosen:
        print(f"=== seed {seed}", flush=True)
        seed_started = time.monotonic()
        try:
            rows += SEEDS[seed](args)
        except Skipped as why:
            rows.append(Row(seed, "skipped", "-", str(why)))
        except Exception as exc:  # one seed's failure must not hide the others' figures
            traceback.print_exc()
            failed[seed] = f"{type(exc).__name__}: {exc}"
            rows.append(Row(seed, "FAILED", "-", failed[seed][:120]))
        print(f"=== seed {seed}: {time.monotonic() - seed_started:.0f} s", flush=True)
    took = time.monotonic() - started
    date = time.strftime("%Y-%m-%d")
    table_md = markdown(rows)
    print()
    print(table_md)
    print(f"\n{len(chosen)} seed(s) in {took:.0f} s; failed: {', '.join(failed) or 'none'}")
    write_result(
        NAME,
        {
            "bench": NAME,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "elapsed_s": round(took, 1),
            "rows": [asdict(r) for r in rows],
            "failed": failed,
        },
    )
    if args.readme:
        write_readme(table_md, date, took)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
