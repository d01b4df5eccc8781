"""Gateway throughput: requests per second and p50/p99 latency, direct to a
fast backend and through each gateway engine, in one run against the same backend.

Four kinds of process, each on its own (nothing shares an event loop):

  backend   a keep-alive HTTP/1.1 server (uvloop + httptools, a fixed 3-byte
            answer), started once and used by every measurement
  anchor    HAProxy (Debian's) with a minimal hand-written configuration
            (ANCHOR_CONFIG: one thread, keep-alive both sides, `http-reuse
            always`, no logging, no rules) in front of the same backend, the
            yardstick of requests per gateway CPU-second (DESIGN.md section 7);
            HAProxy runs as the child of a subprocess of this script
  gateway   one subprocess per engine (builtin, haproxy): GatewaySettings on
            127.0.0.1 and a free port, the engine started under uvloop, a
            RoutingTable with one HTTP route /web -> the backend applied
            (HAProxy runs as that subprocess's child, as under the agent)
  load      wrk (1 thread, --latency), or when wrk is missing a small asyncio
            load generator in a subprocess of this script

Targets, in this order, each after a warm-up run of --warmup seconds:

  direct    http://127.0.0.1:<backend>/
  anchor    http://127.0.0.1:<anchor>/web/    (the backend answers any path)
  builtin   http://127.0.0.1:<gateway>/web/   (the route strips /web)
  haproxy   the same through HAProxy (anchor and haproxy are skipped with a
            note if haproxy is missing)

CPU time of the backend, the gateway (with its children) and the load
generator over each measured run is reported in % of one core. The machine's
cores are shared by all of them, so a gateway's throughput is also bounded by
the CPU it takes from the backend and the load generator.

Goal (DESIGN.md section 7): each engine's requests per gateway CPU-second at
least 0.9 of the anchor's. Each gateway's added p50 latency (its p50 minus
direct's) is printed next to seed 000's 7 ms per hop. --rounds N repeats the
anchor, builtin and haproxy targets N times, in turn, and reports medians.

    .venv/bin/python bench/gateway_throughput.py [--duration 10] [--connections 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster.harness
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

NAME = "gateway_throughput"
GOAL = 0.9  # an engine's requests per gateway CPU-second / the anchor's (DESIGN.md section 7)
SEED_HOP_MS = 7.0  # seed 000: the framework's overhead per request, gateway to service
PY = sys.executable
SCRIPT = str(Path(__file__).resolve())
BODY = b"ok\n"
WRK = "/usr/bin/wrk"
READY_TIMEOUT = 30.0

ANCHOR_CONFIG = """\
global
    nbthread 1

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend anchor
    bind 127.0.0.1:{port}
    default_backend backend

backend backend
    server s1 127.0.0.1:{backend_port}
"""
"""The yardstick: what HAProxy costs with nothing of ninefold's (keep-alive on
both sides is HAProxy's default; no `log` line, so no logging)."""


def wrk_binary() -> str | None:
    return WRK if os.access(WRK, os.X_OK) else shutil.which("wrk")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the processes (run as `python gateway_throughput.py _backend|_gateway|_load ...`) ----------


def serve_backend(port: int) -> None:
    """A fast keep-alive HTTP/1.1 server on 127.0.0.1:port (0: any); prints the port."""
    import httptools
    import uvloop

    keep = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(BODY),
        BODY,
    )
    close = keep.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self) -> None:
            if self.parser.should_keep_alive():
                self.transport.write(keep)
            else:
                self.transport.write(close)
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", port, backlog=1024)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await until_told_to_stop()
        server.close()

    uvloop.run(main())


def serve_gateway(engine_name: str, backend_port: int, root: Path) -> None:
    """One gateway engine routing /web to the backend; prints its port once applied."""
    import uvloop

    from ninefold.gateway.engine import Engine, GatewaySettings
    from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
    from ninefold.spec.routing import BalanceSpec, RouteSpec

    async def main() -> None:
        port = 0 if engine_name == "builtin" else free_port()
        settings = GatewaySettings("bench", "127.0.0.1", port, root / "run", root / "log")
        engine: Engine
        if engine_name == "builtin":
            from ninefold.gateway.builtin import BuiltinEngine

            engine = BuiltinEngine(settings)
        else:
            from ninefold.gateway.haproxy import HaproxyEngine

            engine = HaproxyEngine(settings)
        backend = Backend("web-0", "bench", "127.0.0.1", backend_port)
        routes = ServiceRoutes("web", RouteSpec(http="/web"), BalanceSpec(), (backend,))
        await engine.start()
        try:
            await engine.apply(RoutingTable({"web": routes}))
            if isinstance(getattr(engine, "port", None), int):
                port = engine.port  # type: ignore[union-attr]  # the builtin's chosen port
            print(json.dumps({"port": port}), flush=True)
            await until_told_to_stop()
        finally:
            await engine.stop()

    uvloop.run(main())


