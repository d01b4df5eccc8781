"""`ninefold demo`: a local three-node cluster survives losing a node under traffic.

It starts the cluster of `examples/shop.yaml` on this machine (agents on
127.0.0.1-3 with `LocalCluster`, from a clean data directory), waits until the
hit counter and the Domain Registry are healthy and routed, then sends two
streams of sequential requests through the first node's gateway (GETs of the
counter; PUTs of a hyperty each read back, now and then a filtered list)
while it SIGKILLs the agent of another node that runs a counter replica (its
instances die with it, like a machine losing power). Traffic goes on until
what ran there runs elsewhere, and a few seconds more. The report gives the
requests sent and failed, the longest time between two successful answers of
each stream, where the instances moved, and the dashboard's address. Exit
status 0 means not one request failed.

Unless `keep` is set the cluster is stopped at the end; with `keep` the
killed node is started again and the cluster stays up.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.table import Table

from ninefold.client import ApiError, ClusterClient, StoreUnavailable
from ninefold.local import LocalCluster, LocalClusterError
from ninefold.spec import SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_SPEC = EXAMPLES / "shop.yaml"
"""The demo's spec when none is given (present in a source checkout)."""

SERVICES = ("counter", "registry")
UP_WAIT = 90.0
"""Longest wait for the agents to start and see each other."""
READY_WAIT = 60.0
"""Longest wait for both services to be healthy and routed."""
BEFORE_KILL = 4.0
"""Seconds of traffic before the node is killed."""
RECOVER_WAIT = 30.0
"""Longest wait for the killed node's instances to run elsewhere."""
AFTER_RECOVERY = 4.0
"""Seconds of traffic after they do."""
REQUEST_TIMEOUT = 5.0
"""A request not answered within this time counts as failed (seed 004's limit)."""
USER = "user://shop.example/alice"
"""The Domain Registry user whose hyperties the traffic writes and reads."""
EVENT_KINDS = ("node-lost", "moved", "failover", "switchover")

console = Console(highlight=False)


def say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


Check = Callable[[httpx.Response], "str | None"]
"""Looks at a 200 answer: None if it is right, else what is wrong with it."""


@dataclass
class Stream:
    """Sequential requests to one service through one gateway, in a thread of its
    own, counting what failed and the longest time between two successes."""

    service: str
    gateway: str
    stop: threading.Event
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    longest_gap: float = 0.0
    answered_by: Counter[str] = field(default_factory=Counter)

    def requests(self, cycle: int) -> Iterator[tuple[str, str, dict[str, Any], Check]]:
        """(method, path, httpx keywords, check) of one cycle's requests."""
        raise NotImplementedError

    def run(self) -> None:
        last_ok = time.monotonic()
        cycle = 0
        with httpx.Client(base_url=self.gateway, timeout=REQUEST_TIMEOUT, trust_env=False) as http:
            while not self.stop.is_set():
                cycle += 1
                for method, path, kw, check in self.requests(cycle):
                    self.sent += 1
                    problem = self._send(http, method, path, kw, check)
                    now = time.monotonic()
                    if problem is None:
                        self.longest_gap = max(self.longest_gap, now - last_ok)
                        last_ok = now
                    else:
                        stamp = time.strftime("%H:%M:%S")
                        self.failures.append(f"{stamp} {method} {path}: {problem}")

    @staticmethod
    def _send(
        http: httpx.Client, method: str, path: str, kw: dict[str, Any], check: Check
    ) -> str | None:
        try:
            response = http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"{response.status_code} {response.text.strip()[:120]}"
        return check(response)

    def thread(self) -> threading.Thread:
        return threading.Thread(target=self.run, name=self.service, daemon=True)


