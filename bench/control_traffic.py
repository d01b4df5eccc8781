"""Control traffic per flow and per node: which connection, and which store
request, costs what on an idle 3-node cluster.

The same cluster and services as agent_footprint.py (web replicated 2/2 with an
http check, queue active-passive 2/2 with a tcp check), started with
NINEFOLD_STORE_STATS so that every agent counts its store requests by kind and
key group (src/ninefold/store/request_stats.py). Over an idle window:

  flows     TCP payload (ss -tin: bytes_sent + bytes_received) of every
            connection between processes of different nodes, open at the
            window's end, by what it is:
              raft streams    etcd <-> etcd streams (raft heartbeats, log
                              appends for every write, read-index rounds for
                              linearizable reads); payload one way only
              peer requests   etcd -> etcd HTTP requests: a follower forwards
                              each lease renewal of its agent to the raft leader
              agent -> remote etcd, agent API, to an instance, volumes, other
            Each connection counts at both its nodes (a node's traffic is in +
            out), like agent_footprint.py.
  requests  what each agent asked its store (req/s and message bytes/s by
            kind and key group), and each etcd member's gRPC calls by method
            (grpc_server_handled_total), lease keep-alives included.

    .venv/bin/python bench/control_traffic.py [--window 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import ROOT, agent_process, etcd_process, local_cluster, table, write_result
from agent_footprint import SERVICES, sockets, wait_healthy

from ninefold.store.request_stats import ENV
from tests.cluster.harness import LocalCluster

NAME = "control_traffic"
GOAL_KBITS = 10.0
"""Issue 18 item 6: seed 000's figure, 40 kbit/s for 4 nodes."""
EPHEMERAL_FROM = 32768
"""Linux's ephemeral ports start here; the cluster's and instances' ports are below."""

Sockets = dict[tuple[str, str], tuple[list[int], dict[str, int]]]


@dataclass(frozen=True)
class Ports:
    store_client: int
    store_peer: int
    api: int
    gateway: int
    volumes: int


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def flow_of(client: str, server: str, server_port: int, ports: Ports, client_to_server: int) -> str:
    """What a cross-node connection is, from its two processes' kinds
    (agent, etcd, service), the port it was made to and the payload the
    client sent in the window."""
    if client == "etcd" and server == "etcd" and server_port == ports.store_peer:
        return "peer requests" if client_to_server > 0 else "raft streams"
    if server == "etcd" and server_port == ports.store_client:
        return "agent -> remote etcd"
    if server == "agent" and server_port == ports.api:
        return "agent API"
    if server == "agent" and server_port == ports.volumes:
        return "volumes"
    if server == "service":
        return "to an instance"
    return "other"