def serve_anchor(backend_port: int, root: Path) -> None:
    """HAProxy with ANCHOR_CONFIG in front of the backend; prints its port once it answers."""
    from ninefold.gateway.haproxy import haproxy_binary

    binary = haproxy_binary()
    if binary is None:
        sys.exit("no haproxy binary")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "anchor.cfg"
    config.write_text(ANCHOR_CONFIG.format(port=port, backend_port=backend_port))
    proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"haproxy (anchor) did not start: exit {proc.poll()}")
                time.sleep(0.05)
        print(json.dumps({"port": port}), flush=True)
        asyncio.run(until_told_to_stop())
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def until_told_to_stop() -> None:
    """Until SIGTERM/SIGINT, or until stdin closes (the bench died)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    await stop.wait()


def run_load(url: str, connections: int, duration: float, tokens: Sequence[str] = ()) -> None:
    """The fallback load generator: `connections` keep-alive connections sending
    sequential GETs for `duration` seconds (over TLS for https, not verified:
    loopback only; each with the next of `tokens` as a bearer token, if any);
    prints a JSON result."""
    import uvloop

    scheme, host, port, path = _split(url)
    context: ssl.SSLContext | None = None
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    requests = [(head + f"Authorization: Bearer {t}\r\n\r\n").encode() for t in tokens] or [
        (head + "\r\n").encode()
    ]
    turn = [0]
    latencies: list[float] = []
    counts = {"requests": 0, "non_2xx": 0, "errors": 0}

    async def one(deadline: float) -> None:
        clock = time.perf_counter
        while clock() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
            except OSError:
                counts["errors"] += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while (start := clock()) < deadline:
                    turn[0] = (turn[0] + 1) % len(requests)
                    writer.write(requests[turn[0]])
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    if length:
                        await reader.readexactly(length)
                    latencies.append(clock() - start)
                    counts["requests"] += 1
                    if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                        counts["non_2xx"] += 1
                    if b"connection: close" in head.lower():
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                counts["errors"] += 1
            finally:
                writer.close()

    async def main() -> None:
        started = time.perf_counter()
        await asyncio.gather(*(one(started + duration) for _ in range(connections)))
        elapsed = time.perf_counter() - started
        latencies.sort()
        n = len(latencies)
        print(
            json.dumps(
                {
                    "rps": counts["requests"] / elapsed,
                    "p50_ms": latencies[n // 2] * 1000 if n else None,
                    "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
                    "requests": counts["requests"],
                    "non_2xx": counts["non_2xx"],
                    "socket_errors": counts["errors"],
                    "seconds": elapsed,
                }
            ),
            flush=True,
        )

    uvloop.run(main())


def _split(url: str) -> tuple[str, str, int, str]:
    match = re.fullmatch(r"(https?)://([^/:]+):(\d+)(/.*)?", url)
    if match is None:
        raise ValueError(f"not a loopback http(s) URL: {url}")
    return match[1], match[2], int(match[3]), match[4] or "/"


# --- the bench ---------------------------------------------------------------------------------


class Child:
    """A helper process (`python <script> <role> ...`, this script unless told)
    that prints one JSON line when ready."""

    def __init__(self, role: str, *args: str, log: Path, script: str = "") -> None:
        self.role = role
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [PY, script or SCRIPT, role, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self.info = self._ready()

    def _ready(self) -> dict[str, Any]:
        line: list[bytes] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(READY_TIMEOUT)
        if not line or not line[0].strip():
            self.stop()
            err = self.log.read_text(errors="replace")
            raise RuntimeError(f"{self.role} did not start:\n{err[-2000:]}")
        return json.loads(line[0])  # type: ignore[no-any-return]

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the process and its children now."""
        import psutil

        total = 0.0
        try:
            top = psutil.Process(self.proc.pid)
            for p in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = p.cpu_times()
                    total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(out: str) -> dict[str, Any]:
    def number(pattern: str, default: float | None = None) -> float:
        match = re.search(pattern, out)
        if match is None:
            if default is None:
                raise ValueError(f"wrk output without {pattern!r}:\n{out}")
            return default
        return float(match[1])

    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1]),  # type: ignore[index]
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1]),  # type: ignore[index]
        "requests": int(number(r"(\d+) requests in")),
        "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)", 0)),
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
        "seconds": number(r"requests in ([\d.]+)s"),
    }