class CounterTraffic(Stream):
    """`GET /counter/`, expecting `<instance> <count>`."""

    def requests(self, cycle: int) -> Iterator[tuple[str, str, dict[str, Any], Check]]:
        yield "GET", "/counter/", {}, self._counted

    def _counted(self, response: httpx.Response) -> str | None:
        words = response.text.split()
        if len(words) != 2 or not words[1].isdigit():
            return f"not '<instance> <count>': {response.text[:80]!r}"
        self.answered_by[words[0]] += 1
        return None


class RegistryTraffic(Stream):
    """PUT a hyperty then GET it back (it must be what was written: the replica
    that answers may not be the one that wrote); every 10th cycle a filtered list."""

    user = "/hyperty/user/" + quote(USER, safe="")

    def requests(self, cycle: int) -> Iterator[tuple[str, str, dict[str, Any], Check]]:
        hyperty = f"{self.user}/{quote(f'hyperty://shop.example/{cycle % 5}', safe='')}"
        descriptor = f"hyperty-catalogue://shop.example/demo/{cycle}"
        body = {
            "descriptor": descriptor,
            "expires": 600,
            "resources": ["chat", "video"] if cycle % 2 else ["chat"],
            "dataSchemes": ["comm"],
        }
        yield "PUT", hyperty, {"json": body}, self._served
        yield "GET", hyperty, {}, lambda r: self._served(r) or _descriptor_is(r, descriptor)
        if cycle % 10 == 0:
            yield "GET", f"{self.user}/hy?resources=chat,video", {}, self._served

    def _served(self, response: httpx.Response) -> str | None:
        self.answered_by[response.headers.get("x-served-by", "?")] += 1
        return None


def _descriptor_is(response: httpx.Response, descriptor: str) -> str | None:
    try:
        got = response.json().get("descriptor")
    except (ValueError, AttributeError):
        return f"not a hyperty: {response.text[:80]!r}"
    return None if got == descriptor else f"stale read: {got!r}, wrote {descriptor!r}"


# --- steps -------------------------------------------------------------------------


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def wait_ready(client: ClusterClient, gateway: str) -> dict[str, str]:
    """Wait until every demo service has all its replicas healthy and both answer
    through the gateway; returns instance -> node."""
    deadline = _deadline(READY_WAIT)
    shown = ""
    with httpx.Client(base_url=gateway, timeout=2.0, trust_env=False) as http:
        while True:
            state = _readiness(client, http)
            if isinstance(state, dict):
                return state
            if state != shown:
                say(state)
                shown = state
            if time.monotonic() > deadline:
                raise TimeoutError(f"services not ready after {READY_WAIT:.0f}s: {state}")
            time.sleep(0.3)


def _readiness(client: ClusterClient, http: httpx.Client) -> dict[str, str] | str:
    try:
        services = {s["name"]: s for s in client.services()}
        instances = client.instances()
    except ApiError as exc:
        return _api_wait(exc)
    waiting = []
    for name in SERVICES:
        s = services.get(name)
        if s is None:
            waiting.append(f"{name} to be known")
        elif s["healthy"] < s["desired"]:
            waiting.append(f"{name} {s['healthy']}/{s['desired']} healthy")
    if waiting:
        return "waiting for " + ", ".join(waiting)
    try:
        answers = [http.get("/counter/") for _ in range(6)]
        registry = http.get("/hyperty/user/nobody")
    except httpx.HTTPError as exc:
        return f"waiting for the gateway: {exc!r}"
    seen = {r.text.split()[0] for r in answers if r.status_code == 200 and r.text.strip()}
    if len(seen) < services["counter"]["desired"]:
        return f"waiting for the gateway to route to every counter (seen {sorted(seen)})"
    if "x-served-by" not in registry.headers:
        return f"waiting for the gateway to route to the registry ({registry.status_code})"
    return {
        i["instance"]: i["node"]
        for i in instances
        if i["service"] in SERVICES and i["state"] == "running"
    }


def _api_wait(exc: ApiError) -> str:
    if isinstance(exc, StoreUnavailable):
        return "waiting for the store: it has no leader for a moment"
    return f"waiting for the API: {exc.message}"


