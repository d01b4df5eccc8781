"""Memory, idle CPU and control traffic of each node: its agent and its etcd member.

Starts a 3-node cluster (agents + embedded etcd on 127.0.0.1-3) with two small
HTTP services (http.server, default check timings):

  web    replicated, 2 replicas, http check
  queue  active-passive, 2 replicas, hot standby, tcp check

waits until both are healthy, lets it settle, then over an idle window:

  memory    RSS and USS (psutil memory_full_info) of the agent and of its etcd
            member, sampled every 2 s, the largest sample kept
  CPU       (user + system) CPU time used in the window / window, in % of one core
  traffic   TCP payload bytes (ss -tin: bytes_sent + bytes_received) on
            connections between processes of different nodes: agent <-> another
            node's etcd member, etcd <-> etcd. Connections inside a node (agent
            <-> own member, health checks) would not cross a network and are
            left out. A wire estimate adds 66 bytes of Ethernet/IP/TCP headers
            per segment. Only connections open at both ends of the window count.

Goal (DESIGN.md section 7): agent + store member under 120 MB per node (RSS,
i.e. what the node pays without sharing etcd's pages with other members), and
control traffic under 5 kbit/s per node.

    .venv/bin/python bench/agent_footprint.py [--window 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

import psutil
from _cluster import (
    HTTP,
    ROOT,
    agent_process,
    check_agents,
    etcd_process,
    local_cluster,
    store_of,
    table,
    wait_for,
    write_result,
)

from ninefold.state.view import read_view
from tests.cluster.harness import LocalCluster

NAME = "agent_footprint"
GOAL_MB = 120.0
GOAL_KBITS = 5.0
MB = 1024 * 1024
HEADER_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps option 12

SERVICES = f"""
services:
  web:
    command: {HTTP}
    replicas: 2
    check: {{http: /}}
  queue:
    mode: active-passive
    replicas: 2
    command: {HTTP}
    check: {{tcp: main}}