def load(url: str, args: argparse.Namespace, duration: float) -> dict[str, Any]:
    """One load run against url; the load generator is a child process."""
    seconds = max(1, round(duration))
    if args.loadgen == "wrk":
        cmd = [
            args.wrk,
            "-t1",
            f"-c{args.connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
        return parse_wrk(out.stdout)
    cmd = [PY, SCRIPT, "_load", url, str(args.connections), str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def with_cpu(run: Callable[[], dict[str, Any]], **processes: Child | None) -> dict[str, Any]:
    """`run()`'s result (one load run) with `cpu_pct`: the CPU each of
    `processes` (None: not measured) and the load generator used meanwhile,
    in % of one core."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = {name: p.cpu_seconds() for name, p in processes.items() if p is not None}
    started = time.monotonic()
    result = run()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    cpu: dict[str, float | None] = {
        name: round(100 * (p.cpu_seconds() - before[name]) / wall, 1) if p is not None else None
        for name, p in processes.items()
    }
    cpu["load"] = round(100 * used / wall, 1)
    result["cpu_pct"] = cpu
    return result


def measure(
    label: str, url: str, args: argparse.Namespace, backend: Child, gateway: Child | None
) -> dict[str, Any]:
    status, body = get(url)
    if status != 200 or body != BODY:
        raise RuntimeError(f"{label}: {url} answered {status} {body[:80]!r}")
    if args.warmup > 0:
        load(url, args, args.warmup)
    result = with_cpu(lambda: load(url, args, args.duration), backend=backend, gateway=gateway)
    result["url"] = url
    print(
        f"{label:8s} {result['rps']:9.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
        f"p99 {result['p99_ms']:.2f} ms",
        file=sys.stderr,
    )
    return result


def per_cpu_second(result: dict[str, Any]) -> float | None:
    """Requests per CPU-second of the gateway (None: direct, nothing between)."""
    cpu = result["cpu_pct"]["gateway"]
    return result["rps"] / (cpu / 100) if cpu else None


def start_target(name: str, backend: Child, root: Path) -> Child:
    """The process in front of the backend for target `name` (anchor or an engine)."""
    if name == "anchor":
        args = ["_anchor", str(backend.port), str(root / name)]
    else:
        args = ["_gateway", name, str(backend.port), str(root / name)]
    return Child(*args, log=root / f"{name}.log")


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per target: the median of each figure over the rounds; per engine also the
    median over rounds of its requests per CPU-second over the anchor's in the
    same round, and its p50 minus direct's (the latency one hop adds)."""
    out: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds if name in r]
        med: dict[str, Any] = {
            key: statistics.median(run[key] for run in runs) for key in ("rps", "p50_ms", "p99_ms")
        }
        med["errors"] = sum(run["non_2xx"] + run["socket_errors"] for run in runs)
        med["cpu_pct"] = {
            who: (
                None
                if runs[0]["cpu_pct"][who] is None
                else round(statistics.median(run["cpu_pct"][who] for run in runs), 1)
            )
            for who in runs[0]["cpu_pct"]
        }
        per_cpu = [per_cpu_second(run) for run in runs]
        med["req_per_cpu_s"] = statistics.median(per_cpu) if all(per_cpu) else None  # type: ignore[type-var]
        if name not in ("direct", "anchor"):
            ratios = [
                per_cpu_second(r[name]) / per_cpu_second(r["anchor"])  # type: ignore[operator]
                for r in rounds
                if name in r and "anchor" in r
            ]
            med["per_cpu_over_anchor"] = round(statistics.median(ratios), 3) if ratios else None
        if name != "direct":
            added = [r[name]["p50_ms"] - r["direct"]["p50_ms"] for r in rounds if name in r]
            med["added_p50_ms"] = round(statistics.median(added), 3)
        med["runs"] = runs
        out[name] = med
    return out


def bench(args: argparse.Namespace) -> int:
    from _cluster import ROOT, table, write_result

    from ninefold.gateway.haproxy import haproxy_binary

    started = time.monotonic()
    haproxy = haproxy_binary()
    targets = (["anchor"] if haproxy else []) + ["builtin"] + (["haproxy"] if haproxy else [])
    notes = []
    if haproxy is None:
        notes.append(
            "anchor and haproxy engine skipped: no haproxy binary (apt-get install haproxy)"
        )
    if args.loadgen == "wrk" and not args.wrk:
        args.loadgen = "python"
        notes.append(f"no wrk at {WRK} or on PATH: load from the Python asyncio generator")
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="nf-gt-", dir="/tmp"))  # short: unix socket paths
    rounds: list[dict[str, dict[str, Any]]] = []
    backend = Child("_backend", "0", log=root / "backend.log")
    try:
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", file=sys.stderr)
            this: dict[str, dict[str, Any]] = {}
            this["direct"] = measure(
                "direct", f"http://127.0.0.1:{backend.port}/", args, backend, None
            )
            for name in targets:
                gateway = start_target(name, backend, root)
                try:
                    url = f"http://127.0.0.1:{gateway.port}/web/"
                    this[name] = measure(name, url, args, backend, gateway)
                finally:
                    gateway.stop()
            rounds.append(this)
    finally:
        backend.stop()
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    notes.append(
        f"{cores} cores shared by the backend, the gateway and the load generator "
        f"(and whatever else runs here: load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after)"
    )

    results = summarize(rounds)
    direct = results["direct"]["rps"]
    for r in results.values():
        r["ratio"] = round(r["rps"] / direct, 3) if direct else None
    engines = [e for e in ("builtin", "haproxy") if e in results]
    met = "anchor" in results and all(
        (results[e].get("per_cpu_over_anchor") or 0) >= GOAL for e in engines
    )
    path = write_result(
        NAME,
        {
            "bench": NAME,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "elapsed_s": round(elapsed, 1),
            "cores": cores,
            "loadgen": "wrk -t1" if args.loadgen == "wrk" else "python asyncio",
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "anchor_config": ANCHOR_CONFIG,
            "goal": {"per_cpu_second_over_anchor": GOAL, "seed_hop_ms": SEED_HOP_MS},
            "goal_met": met,
            "notes": notes,
            "results": results,
        },
    )

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        [
            name,
            f"{r['rps']:.0f}",
            f"{r['ratio']:.2f}",
            f"{r['p50_ms']:.2f}",
            fmt(r.get("added_p50_ms"), "+.2f"),
            f"{r['p99_ms']:.2f}",
            r["errors"],
            r["cpu_pct"]["backend"],
            fmt(r["cpu_pct"]["gateway"], ".1f"),
            r["cpu_pct"]["load"],
            fmt(r["req_per_cpu_s"], ".0f"),
            fmt(r.get("per_cpu_over_anchor"), ".2f"),
        ]
        for name, r in results.items()
    ]
    headers = ["target", "req/s", "/ direct", "p50 ms", "added p50", "p99 ms", "errors"]
    headers += ["cpu% backend", "cpu% gateway", "cpu% load", "req/gateway cpu-s", "/ anchor"]
    print(table(headers, rows))
    loadgen = "wrk, 1 thread" if args.loadgen == "wrk" else "Python asyncio load generator"
    print(
        f"load: {loadgen}, {args.connections} keep-alive connections, {args.duration:g}s per "
        f"target after a {args.warmup:g}s warm-up; medians of {args.rounds} rounds; backend: "
        f"one uvloop process (httptools, {len(BODY)}-byte body); cpu% in % of one core; "
        f"/ anchor: requests per gateway CPU-second over the anchor's in the same round"
    )
    for note in notes:
        print(f"note: {note}")
    print(f"result: {path.relative_to(ROOT)}")
    parts = [f"direct {direct:.0f} req/s"]
    if "anchor" in results:
        parts.append(f"anchor {results['anchor']['req_per_cpu_s']:.0f} req per cpu-s")
    for engine in ("builtin", "haproxy"):
        if engine in results:
            r = results[engine]
            parts.append(
                f"{engine} {r['req_per_cpu_s']:.0f} req per cpu-s "
                f"({fmt(r.get('per_cpu_over_anchor'), '.2f')} of the anchor), "
                f"p50 +{r['added_p50_ms']:.2f} ms per hop (seed 000: {SEED_HOP_MS:g} ms)"
            )
        else:
            parts.append(f"{engine} skipped")
    print(
        f"gateway throughput: {'; '.join(parts)} (goal: each engine >= {GOAL:g} of the "
        f"anchor per cpu-s: {'met' if met else 'NOT met'}); bench took {elapsed:.0f}s"
    )
    return 1 if any(r["errors"] for r in results.values()) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each target is measured (medians reported)"
    )
    parser.add_argument(
        "--loadgen",
        choices=["wrk", "python"],
        default="wrk",
        help="load generator (python: the asyncio one; used anyway when wrk is missing)",
    )
    args = parser.parse_args()
    args.wrk = wrk_binary()
    return bench(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "_backend":
            serve_backend(int(rest[0]))
        elif role == "_anchor":
            serve_anchor(int(rest[0]), Path(rest[1]))
        elif role == "_gateway":
            serve_gateway(rest[0], int(rest[1]), Path(rest[2]))
        elif role == "_load":
            run_load(rest[0], int(rest[1]), float(rest[2]))
        else:
            sys.exit(f"unknown role {role}")
        sys.exit(0)
    sys.exit(main())