def flows(
    before: Sockets,
    after: Sockets,
    owners: dict[int, tuple[str, str]],
    ports: Ports,
) -> tuple[dict[str, dict[str, int]], list[dict[str, object]]]:
    """flow -> node -> payload bytes in the window, and one row per connection
    (counted once, from its client's side). A connection opened during the
    window counts from zero."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rows: list[dict[str, object]] = []
    for (local, peer), (pids, end) in after.items():
        if port_of(local) < EPHEMERAL_FROM or port_of(peer) >= EPHEMERAL_FROM:
            continue  # count each connection once, at its client's end
        mine = next((owners[p] for p in pids if p in owners), None)
        other = after.get((peer, local))
        theirs = next((owners[p] for p in other[0] if p in owners), None) if other else None
        if mine is None or theirs is None or mine[0] == theirs[0]:
            continue
        start = before.get((local, peer), ([], {}))[1]
        sent = end.get("bytes_sent", 0) - start.get("bytes_sent", 0)
        received = end.get("bytes_received", 0) - start.get("bytes_received", 0)
        name = flow_of(mine[1], theirs[1], port_of(peer), ports, sent)
        per[name][mine[0]] += sent + received
        per[name][theirs[0]] += sent + received
        rows.append(
            {"flow": name, "client": f"{mine[0]} {mine[1]} {local}",
             "server": f"{theirs[0]} {theirs[1]} {peer}", "sent": sent, "received": received}
        )  # fmt: skip
    return per, rows


# -- etcd's and the agents' request counts ----------------------------------------------
GRPC = re.compile(r"^grpc_server_handled_total\{([^}]*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def grpc_calls(cluster: LocalCluster) -> dict[str, dict[str, float]]:
    """node -> gRPC method -> calls its etcd member handled (streams: messages
    received, from grpc_server_msg_received_total, so keep-alives count one by one)."""
    out: dict[str, dict[str, float]] = {}
    for node, address in cluster.addresses.items():
        url = f"http://{address}:{cluster.base}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
            text = resp.read().decode()
        calls: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                labels = dict(LABEL.findall(line[line.index("{") : line.index("}")]))
                if labels.get("grpc_type") == "bidi_stream":
                    calls[labels.get("grpc_method", "?")] += float(line.rsplit(" ", 1)[1])
            match = GRPC.match(line)
            if match:
                labels = dict(LABEL.findall(match[1]))
                if labels.get("grpc_type") == "unary":
                    calls[labels.get("grpc_method", "?")] += float(match[2])
        out[node] = dict(calls)
    return out


def agent_requests(directory: Path, pids: dict[int, str]) -> dict[str, dict[str, list[int]]]:
    """node -> "<kind> <group>" -> [count, bytes sent, bytes received] so far."""
    out: dict[str, dict[str, list[int]]] = {}
    for pid, node in pids.items():
        path = directory / f"{pid}.json"
        with contextlib.suppress(FileNotFoundError, ValueError):
            out[node] = json.loads(path.read_text())
    return out


def delta(
    before: dict[str, dict[str, list[int]]], after: dict[str, dict[str, list[int]]]
) -> dict[str, dict[str, list[int]]]:
    return {
        node: {
            key: [
                a - b for a, b in zip(values, before.get(node, {}).get(key, [0, 0, 0]), strict=True)
            ]
            for key, values in counts.items()
        }
        for node, counts in after.items()
    }


# -- the run --------------------------------------------------------------------------------
def owners_of(cluster: LocalCluster) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """pid -> (node, agent|etcd|service), and agent pid -> node."""
    owners: dict[int, tuple[str, str]] = {}
    agents: dict[int, str] = {}
    for node in cluster.addresses:
        agent = agent_process(cluster, node)
        etcd = etcd_process(agent)
        if etcd is None:
            raise RuntimeError(f"no etcd member under the agent of {node}")
        owners[agent.pid] = (node, "agent")
        agents[agent.pid] = node
        owners[etcd.pid] = (node, "etcd")
        for child in agent.children(recursive=True):
            owners.setdefault(child.pid, (node, "service"))
    return owners, agents


def kbits(count: float, window: float) -> float:
    return count * 8 / window / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=20.0, help="idle window (s)")
    parser.add_argument("--settle", type=float, default=5.0, help="idle time before it (s)")
    parser.add_argument("--quick", action="store_true", help="8 s window, 2 s settle")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's logs and data")
    parser.add_argument("--top", type=int, default=14, help="request kinds shown per node")
    args = parser.parse_args()
    if args.quick:
        args.window, args.settle = 8.0, 2.0
    started = time.monotonic()
    stats_dir = Path(tempfile.mkdtemp(prefix="ninefold-store-stats-"))
    os.environ[ENV] = str(stats_dir)
    with local_cluster(SERVICES, "traffic", keep=args.keep) as cluster:
        asyncio.run(wait_healthy(cluster))
        time.sleep(args.settle)
        owners, agents = owners_of(cluster)
        ports = Ports(cluster.base, cluster.base + 1, cluster.base + 2, cluster.base + 3,
                      cluster.volume_port)  # fmt: skip
        before, calls0, asked0 = sockets(), grpc_calls(cluster), agent_requests(stats_dir, agents)
        t0 = time.monotonic()
        time.sleep(args.window)
        after, calls1, asked1 = sockets(), grpc_calls(cluster), agent_requests(stats_dir, agents)
        window = time.monotonic() - t0
    nodes = sorted(cluster.addresses)
    per, connections = flows(before, after, owners, ports)
    asked = delta(asked0, asked1)

    totals = {n: sum(per[f].get(n, 0) for f in per) for n in nodes}
    rows = [
        [name, *(f"{kbits(per[name].get(n, 0), window):.1f}" for n in nodes)]
        for name in sorted(per, key=lambda f: -sum(per[f].values()))
    ]
    rows.append(["total", *(f"{kbits(totals[n], window):.1f}" for n in nodes)])
    print(f"control traffic by flow, kbit/s of TCP payload per node (in + out), {window:.0f}s idle")
    print(table(["flow", *nodes], rows))
    print()
    methods = sorted({m for calls in calls1.values() for m in calls})
    call_rows = [
        [m, *(f"{(calls1[n].get(m, 0) - calls0[n].get(m, 0)) / window:.1f}" for n in nodes)]
        for m in methods
        if any(calls1[n].get(m, 0) - calls0[n].get(m, 0) for n in nodes)
    ]
    print("etcd gRPC calls handled per second, by method (each member, its own agent's mostly)")
    print(table(["method", *nodes], call_rows))
    print()
    kinds = defaultdict(float)
    for counts in asked.values():
        for key, (count, _, _) in counts.items():
            kinds[key] += count
    top = sorted(kinds, key=lambda k: -kinds[k])[: args.top]
    req_rows = [
        [key, *(f"{asked.get(n, {}).get(key, [0, 0, 0])[0] / window:.2f}" for n in nodes),
         f"{kbits(sum(sum(asked.get(n, {}).get(key, [0, 0, 0])[1:]) for n in nodes), window) / len(nodes):.2f}"]  # noqa: E501
        for key in top
    ]  # fmt: skip
    print("each agent's store requests per second, by kind and key group (watch-events: messages)")
    print(table(["request", *nodes, "kbit/s msgs (mean)"], req_rows))
    reads = sum(
        v[0]
        for counts in asked.values()
        for k, v in counts.items()
        if k.startswith(("get ", "list "))
    )
    writes = sum(
        v[0] for counts in asked.values() for k, v in counts.items()
        if k.startswith(("put ", "txn ", "delete "))
    )  # fmt: skip
    print(
        f"all agents: {reads / window:.1f} linearizable reads/s (each a read-index round "
        f"through the raft leader), {writes / window:.1f} writes/s (each appended to every member)"
    )
    worst = max(totals.values()) if totals else 0
    result = {
        "bench": NAME,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "window_s": round(window, 1),
        "goal_kbit_s": GOAL_KBITS,
        "flows_kbit_s": {
            f: {n: round(kbits(b, window), 2) for n, b in v.items()} for f, v in per.items()
        },
        "total_kbit_s": {n: round(kbits(b, window), 2) for n, b in totals.items()},
        "etcd_calls": {
            n: {m: calls1[n][m] - calls0[n].get(m, 0) for m in calls1[n]} for n in nodes
        },
        "agent_requests": asked,
        "linearizable_reads_per_s": round(reads / window, 2),
        "writes_per_s": round(writes / window, 2),
        "connections": connections,
    }  # fmt: skip
    path = write_result(NAME, result)
    print(f"result: {path.relative_to(ROOT)}")
    met = "met" if kbits(worst, window) <= GOAL_KBITS else "NOT met"
    print(
        f"control traffic up to {kbits(worst, window):.1f} kbit/s per node (TCP payload; "
        f"goal <= {GOAL_KBITS:g}: {met}); bench took {time.monotonic() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
