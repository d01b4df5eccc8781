"""Machines that heal, in the lab: Hydra's scenarios (seed 002) against a node pool.

A TLS lab (3 store nodes n1, n2, n3 in zones a, b, c; the recipe of
tests/lab/test_pools.py) with a pool `web` of 2 lab machines spread over
zones a, b and c (`replace_after: 3s`), a 2-replica `counter` service on
them behind the gateway, and a gateway VIP (10.97.0.10, prefer n1, n2, n3).
It runs `ninefold lab drill` S1 to S4 in order (ninefold.lab.drill), and
restores the lab between them (network healed, killed nodes started, the pool
back at its count and the service healthy):

  S1  a server down        SIGKILL every process of one pool machine
  S2  a site down          every node and machine of a zone killed
  S3  a zone down          a zone cut off (nftables) and left so
  S4  a zone isolated,     a zone cut off until its machine is replaced,
      then healed          then healed: no duplicate, the pool at its count
  S5  a compromised server `ninefold node quarantine` of one pool machine: its
                           copied certificate refused, the machine fenced and replaced

Per scenario: seconds from the fault to the victim's `node-lost`, its
`machine-fenced`, its replacement's `machine-created`, and to a replacement
running a healthy `counter` instance; requests through a gateway outside the
fault and through the VIP (every 20 ms, from the client namespace) and how
many failed; store writes through the API (every 0.5 s) that failed; samples
(every 100 ms) with the VIP on two nodes; the pool's machines at the end.

Goals: S1 under 15 s from the fault to a replacement serving (seed 002: 2 min
for a master plus web servers, 33 min for a site); 0 two-holder samples.

    sudo .venv/bin/python bench/machine_replacement.py [--scenarios S1,S2,S3,S4] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._cluster import table, write_result  # noqa: E402
from ninefold.lab import Lab, LabError  # noqa: E402
from ninefold.lab.drill import DrillReport, format_report, restore  # noqa: E402
from ninefold.lab.drill import run as drill  # noqa: E402
from ninefold.security.ca import create_ca, write_ca  # noqa: E402
from ninefold.security.certs import issue_node_files  # noqa: E402
from ninefold.spec import load_spec  # noqa: E402

EXAMPLES = ROOT / "examples"
VIP = "10.97.0.10"
GOAL_S1 = 15.0
SEED_002 = {"S1": "2 min (a master + web servers)", "S2": "33 min (a site)"}


def spec_text(ca: Path) -> str:
    return f"""\
cluster: hydra
nodes:
  - {{name: n1, address: 10.97.0.11, zone: a, store: true}}
  - {{name: n2, address: 10.97.0.12, zone: b, store: true}}
  - {{name: n3, address: 10.97.0.13, zone: c, store: true}}
security:
  tls: {{ca: "{ca}"}}
gateway:
  vip: {{address: {VIP}/24, prefer: [n1, n2, n3]}}
pools:
  web:
    provider: lab
    count: 2
    zones: [a, b, c]
    replace_after: 3s
    budget: {{replacements: 10, window: 10m}}
services:
  counter:
    command: [python3, {EXAMPLES}/services/counter.py, "{{address}}", "{{port}}"]
    replicas: 2
    placement: {{constraints: {{pool: web}}}}
    route: {{http: /counter}}
    check: {{http: /healthz, interval: 200ms, fall: 2, rise: 1}}