"""


@dataclass
class Usage:
    rss: int = 0
    uss: int = 0
    cpu_s: float = 0.0

    def mem(self, proc: psutil.Process) -> None:
        info = proc.memory_full_info()
        self.rss, self.uss = max(self.rss, info.rss), max(self.uss, info.uss)


@dataclass
class NodeFootprint:
    node: str
    agent: Usage = field(default_factory=Usage)
    etcd: Usage = field(default_factory=Usage)
    services: Usage = field(default_factory=Usage)
    services_count: int = 0
    agent_cpu_pct: float = 0.0
    etcd_cpu_pct: float = 0.0
    client_bytes: int = 0  # agent <-> other nodes' etcd
    peer_bytes: int = 0  # etcd <-> etcd
    segments: int = 0
    etcd_peer_bytes: int = 0  # etcd's own counters, message bytes
    etcd_client_bytes: int = 0

    @property
    def sum_rss(self) -> int:
        return self.agent.rss + self.etcd.rss

    @property
    def sum_uss(self) -> int:
        return self.agent.uss + self.etcd.uss


# -- traffic (ss) -------------------------------------------------------------------------
SOCKET = re.compile(r"^\S+\s+\S+\s+(\S+)\s+(\S+)\s+(.*)$")
PID = re.compile(r"pid=(\d+)")
COUNTER = re.compile(r"\b(bytes_sent|bytes_received|segs_out|segs_in):(\d+)")


def plain(address: str) -> str:
    """'[::ffff:127.0.0.1]:5000' -> '127.0.0.1:5000' (gRPC dials v4-mapped)."""
    match = re.fullmatch(r"\[::ffff:([\d.]+)\]:(\d+)", address)
    return f"{match[1]}:{match[2]}" if match else address


def sockets() -> dict[tuple[str, str], tuple[list[int], dict[str, int]]]:
    """(local, peer) -> (owning pids, counters) of every established TCP socket."""
    out = subprocess.run(
        ["ss", "-tinpHO", "state", "established"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        match = SOCKET.match(line.strip())
        if not match:
            continue
        local, peer, rest = match.groups()
        local, peer = plain(local), plain(peer)
        pids = [int(p) for p in PID.findall(rest)]
        counters = {k: int(v) for k, v in COUNTER.findall(rest)}
        found[(local, peer)] = (pids, counters)
    return found


def traffic(
    before: dict[tuple[str, str], tuple[list[int], dict[str, int]]],
    after: dict[tuple[str, str], tuple[list[int], dict[str, int]]],
    owners: dict[int, tuple[str, str]],
    nodes: dict[str, NodeFootprint],
) -> int:
    """Add each node's cross-node bytes in the window; returns how many
    connections counted."""
    counted = 0
    for key, (pids, end) in after.items():
        if key not in before:
            continue
        mine = next((owners[p] for p in pids if p in owners), None)
        other = after.get((key[1], key[0]))
        theirs = next((owners[p] for p in other[0] if p in owners), None) if other else None
        if mine is None or theirs is None or mine[0] == theirs[0]:
            continue  # not ours, or inside one node
        start = before[key][1]
        delta = {k: end.get(k, 0) - start.get(k, 0) for k in end}
        payload = delta.get("bytes_sent", 0) + delta.get("bytes_received", 0)
        node = nodes[mine[0]]
        if mine[1] == "etcd" and theirs[1] == "etcd":
            node.peer_bytes += payload
        else:
            node.client_bytes += payload
        node.segments += delta.get("segs_out", 0) + delta.get("segs_in", 0)
        counted += 1
    return counted


ETCD_COUNTERS = {
    "peer": ("etcd_network_peer_sent_bytes_total", "etcd_network_peer_received_bytes_total"),
    "client": (
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_network_client_grpc_received_bytes_total",
    ),
}


def etcd_counters(cluster: LocalCluster) -> dict[str, dict[str, float]]:
    """node -> {"peer": bytes, "client": bytes} from its member's /metrics (etcd's
    own count of message bytes, in + out; client includes its own node's agent)."""
    out: dict[str, dict[str, float]] = {}
    for node, address in cluster.addresses.items():
        url = f"http://{address}:{cluster.base}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
            text = resp.read().decode()
        totals = dict.fromkeys(ETCD_COUNTERS, 0.0)
        for line in text.splitlines():
            for kind, names in ETCD_COUNTERS.items():
                if line.startswith(names):
                    totals[kind] += float(line.rsplit(" ", 1)[-1])
        out[node] = totals
    return out