def pick_victim(placed: dict[str, str], spared: str) -> str:
    """A node, other than the client's, that runs a counter replica."""
    nodes = sorted(n for i, n in placed.items() if i.startswith("counter-") and n != spared)
    if not nodes:
        raise RuntimeError(f"no counter replica outside {spared}: {placed}")
    return nodes[0]


def wait_recovered(client: ClusterClient, lost: list[str], victim: str, since: float) -> bool:
    """Wait until every instance that ran on `victim` runs, healthy, elsewhere."""
    deadline = _deadline(RECOVER_WAIT)
    shown = ""
    while time.monotonic() < deadline:
        try:
            instances = {i["instance"]: i for i in client.instances()}
            moved = {e["subject"] for e in events_since(client, since) if e["kind"] == "moved"}
        except ApiError as exc:
            state = _api_wait(exc)
        else:
            pending = [
                name
                for name in lost
                if name not in moved
                or instances.get(name, {}).get("node") == victim
                or instances.get(name, {}).get("health") != "healthy"
            ]
            if not pending:
                return True
            state = f"waiting for {', '.join(pending)} to run elsewhere"
        if state != shown:
            say(state)
            shown = state
        time.sleep(0.3)
    return False


def events_since(client: ClusterClient, since: float) -> list[dict[str, Any]]:
    return [
        e
        for e in client.events(limit=300)
        if e.get("kind") in EVENT_KINDS and float(e.get("time") or 0) >= since
    ]


def describe_event(event: dict[str, Any], start: float) -> str:
    data = event.get("data") or {}
    at = f"+{float(event['time']) - start:.1f}s"
    if event["kind"] == "moved":
        where = f"{data.get('from_node', '?')} -> {data.get('to_node', '?')}"
        return f"{at}  {event['subject']} moved {where} ({event.get('reason', '')})"
    return f"{at}  {event['kind']} {event['subject']} {event.get('reason', '')}".rstrip()


@dataclass
class Outcome:
    streams: list[Stream]
    victim: str
    lost: list[str]
    killed_at: float
    recovered: bool
    events: list[dict[str, Any]]

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.streams)

    @property
    def failed(self) -> int:
        return sum(len(s.failures) for s in self.streams)


