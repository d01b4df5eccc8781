"""Seed 004's scaling experiment: the Domain Registry's requests/s through the
gateway with 1, 2 and 3 replicas, next to the seed's 700 / 1200 / 1750 req/s
(Java/Spark and Cassandra, one vCPU per application server, HAProxy in front).

A 3-node cluster (agents + embedded etcd on 127.0.0.1-3, the cluster-test
harness) runs examples/services/registry.py, its replicas one per node, every
one keeping its data in the cluster's key-value store through its own node's
agent, and reading it from its own copy fed by the agent's key watch
(examples/services/registry_cache.py); `before cache` is this bench's req/s
when every read went through the agent to etcd. The gateway is HAProxy when
installed (`engine: auto`), as in the seed.

Before measuring, --users users register --hyperties hyperties each (the
RegistryConnector's body: descriptor, expires, resources, dataSchemes,
status, runtime, p2p fields, guid). The load is wrk (1 thread,
--connections keep-alive connections, through n1's gateway) with a Lua
script: 80 % GET /hyperty/user/:user (a user's hyperties, Table I row 2), 20 %
PUT /hyperty/user/:user/:hyperty (a re-registration, row 1), users at random.
After the 3-replica point, short GET-only and PUT-only runs at 8 connections
give the read latency (the seed: ~15 ms) and the write latency.

CPU per process from /proc/<pid>/stat over each measured run: the gateway
(HAProxy processes; with the builtin engine it is inside the agents), the
registry replicas, the agents (their own process), etcd, and wrk, in % of one
core and in CPU-ms per request. Everything shares this machine's cores; the
table says where they run out.

    .venv/bin/python bench/registry_scaling.py [--quick] [--duration 10] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

import httpx
import psutil
from _cluster import PY, ROOT, check_agents, local_cluster, table, write_result

from tests.cluster.harness import LocalCluster, until

NAME = "registry_scaling"
SEED_RPS = {1: 700, 2: 1200, 3: 1750}
"""Seed 004, Fig. 5: where the effective rate saturates, per application server."""
SEED_READ_MS = 15.0
BEFORE_CACHE_RPS = {1: 242, 2: 275, 3: 313}
"""This bench on 2026-12-03 before the registry's watch-fed cache (every read
through the agent to etcd): 5.3 CPU-ms per request."""
REGISTRY = ROOT / "examples" / "services" / "registry.py"
PUT_SHARE = 20
TICKS = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("gateway", "registry", "agent", "etcd")

SERVICES = f"""gateway: {{engine: auto}}
services:
  registry:
    command: [{PY}, {REGISTRY}, "{{address}}", "{{port}}"]
    replicas: 1
    route: {{http: /, strip_prefix: false}}
    check: {{http: /healthz, interval: 1s, fall: 3, rise: 1}}
"""

LUA = r"""
local users = {%(users)s}
local hyperties = {%(hyperties)s}
local body = %(body)s
local headers = {["Content-Type"] = "application/json"}
local put_share = %(put_share)d
local mode = "%(mode)s"

init = function(args)
  math.randomseed(os.time())
end