# -- the run --------------------------------------------------------------------------------
async def wait_healthy(cluster: LocalCluster) -> None:
    store, spec = store_of(cluster)

    async def probe() -> bool:
        check_agents(cluster)
        view = await read_view(store, spec)
        return (
            all(n.state == "up" for n in view.nodes)
            and all(s.healthy == s.desired for s in view.services)
            and all(s.active for s in view.services if s.mode == "active-passive")
        )

    try:
        await wait_for("web 2/2 and queue 2/2 healthy with an active", probe, 90)
    finally:
        await store.close()


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(cluster: LocalCluster, window: float) -> tuple[dict[str, NodeFootprint], int]:
    nodes = {n: NodeFootprint(n) for n in cluster.addresses}
    procs: dict[str, dict[str, list[psutil.Process]]] = {}
    owners: dict[int, tuple[str, str]] = {}  # pid -> (node, agent|etcd|service)
    for node in cluster.addresses:
        agent = agent_process(cluster, node)
        etcd = etcd_process(agent)
        if etcd is None:
            raise RuntimeError(f"no etcd member under the agent of {node}")
        services = [c for c in agent.children(recursive=True) if c.pid != etcd.pid]
        procs[node] = {"agent": [agent], "etcd": [etcd], "service": services}
        for kind, members in procs[node].items():
            for proc in members:
                owners[proc.pid] = (node, kind)
        nodes[node].services_count = len(services)

    def cpu_all() -> dict[int, float]:
        return {p.pid: cpu(p) for group in procs.values() for ps in group.values() for p in ps}

    traffic_ok = shutil.which("ss") is not None
    before = sockets() if traffic_ok else {}
    counters0 = etcd_counters(cluster)
    cpu0, t0 = cpu_all(), time.monotonic()
    end = t0 + window
    while True:
        for node, group in procs.items():
            for kind, attr in (("agent", "agent"), ("etcd", "etcd"), ("service", "services")):
                usage: Usage = getattr(nodes[node], attr)
                if kind == "service":
                    rss = sum(p.memory_full_info().rss for p in group[kind])
                    uss = sum(p.memory_full_info().uss for p in group[kind])
                    usage.rss, usage.uss = max(usage.rss, rss), max(usage.uss, uss)
                else:
                    usage.mem(group[kind][0])
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(2.0, left))
    cpu1, elapsed = cpu_all(), time.monotonic() - t0
    after = sockets() if traffic_ok else {}
    counters1 = etcd_counters(cluster)
    for node, group in procs.items():
        fp = nodes[node]
        for kind, attr in (("agent", "agent"), ("etcd", "etcd"), ("service", "services")):
            getattr(fp, attr).cpu_s = sum(cpu1[p.pid] - cpu0[p.pid] for p in group[kind])
        fp.agent_cpu_pct = 100 * fp.agent.cpu_s / elapsed
        fp.etcd_cpu_pct = 100 * fp.etcd.cpu_s / elapsed
        fp.etcd_peer_bytes = int(counters1[node]["peer"] - counters0[node]["peer"])
        fp.etcd_client_bytes = int(counters1[node]["client"] - counters0[node]["client"])
    connections = traffic(before, after, owners, nodes) if traffic_ok else -1
    return nodes, connections