def report(outcome: Outcome, dashboard: str, keep: bool, elapsed: float) -> None:
    streams = outcome.streams
    table = Table(title="ninefold demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    each = ", ".join(f"{s.service} {s.sent}" for s in streams)
    table.add_row("requests sent", f"{outcome.sent} ({each})")
    colour = "green" if outcome.failed == 0 else "red"
    table.add_row("failed", f"[{colour}]{outcome.failed}[/{colour}]")
    gaps = ", ".join(f"{s.service} {s.longest_gap * 1000:.0f} ms" for s in streams)
    table.add_row("longest gap", f"{gaps} (between two successes)")
    table.add_row("killed", f"{outcome.victim}, running {', '.join(outcome.lost)}")
    moves = [describe_event(e, outcome.killed_at) for e in outcome.events] or ["nothing"]
    if not outcome.recovered:
        moves.append(f"[red]not everything ran elsewhere within {RECOVER_WAIT:.0f}s[/red]")
    table.add_row("where things moved", "\n".join(moves))
    for s in streams:
        table.add_row(f"{s.service} answers", _tally(s.answered_by))
    later = " (still up)" if keep else " (stopped with the cluster; --keep leaves it up)"
    table.add_row("dashboard", dashboard + later)
    table.add_row("took", f"{elapsed:.0f}s")
    console.print(table)
    failures = [line for s in streams for line in s.failures]
    for line in failures[:10]:
        console.print(f"[red]failed:[/red] {line}")
    if len(failures) > 10:
        console.print(f"... and {len(failures) - 10} more")


def _tally(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"


def fresh_start(cluster: LocalCluster) -> None:
    """Remove the data of a previous demo cluster so this one starts clean."""
    for node in cluster.spec.nodes:
        data = cluster.data_dir(node.name)
        if data.exists():
            shutil.rmtree(data)


# --- the demo ----------------------------------------------------------------------------


def run_demo(keep: bool = False, spec: Path | None = None) -> int:
    """Run the demo; 0 when every request succeeded."""
    started = time.monotonic()
    spec_path = spec or DEFAULT_SPEC
    if not spec_path.exists():
        console.print(f"[red]error:[/red] no spec at {spec_path} (give one with --spec)")
        return 2
    try:
        cluster = LocalCluster(spec_path)
    except SpecError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    running = cluster.running()
    if running:
        console.print(
            f"[red]error:[/red] cluster {cluster.spec.cluster} already runs here "
            f"(nodes {', '.join(sorted(running))}); stop it first: "
            f"ninefold down --spec {spec_path}"
        )
        return 1
    missing = [name for name in SERVICES if name not in cluster.spec.services]
    if missing:
        console.print(
            f"[red]error:[/red] {spec_path} has no service {' or '.join(missing)}; the demo "
            f"sends traffic to the services of {DEFAULT_SPEC.name} (counter and registry)"
        )
        return 2
    first = cluster.spec.nodes[0]
    gateway = f"http://{first.host_port(first.ports.gateway_http)}"
    dashboard = cluster.api_url(first.name) + "/ui/"
    fresh_start(cluster)
    say(f"starting cluster {cluster.spec.cluster} from {spec_path} (data in {cluster.root})")
    try:
        outcome = _run(cluster, gateway, keep)
    except (LocalClusterError, TimeoutError, RuntimeError, ApiError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        if not keep:
            say("stopping the cluster")
            cluster.down()
    report(outcome, dashboard, keep, time.monotonic() - started)
    if keep:
        console.print(f"stop it with: ninefold down --spec {spec_path}")
    ok = outcome.failed == 0 and outcome.sent > 0 and outcome.recovered
    return 0 if ok else 1


def _run(cluster: LocalCluster, gateway: str, keep: bool) -> Outcome:
    shown = {""}

    def progress(line: str) -> None:
        if line not in shown:
            shown.add(line)
            say(line)

    spec = cluster.spec
    cluster.up(wait=UP_WAIT, progress=progress)
    with ClusterClient(spec, timeout=3.0) as client:
        placed = wait_ready(client, gateway)
        client_node = spec.nodes[0].name
        say("ready: " + ", ".join(f"{i} on {n}" for i, n in sorted(placed.items())))
        victim = pick_victim(placed, client_node)
        lost = sorted(i for i, n in placed.items() if n == victim)

        stop = threading.Event()
        streams: list[Stream] = [
            CounterTraffic("counter", gateway, stop),
            RegistryTraffic("registry", gateway, stop),
        ]
        threads = [s.thread() for s in streams]
        say(f"sending traffic through {client_node}'s gateway {gateway}")
        for thread in threads:
            thread.start()
        try:
            time.sleep(BEFORE_KILL)
            sent = sum(s.sent for s in streams)
            say(f"killing {victim} (SIGKILL; it runs {', '.join(lost)}) after {sent} requests")
            killed_at = time.time()
            cluster.kill(victim)
            recovered = wait_recovered(client, lost, victim, killed_at)
            if recovered:
                say(f"{', '.join(lost)} running elsewhere; {AFTER_RECOVERY:.0f}s more traffic")
                time.sleep(AFTER_RECOVERY)
        finally:
            stop.set()
            for thread in threads:
                thread.join(REQUEST_TIMEOUT * 4)
        events = events_since(client, killed_at - 1.0)
    if keep:
        cluster.start(victim)
        say(f"started {victim} again; the cluster stays up")
    return Outcome(streams, victim, lost, killed_at, recovered, events)