request = function()
  local i = math.random(#users)
  if mode == "put" or (mode == "mix" and math.random(100) <= put_share) then
    local h = hyperties[i][math.random(#hyperties[i])]
    return wrk.format("PUT", "/hyperty/user/" .. users[i] .. "/" .. h, headers, body)
  end
  return wrk.format("GET", "/hyperty/user/" .. users[i])
end
"""


def hyperty_body(expires: int = 3600) -> dict[str, Any]:
    """What the reTHINK RegistryConnector sends when it registers a hyperty."""
    return {
        "descriptor": "hyperty-catalogue://catalogue.example.com/.well-known/hyperty/Chat",
        "expires": expires,
        "resources": ["chat", "audio", "video"],
        "dataSchemes": ["comm", "connection"],
        "status": "live",
        "runtime": "runtime://example.com/1234",
        "p2pRequester": "runtime://example.com/1234/p2prequester",
        "p2pHandler": "runtime://example.com/1234/p2phandler",
        "guid": "user-guid://example.com/abcdef",
    }


def ids(users: int, per_user: int) -> list[tuple[str, list[str]]]:
    return [
        (
            f"user://example.com/user{u}@example.com",
            [f"hyperty://example.com/{u}-{h}" for h in range(per_user)],
        )
        for u in range(users)
    ]


def register(gateway: str, population: list[tuple[str, list[str]]], threads: int = 8) -> None:
    """Every hyperty registered through the gateway (each 200)."""
    work = [(u, h) for u, hs in population for h in hs]
    errors: list[str] = []

    def run(part: list[tuple[str, str]]) -> None:
        with httpx.Client(base_url=gateway, timeout=30, trust_env=False) as http:
            for user, hyperty in part:
                path = f"/hyperty/user/{quote(user, safe='')}/{quote(hyperty, safe='')}"
                r = http.put(path, json=hyperty_body())
                if r.status_code != 200:
                    errors.append(f"PUT {path}: {r.status_code} {r.text[:100]}")

    chunks = [work[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"{len(errors)} registrations failed, e.g. {errors[0]}")


def lua_script(population: list[tuple[str, list[str]]], mode: str, path: Path) -> Path:
    def lua(text: str) -> str:
        return json.dumps(text)  # a JSON string of ASCII is a Lua string

    users = ", ".join(lua(quote(u, safe="")) for u, _ in population)
    hyperties = ", ".join(
        "{" + ", ".join(lua(quote(h, safe="")) for h in hs) + "}" for _, hs in population
    )
    body = lua(json.dumps(hyperty_body()))
    path.write_text(
        LUA
        % {
            "users": users,
            "hyperties": hyperties,
            "body": body,
            "put_share": PUT_SHARE,
            "mode": mode,
        }
    )
    return path


# --- processes and their CPU, from /proc -------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def processes(cluster: LocalCluster) -> dict[str, list[int]]:
    """The pids of each component, every node's."""
    found: dict[str, list[int]] = {c: [] for c in COMPONENTS}
    for proc in cluster.procs.values():
        found["agent"].append(proc.pid)
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                name, cmdline = child.name(), " ".join(child.cmdline())
                if name == "etcd":
                    found["etcd"].append(child.pid)
                elif name.startswith("haproxy"):
                    found["gateway"].append(child.pid)
                elif str(REGISTRY) in cmdline:
                    found["registry"].append(child.pid)
    return found


def usage(pids: dict[str, list[int]]) -> dict[str, float]:
    return {c: sum(cpu_seconds(p) for p in ps) for c, ps in pids.items()}


def per_process(pids: dict[str, list[int]]) -> dict[int, float]:
    return {p: cpu_seconds(p) for ps in pids.values() for p in ps}


def idle_pct(cluster: LocalCluster, seconds: float) -> dict[str, float]:
    """Each component's CPU with no load (agents' and etcd's own work, health
    checks), in % of one core."""
    pids = processes(cluster)
    before = usage(pids)
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    after = usage(pids)
    return {c: round(100 * (after[c] - before[c]) / wall, 1) for c in COMPONENTS}


# --- a measured run ------------------------------------------------------------------------


def parse_wrk(out: str) -> dict[str, Any]:
    from gateway_throughput import parse_wrk as parse

    return parse(out)


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    cmd += ["--timeout", "5s", "--latency", "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(done.stdout)


def measured(
    cluster: LocalCluster, url: str, script: Path, connections: int, seconds: float
) -> dict[str, Any]:
    """One wrk run with each component's CPU over it."""
    pids = processes(cluster)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, each_before = usage(pids), per_process(pids)
    started = time.monotonic()
    result = wrk(url, script, connections, seconds)
    wall = time.monotonic() - started
    after, each_after = usage(pids), per_process(pids)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime
    used = {c: after[c] - before[c] for c in COMPONENTS} | {"wrk": load}
    requests = max(1, result["requests"])
    result["cpu_pct"] = {c: round(100 * s / wall, 1) for c, s in used.items()}
    result["cpu_pct"]["total"] = round(100 * sum(used.values()) / wall, 1)
    result["cpu_ms_per_request"] = {c: round(1000 * s / requests, 3) for c, s in used.items()}
    server = sum(used[c] for c in COMPONENTS)
    result["cpu_ms_per_request"]["server"] = round(1000 * server / requests, 3)
    result["processes"] = {c: len(p) for c, p in pids.items()}
    result["busiest_pct"] = {  # the busiest single process of each component
        c: round(max((100 * (each_after[p] - each_before[p]) / wall for p in ps), default=0), 1)
        for c, ps in pids.items()
    }
    return result


def scale(cluster: LocalCluster, gateway: str, replicas: int) -> None:
    if replicas > 1:
        out = cluster.cli("scale", "registry", str(replicas), "--wait", "120", timeout=150)
        if out.returncode != 0:
            raise RuntimeError(f"scale to {replicas}: {out.stderr.strip()}")
    until(f"{replicas} healthy replicas", lambda: len(cluster.serving("registry")) == replicas, 120)
    with httpx.Client(timeout=5, trust_env=False) as http:

        def all_routed() -> bool:
            seen = {http.get(gateway + "/healthz").headers.get("x-served-by") for _ in range(12)}
            return len(seen - {None}) == replicas

        until(f"the gateway routing to {replicas} replicas", all_routed, 60)


def bench(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    started = time.monotonic()
    cores = os.cpu_count() or 1
    population = ids(args.users, args.hyperties)
    points: list[dict[str, Any]] = []
    notes: list[str] = []
    read: dict[str, Any] | None = None
    write: dict[str, Any] | None = None
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="nf-rs-"))
    mix = lua_script(population, "mix", work / "mix.lua")
    gets = lua_script(population, "get", work / "get.lua")
    puts = lua_script(population, "put", work / "put.lua")
    with local_cluster(SERVICES, "registry-scaling", keep=args.keep) as cluster:
        gateway = f"http://127.0.0.1:{cluster.base + 3}"
        scale(cluster, gateway, 1)
        engine = "haproxy" if processes(cluster)["gateway"] else "builtin"
        if engine == "builtin":
            notes.append("no haproxy: builtin gateway, its CPU is counted in the agents")
        register(gateway, population)
        for replicas in (1, 2, 3):
            scale(cluster, gateway, replicas)
            check_agents(cluster)
            idle = idle_pct(cluster, args.idle)
            if args.warmup > 0:
                wrk(gateway, mix, args.connections, args.warmup)
            point = measured(cluster, gateway, mix, args.connections, args.duration)
            point |= {"replicas": replicas, "seed_rps": SEED_RPS[replicas], "idle_pct": idle}
            point["before_cache_rps"] = BEFORE_CACHE_RPS[replicas]
            point["cpu_ms_per_request_total"] = point["cpu_ms_per_request"]["server"]
            point["net_cpu_ms_per_request"] = {  # less what the cluster burns idle
                c: round(10 * max(0.0, point["cpu_pct"][c] - idle[c]) / max(point["rps"], 1e-9), 3)
                for c in COMPONENTS
            }
            points.append(point)
            print(
                f"{replicas} replica(s): {point['rps']:.0f} req/s, p50 {point['p50_ms']:.1f} ms, "
                f"cpu {point['cpu_pct']['total']:.0f}% of {100 * cores}%",
                file=sys.stderr,
            )
        read = measured(cluster, gateway, gets, 8, max(2.0, args.duration / 2))
        write = measured(cluster, gateway, puts, 8, max(2.0, args.duration / 2))
    shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    notes.append(
        f"{cores} cores shared with whatever else runs here: load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )

    for p in points:  # seeds.py reads cpu_ms_per_request as one number
        p["cpu_ms_per_request_by_process"] = p.pop("cpu_ms_per_request")
        p["cpu_ms_per_request"] = p["cpu_ms_per_request_total"]
    busiest = max(points, key=lambda p: p["rps"])
    top = max(COMPONENTS, key=lambda c: busiest["cpu_pct"][c])
    ms = busiest["cpu_ms_per_request_by_process"]
    cap = 1000 * cores / (ms["server"] + ms["wrk"])
    where = (
        f"{busiest['cpu_pct']['total']:.0f}% of {100 * cores}% CPU busy at "
        f"{busiest['replicas']} replica(s) ({busiest['rps']:.0f} req/s); a request costs "
        f"{ms['server']:.1f} CPU-ms in the cluster ("
        + ", ".join(f"{c} {ms[c]:.2f}" for c in COMPONENTS)
        + f") plus {ms['wrk']:.2f} in wrk, so {cores} cores cap it near {cap:.0f} req/s "
        f"whatever the replicas; {top} takes the largest share"
    )
    path = write_result(
        NAME,
        {
            "bench": NAME,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "elapsed_s": round(elapsed, 1),
            "cores": cores,
            "gateway_engine": engine,
            "users": args.users,
            "hyperties_per_user": args.hyperties,
            "mix": f"{100 - PUT_SHARE}% GET /hyperty/user/:user, {PUT_SHARE}% PUT "
            "/hyperty/user/:user/:hyperty",
            "connections": args.connections,
            "duration_s": args.duration,
            "points": points,
            "read_p50_ms": read["p50_ms"] if read else None,
            "read": read,
            "write_p50_ms": write["p50_ms"] if write else None,
            "write": write,
            "where_cores_run_out": where,
            "notes": notes,
        },
    )
    rows = []
    for p in points:
        ms = p["cpu_ms_per_request_by_process"]
        rows.append(
            [
                p["replicas"],
                f"{p['rps']:.0f}",
                p["seed_rps"],
                p["before_cache_rps"],
                f"{p['p50_ms']:.1f}",
                f"{p['p99_ms']:.1f}",
                p["non_2xx"] + p["socket_errors"],
                *(p["cpu_pct"][c] for c in (*COMPONENTS, "wrk", "total")),
                round(sum(p["idle_pct"].values()), 1),
                p["busiest_pct"]["agent"],
                *(f"{ms[c]:.2f}" for c in (*COMPONENTS, "server")),
                f"{sum(p['net_cpu_ms_per_request'].values()):.2f}",
            ]
        )
    headers = ["replicas", "req/s", "seed req/s", "before cache", "p50 ms", "p99 ms", "errors"]
    headers += [f"cpu% {c}" for c in (*COMPONENTS, "wrk", "total")]
    headers += ["cpu% idle", "cpu% 1 agent"]
    headers += [f"ms/req {c}" for c in (*COMPONENTS, "server")]
    headers += ["net ms/req"]
    print(table(headers, rows))
    print(
        f"load: wrk -t1 -c{args.connections}, {args.duration:g}s per point after "
        f"{args.warmup:g}s warm-up, {100 - PUT_SHARE}/{PUT_SHARE} GET/PUT over {args.users} "
        f"users x {args.hyperties} hyperties; gateway {engine}; cpu% of one core; "
        "ms/req: CPU-ms per request; cpu% idle: the cluster with no load (agents, etcd, "
        "checks); cpu% 1 agent: the busiest agent; net ms/req: server CPU-ms per request "
        "less the idle part"
    )
    if read:
        print(
            f"read latency (GET only, 8 connections, 3 replicas): p50 {read['p50_ms']:.1f} ms, "
            f"p99 {read['p99_ms']:.1f} ms at {read['rps']:.0f} req/s (seed: ~{SEED_READ_MS:g} ms)"
        )
    if write:
        print(
            f"write latency (PUT only, 8 connections, 3 replicas): p50 {write['p50_ms']:.1f} ms, "
            f"p99 {write['p99_ms']:.1f} ms at {write['rps']:.0f} req/s, "
            f"{write['cpu_ms_per_request']['server']:.2f} CPU-ms each"
        )
    print(f"where: {where}")
    for note in notes:
        print(f"note: {note}")
    print(f"result: {path.relative_to(ROOT)}")
    summary = "; ".join(f"{p['replicas']}: {p['rps']:.0f} (seed {p['seed_rps']})" for p in points)
    print(f"registry scaling req/s by replicas: {summary}; bench took {elapsed:.0f}s")
    errors = sum(p["non_2xx"] + p["socket_errors"] for p in points)
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, fewer users")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU first")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--hyperties", type=int, default=2, help="per user")
    parser.add_argument("--keep", action="store_true", help="leave the cluster's files")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.users, args.idle = 4.0, 1.0, 50, 2.0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