def mb(value: float) -> str:
    return f"{value / MB:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=20.0, help="idle window (s)")
    parser.add_argument("--settle", type=float, default=5.0, help="idle time before it (s)")
    parser.add_argument("--quick", action="store_true", help="8 s window, 2 s settle")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's logs and data")
    args = parser.parse_args()
    if args.quick:
        args.window, args.settle = 8.0, 2.0
    started = time.monotonic()
    with local_cluster(SERVICES, "footprint", keep=args.keep) as cluster:
        asyncio.run(wait_healthy(cluster))
        healthy_after = time.monotonic() - started
        print(f"cluster healthy after {healthy_after:.1f}s; settling", file=sys.stderr)
        time.sleep(args.settle)
        load0 = os.getloadavg()[0]
        nodes, connections = measure(cluster, args.window)
        load1 = os.getloadavg()[0]
    elapsed = time.monotonic() - started

    fps = list(nodes.values())
    kbits = {
        fp.node: {
            "payload": (fp.client_bytes + fp.peer_bytes) * 8 / args.window / 1000,
            "wire_estimate": (fp.client_bytes + fp.peer_bytes + HEADER_BYTES * fp.segments)
            * 8
            / args.window
            / 1000,
        }
        for fp in fps
    }
    worst = max(fps, key=lambda fp: fp.sum_rss)
    mean = {
        "agent_rss": statistics.mean(fp.agent.rss for fp in fps),
        "etcd_rss": statistics.mean(fp.etcd.rss for fp in fps),
        "agent_cpu": statistics.mean(fp.agent_cpu_pct for fp in fps),
        "etcd_cpu": statistics.mean(fp.etcd_cpu_pct for fp in fps),
    }
    measured = connections > 0
    max_payload = max(k["payload"] for k in kbits.values()) if measured else None
    max_wire = max(k["wire_estimate"] for k in kbits.values()) if measured else None
    mem_ok = worst.sum_rss / MB < GOAL_MB
    traffic_ok = max_payload is not None and max_payload < GOAL_KBITS
    result = {
        "bench": NAME,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "elapsed_s": round(elapsed, 1),
        "window_s": args.window,
        "settle_s": args.settle,
        "load_average_1m": [round(load0, 2), round(load1, 2)],
        "cpus": os.cpu_count(),
        "goal": {"agent_plus_etcd_rss_mb": GOAL_MB, "control_traffic_kbit_s": GOAL_KBITS},
        "nodes": [
            {
                **asdict(fp),
                "sum_rss": fp.sum_rss,
                "sum_uss": fp.sum_uss,
                "traffic_kbit_s": kbits[fp.node],
            }
            for fp in fps
        ],
        "connections_counted": connections,
        "worst_node_sum_rss_mb": round(worst.sum_rss / MB, 1),
        "memory_goal_met": mem_ok,
        "traffic_goal_met": traffic_ok,
    }
    path = write_result(NAME, result)

    rows = [
        [
            fp.node,
            mb(fp.agent.rss),
            mb(fp.agent.uss),
            mb(fp.etcd.rss),
            mb(fp.etcd.uss),
            mb(fp.sum_rss),
            mb(fp.sum_uss),
            f"{fp.agent_cpu_pct:.1f}",
            f"{fp.etcd_cpu_pct:.1f}",
            f"{mb(fp.services.rss)} ({fp.services_count})",
            f"{kbits[fp.node]['payload']:.1f}" if connections > 0 else "-",
            f"{kbits[fp.node]['wire_estimate']:.1f}" if connections > 0 else "-",
        ]
        for fp in fps
    ]
    headers = ["node", "agent RSS", "agent USS", "etcd RSS", "etcd USS", "sum RSS", "sum USS"]
    headers += ["agent CPU%", "etcd CPU%", "services RSS (n)", "kbit/s payload", "kbit/s wire"]
    print(table(headers, rows))
    print(
        f"memory in MiB (largest of samples every 2 s); CPU in % of one core over "
        f"{args.window:g}s idle; load average {load0:.2f} -> {load1:.2f} on {os.cpu_count()} CPUs"
    )
    if connections <= 0:
        print("traffic: not measured by ss (no ss, or no connection open all the window)")
    else:
        split = defaultdict(float)
        for fp in fps:
            split["client"] += fp.client_bytes * 8 / args.window / 1000 / len(fps)
            split["peer"] += fp.peer_bytes * 8 / args.window / 1000 / len(fps)
        print(
            f"traffic: {connections} cross-node connections; per node on average "
            f"{split['client']:.1f} kbit/s agent<->other members + {split['peer']:.1f} kbit/s "
            f"etcd peers (TCP payload, in + out)"
        )
    peer = statistics.mean(fp.etcd_peer_bytes for fp in fps) * 8 / args.window / 1000
    client = statistics.mean(fp.etcd_client_bytes for fp in fps) * 8 / args.window / 1000
    print(
        f"etcd's own counters, per member on average: peer {peer:.1f} kbit/s, client gRPC "
        f"{client:.1f} kbit/s (message bytes, in + out; client includes the node's own agent)"
    )
    print(f"result: {path.relative_to(ROOT)}")
    traffic_text = (
        f"; control traffic up to {max_payload:.0f} kbit/s per node (TCP payload; ~{max_wire:.0f}"
        f" with headers) (goal < {GOAL_KBITS:g}: {'met' if traffic_ok else 'NOT met'})"
        if max_payload is not None and max_wire is not None
        else ""
    )
    print(
        f"per node (mean of 3): agent {mb(mean['agent_rss'])} MB + etcd "
        f"{mb(mean['etcd_rss'])} MB = "
        f"{mb(mean['agent_rss'] + mean['etcd_rss'])} MB RSS, worst {worst.node} "
        f"{mb(worst.sum_rss)} MB (goal < {GOAL_MB:g} MB: {'met' if mem_ok else 'NOT met'}); "
        f"idle CPU agent {mean['agent_cpu']:.1f}% etcd {mean['etcd_cpu']:.1f}%"
        f"{traffic_text}; bench took {elapsed:.0f}s"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