"""


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def build(work: Path) -> Lab:
    ca = create_ca("hydra")
    write_ca(ca, work / "ca.key", work / "ca.crt")
    spec_path = work / "hydra.yaml"
    spec_path.write_text(spec_text(work / "ca.crt"))
    spec = load_spec(spec_path)
    lab = Lab.up(spec_path, progress=say, wait=0, agents=False)
    try:
        for node in ("n1", "n2", "n3"):
            issue_node_files(ca, spec.node(node), lab.data_dir(node))
            lab.start(node)
        lab.wait_up(120, say, nodes=["n1", "n2", "n3"])
    except BaseException:
        lab.down()
        raise
    return lab


def row(r: DrillReport) -> list[Any]:
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    goal = f"< {GOAL_S1:g}" if r.scenario == "S1" else "-"
    return [
        f"{r.scenario} {r.title}",
        f"{' + '.join([*r.nodes_hit, *r.victims])} ({r.zone})",
        ", ".join(f"{n} ({z})" for n, z in r.replacements.items()) or "-",
        s(r.detect_s),
        s(r.fence_s),
        s(r.replace_s),
        s(r.serve_s),
        goal,
        SEED_002.get(r.scenario, "-"),
        f"{r.failed}/{r.requests}",
        f"{r.vip_failed}/{r.vip_requests}",
        f"{r.vip_doubles}/{r.vip_samples}",
        f"{r.store_failed}/{r.store_writes}",
        f"{len(r.machines)}/{r.count}",
        "ok" if r.ok else "FAILED",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="S1,S2,S3,S4,S5", help="comma-separated")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces): run it with sudo")
    wanted = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="ninefold-hydra-"))
    started = time.monotonic()
    print("building the lab ...", flush=True)
    lab = build(work)
    reports: list[DrillReport] = []
    errors: dict[str, str] = {}
    try:
        for i, scenario in enumerate(wanted):
            if i:
                print("restoring the lab ...", flush=True)
                restore(lab, progress=say)
            print(f"{scenario} ...", flush=True)
            try:
                report = drill(lab, scenario, progress=say)
            except LabError as exc:  # the lab was not whole: say so, go on with the next
                errors[scenario] = str(exc)
                print(f"{scenario}: could not run: {exc}", flush=True)
                continue
            for line in format_report(report):
                print(f"  {line}", flush=True)
            reports.append(report)
    finally:
        if args.keep:
            print(f"lab {lab.id} left up: ninefold lab down --lab {lab.id}", flush=True)
        else:
            lab.down()
            shutil.rmtree(work, ignore_errors=True)

    print(
        table(
            [
                "scenario",
                "lost",
                "replacement",
                "detect s",
                "fence s",
                "create s",
                "serve s",
                "goal s",
                "seed 002",
                "failed gw",
                "failed VIP",
                "two holders",
                "store failed",
                "machines",
                "",
            ],
            [row(r) for r in reports],
        )
    )
    s1 = next((r for r in reports if r.scenario == "S1"), None)
    summary = {
        "spec": {
            "pool": "web: lab, count 2, zones a b c, replace_after 3s",
            "service": "counter: 2 replicas behind the gateway",
            "vip": VIP,
        },
        "goal_s1_serve_s": GOAL_S1,
        "seed_002": SEED_002,
        "s1_serve_s": s1.serve_s if s1 else None,
        "failed_requests": sum(r.failed for r in reports),
        "failed_vip_requests": sum(r.vip_failed for r in reports),
        "two_holder_samples": sum(r.vip_doubles for r in reports),
        "samples": sum(r.vip_samples for r in reports),
        "store_writes_failed": sum(r.store_failed for r in reports),
        "all_ok": not errors and all(r.ok for r in reports),
        "seconds": round(time.monotonic() - started, 1),
        "errors": errors,
        "scenarios": [r.to_json() for r in reports],
    }
    path = write_result("machine_replacement", summary)
    print(
        f"S1 replacement serving {summary['s1_serve_s']} s after the kill (goal < {GOAL_S1:g} s; "
        f"seed 002: 2 min); failed requests {summary['failed_requests']} through a gateway, "
        f"{summary['failed_vip_requests']} through the VIP; two holders in "
        f"{summary['two_holder_samples']} of {summary['samples']} samples (goal 0); "
        f"{'every expectation met' if summary['all_ok'] else 'some expectations FAILED'} "
        f"-> {path}"
    )


if __name__ == "__main__":
    main()
