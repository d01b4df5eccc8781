"""`ninefold demo`: a local three-node cluster survives losing a node under traffic.

It starts the cluster of `examples/shop.yaml` on this machine (agents on
127.0.0.1-3 with `LocalCluster`, from a clean data directory), waits until the
hit counter, the Domain Registry and the notes service are healthy and routed,
then sends two streams of sequential requests through the gateway of a node
that does not run the notes' active instance (GETs of the counter; PUTs of a
hyperty each read back, now and then a filtered list), and meanwhile stores
notes through it. The notes are files in the active's replicated volume: once
the standby's copy (on this machine, so the demo reads it) has every note
stored, the demo SIGKILLs the agent of the active's node (its instances die
with it, like a machine losing power). It reads the notes back from the new
active as soon as one answers, and traffic goes on until what ran on the
killed node runs elsewhere, and a few seconds more. The report gives the
requests sent and failed, the longest time between two successful answers of
each stream, the notes stored and how many the new active has, the failover
time (from the kill to the new active's first answer), where the instances
moved, and the dashboard's address. Exit status 0 means not one request failed
and not one note was lost.

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
from ninefold.doctor import Target, check_rsync
from ninefold.local import LocalCluster, LocalClusterError
from ninefold.spec import NodeSpec, SpecError
from ninefold.volumes.layout import volume_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_SPEC = EXAMPLES / "shop.yaml"
"""The demo's spec when none is given (present in a source checkout)."""

NOTES = "notes"
NOTES_VOLUME = "data"
SERVICES = ("counter", "registry", NOTES)
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
NOTE_EVERY = 0.02
"""Seconds between storing a note and the next (notes are stored until the kill)."""
COPY_WAIT = 10.0
"""Longest wait for a standby's copy of the notes to have every stored note."""
PROBE_EVERY = 0.05
"""Seconds between two reads of the notes while waiting for the new active."""
STALE_GRACE = 1.0
"""Seconds a registry replica's read may lag another's write (its cache)."""
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
    pause = 0.0
    """Seconds between two cycles (0: none)."""

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
                if self.pause:
                    self.stop.wait(self.pause)

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
    """Register a hyperty (the reTHINK server's PUT, every field it requires),
    then read it back by its URL from whichever replica answers; every 10th
    cycle a search of the user's hyperties. A replica serves reads from a cache
    its store watch feeds, so a read right after another replica's write may
    be a few milliseconds old: a stale read is read again for up to
    STALE_GRACE before it counts as a failure."""

    user = "/hyperty/user/" + quote(USER, safe="")

    def requests(self, cycle: int) -> Iterator[tuple[str, str, dict[str, Any], Check]]:
        hyperty_id = quote(f"hyperty://shop.example/{cycle % 5}", safe="")
        descriptor = f"hyperty-catalogue://shop.example/demo/{cycle}"
        body = {
            "descriptor": descriptor,
            "expires": 600,
            "resources": ["chat", "video"] if cycle % 2 else ["chat"],
            "dataSchemes": ["comm"],
            "runtime": "runtime://shop.example/demo",
            "status": "live",
        }
        yield "PUT", f"{self.user}/{hyperty_id}", {"json": body}, self._served
        yield "GET", f"/hyperty/url/{hyperty_id}", {}, lambda r: self._read_back(r, descriptor)
        if cycle % 10 == 0:
            yield "GET", f"{self.user}/hy?resources=chat,video", {}, self._served

    def _served(self, response: httpx.Response) -> str | None:
        self.answered_by[response.headers.get("x-served-by", "?")] += 1
        return None

    def _read_back(self, response: httpx.Response, descriptor: str) -> str | None:
        self._served(response)
        problem = _descriptor_is(response, descriptor)
        deadline = time.monotonic() + STALE_GRACE
        while problem is not None and problem.startswith("stale") and time.monotonic() < deadline:
            time.sleep(0.005)
            try:
                again = httpx.get(response.request.url, timeout=REQUEST_TIMEOUT, trust_env=False)
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}: {exc}"
            problem = _descriptor_is(again, descriptor)
        return problem


@dataclass
class NotesTraffic(Stream):
    """POST a note, again and again; remembers each note stored (id -> text)."""

    stored: dict[str, str] = field(default_factory=dict)
    last_stored: float = 0.0
    """When (monotonic) the last note was stored."""
    pause = NOTE_EVERY

    def requests(self, cycle: int) -> Iterator[tuple[str, str, dict[str, Any], Check]]:
        text = f"note {cycle} of the demo"
        yield "POST", f"/{NOTES}/", {"content": text.encode()}, lambda r: self._stored(r, text)

    def _stored(self, response: httpx.Response, text: str) -> str | None:
        try:
            note_id = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            return f"not a stored note: {response.text[:80]!r}"
        self.stored[note_id] = text
        self.last_stored = time.monotonic()
        self.answered_by[response.headers.get("x-served-by", "?")] += 1
        return None


@dataclass
class FailoverProbe:
    """After the kill, reads every note through the gateway until an instance
    other than the killed active answers: when, which, and what it has."""

    gateway: str
    old_active: str
    killed: float
    """When (monotonic) the active's node was killed."""
    stop: threading.Event
    answered_after: float | None = None
    new_active: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    last_problem: str = "no answer yet"

    def run(self) -> None:
        deadline = self.killed + RECOVER_WAIT
        with httpx.Client(base_url=self.gateway, timeout=2.0, trust_env=False) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                if self._read(http):
                    return
                self.stop.wait(PROBE_EVERY)

    def _read(self, http: httpx.Client) -> bool:
        try:
            response = http.get(f"/{NOTES}/")
        except httpx.HTTPError as exc:
            self.last_problem = f"{type(exc).__name__}: {exc}"
            return False
        who = response.headers.get("x-served-by", "")
        if response.status_code != 200 or who in ("", self.old_active):
            self.last_problem = f"{response.status_code} from {who or 'the gateway'}"
            return False
        try:
            self.notes = {n["id"]: n["text"] for n in response.json()}
        except (ValueError, KeyError, TypeError):
            self.last_problem = f"not a list of notes: {response.text[:80]!r}"
            return False
        self.answered_after = time.monotonic() - self.killed
        self.new_active = who
        return True

    def thread(self) -> threading.Thread:
        return threading.Thread(target=self.run, name="failover-probe", daemon=True)


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
        elif s["mode"] == "active-passive" and not s.get("active"):
            waiting.append(f"{name} to have an active")
    if waiting:
        return "waiting for " + ", ".join(waiting)
    try:
        answers = [http.get("/counter/") for _ in range(6)]
        registry = http.get("/hyperty/user/nobody")
        notes = http.get(f"/{NOTES}/healthz")
    except httpx.HTTPError as exc:
        return f"waiting for the gateway: {exc!r}"
    seen = {r.text.split()[0] for r in answers if r.status_code == 200 and r.text.strip()}
    if len(seen) < services["counter"]["desired"]:
        return f"waiting for the gateway to route to every counter (seen {sorted(seen)})"
    if "x-served-by" not in registry.headers:
        return f"waiting for the gateway to route to the registry ({registry.status_code})"
    active = services[NOTES]["active"].partition("/")[2]
    if notes.status_code != 200 or notes.headers.get("x-served-by") != active:
        return f"waiting for the gateway to route to the notes' active {active}"
    return {
        i["instance"]: i["node"]
        for i in instances
        if i["service"] in SERVICES and i["state"] == "running"
    }


def _api_wait(exc: ApiError) -> str:
    if isinstance(exc, StoreUnavailable):
        return "waiting for the store: it has no leader for a moment"
    return f"waiting for the API: {exc.message}"


Where = tuple[str, str]
"""(instance, node)."""


def notes_roles(client: ClusterClient) -> tuple[Where | None, Where | None]:
    """The notes' running active and a running, healthy standby, if any."""
    active = standby = None
    for i in client.instances():
        if i["service"] != NOTES or i["state"] != "running":
            continue
        if i["role"] == "active":
            active = (i["instance"], i["node"])
        elif i["role"] == "standby" and i["health"] == "healthy":
            standby = (i["instance"], i["node"])
    return active, standby


def notes_copy(cluster: LocalCluster, node: str) -> Path:
    """The directory of `node`'s copy of the notes (every node is on this machine)."""
    volume = cluster.spec.services[NOTES].volumes[NOTES_VOLUME]
    return volume_dir(cluster.data_dir(node), NOTES, NOTES_VOLUME, volume)


def copied(directory: Path, wanted: set[str]) -> int:
    """How many of the `wanted` notes are in `directory`."""
    return len(wanted & {p.stem for p in directory.glob("*.note")})


def wait_copied(directory: Path, wanted: set[str]) -> bool:
    """Wait until `directory` has every `wanted` note."""
    deadline = _deadline(COPY_WAIT)
    while copied(directory, wanted) < len(wanted):
        if time.monotonic() > deadline:
            return False
        time.sleep(PROBE_EVERY)
    return True


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
class NotesOutcome:
    """The notes stored before the kill, and what became of them."""

    writer: NotesTraffic
    standby: Where
    """The standby whose copy had every note when its active was killed."""
    copy_lag: float | None
    """Seconds from the last note stored to that copy having every note (None:
    not within COPY_WAIT)."""
    probe: FailoverProbe | None = None
    new_active: Where | None = None
    new_standby: Where | None = None
    """Where the killed active's instance runs again, as a standby."""
    new_standby_has: int = 0

    @property
    def written(self) -> int:
        return len(self.writer.stored)

    @property
    def survived(self) -> int:
        """Notes the new active listed, each with the text that was stored."""
        got = self.probe.notes if self.probe else {}
        return sum(1 for note, text in self.writer.stored.items() if got.get(note) == text)

    @property
    def ok(self) -> bool:
        answered = self.probe is not None and self.probe.answered_after is not None
        return answered and self.written > 0 and self.survived == self.written


@dataclass
class Outcome:
    client: str
    """The node whose gateway the traffic went through."""
    streams: list[Stream]
    notes: NotesOutcome
    victim: str
    lost: list[str]
    killed_at: float
    recovered: bool
    events: list[dict[str, Any]]

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.streams) + self.notes.writer.sent

    @property
    def failed(self) -> int:
        return sum(len(s.failures) for s in [*self.streams, self.notes.writer])


def report(outcome: Outcome, dashboard: str, keep: bool, elapsed: float) -> None:
    streams = outcome.streams
    notes = outcome.notes
    table = Table(title="ninefold demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    each = ", ".join(f"{s.service} {s.sent}" for s in [*streams, notes.writer])
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
    table.add_row("notes written", _notes_written(notes, outcome.client))
    table.add_row("notes survived", _notes_survived(notes))
    table.add_row("failover time", _failover_time(notes))
    later = " (still up)" if keep else " (stopped with the cluster; --keep leaves it up)"
    table.add_row("dashboard", dashboard + later)
    table.add_row("took", f"{elapsed:.0f}s")
    console.print(table)
    failures = [line for s in [*streams, notes.writer] for line in s.failures]
    for line in failures[:10]:
        console.print(f"[red]failed:[/red] {line}")
    if len(failures) > 10:
        console.print(f"... and {len(failures) - 10} more")


def _notes_written(notes: NotesOutcome, client: str) -> str:
    instance, node = notes.standby
    line = f"{notes.written} through {client}'s gateway before the kill"
    if notes.copy_lag is None:
        return f"{line}; [red]{node}'s copy ({instance}) lacked some {COPY_WAIT:.0f}s later[/red]"
    return f"{line}; {node}'s copy ({instance}) had them all {notes.copy_lag:.2f}s after the last"


def _notes_survived(notes: NotesOutcome) -> str:
    probe = notes.probe
    if probe is None or probe.answered_after is None:
        return "[red]unknown: no new active answered[/red]"
    colour = "green" if notes.ok else "red"
    by = probe.new_active
    if notes.new_active is not None and notes.new_active[0] == by:
        by += f" on {notes.new_active[1]}"
    line = (
        f"[{colour}]{notes.survived} of {notes.written}[/{colour}], listed by the new active {by}"
    )
    if notes.new_standby is not None:
        instance, node = notes.new_standby
        line += f"\n{notes.new_standby_has} in {node}'s copy for the new standby {instance}"
    return line


def _failover_time(notes: NotesOutcome) -> str:
    probe = notes.probe
    if probe is None or probe.answered_after is None:
        last = probe.last_problem if probe else "not probed"
        return f"[red]no new active answered within {RECOVER_WAIT:.0f}s ({last})[/red]"
    return (
        f"{probe.answered_after:.1f}s, from the kill to the first answer of the new "
        f"active {probe.new_active}"
    )


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
            f"sends traffic to the services of {DEFAULT_SPEC.name} (counter, registry "
            "and notes)"
        )
        return 2
    notes = cluster.spec.services[NOTES]
    volume = notes.volumes.get(NOTES_VOLUME)
    if notes.mode != "active-passive" or volume is None or not volume.replicated:
        console.print(
            f"[red]error:[/red] {spec_path}: the demo fails {NOTES} over, so it must be "
            f"active-passive with a replicated volume {NOTES_VOLUME!r}, as in {DEFAULT_SPEC.name}"
        )
        return 2
    rsync = check_rsync(Target(cluster.spec, cluster.spec.nodes[0], cluster.root))
    if rsync.status == "fail":
        console.print(
            f"[red]error:[/red] {rsync.detail}; the demo's {NOTES} mirror their volume with "
            f"rsync ({rsync.fix})"
        )
        return 2
    fresh_start(cluster)
    say(f"starting cluster {cluster.spec.cluster} from {spec_path} (data in {cluster.root})")
    try:
        outcome = _run(cluster, keep)
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
    dashboard = cluster.api_url(outcome.client) + "/ui/"
    report(outcome, dashboard, keep, time.monotonic() - started)
    if keep:
        console.print(f"stop it with: ninefold down --spec {spec_path}")
    ok = outcome.failed == 0 and outcome.sent > 0 and outcome.recovered and outcome.notes.ok
    return 0 if ok else 1


def _gateway(node: NodeSpec) -> str:
    return f"http://{node.host_port(node.ports.gateway_http)}"


def _run(cluster: LocalCluster, keep: bool) -> Outcome:
    shown = {""}

    def progress(line: str) -> None:
        if line not in shown:
            shown.add(line)
            say(line)

    spec = cluster.spec
    cluster.up(wait=UP_WAIT, progress=progress)
    with ClusterClient(spec, timeout=3.0) as client:
        placed = wait_ready(client, _gateway(spec.nodes[0]))
        active, standby = notes_roles(client)
        if active is None or standby is None:
            raise RuntimeError(f"{NOTES} has no running active or no healthy standby")
        # The node to kill runs the notes' active; the traffic goes through another's gateway.
        victim = active[1]
        client_node = next(node for node in spec.nodes if node.name != victim)
        gateway = _gateway(client_node)
        if client_node is not spec.nodes[0]:
            placed = wait_ready(client, gateway)
        say(
            "ready: "
            + ", ".join(
                f"{i} on {n}" + (" (active)" if i == active[0] else "")
                for i, n in sorted(placed.items())
            )
        )
        lost = sorted(i for i, n in placed.items() if n == victim)

        stop = threading.Event()
        streams: list[Stream] = [
            CounterTraffic("counter", gateway, stop),
            RegistryTraffic("registry", gateway, stop),
        ]
        writer = NotesTraffic(NOTES, gateway, threading.Event())
        threads = [s.thread() for s in [*streams, writer]]
        say(f"sending traffic through {client_node.name}'s gateway {gateway}, storing notes")
        for thread in threads:
            thread.start()
        notes = NotesOutcome(writer, standby, None)
        probe_thread: threading.Thread | None = None
        try:
            time.sleep(BEFORE_KILL)
            writer.stop.set()
            threads[-1].join(REQUEST_TIMEOUT * 2)
            notes.copy_lag = _wait_standby_copy(cluster, writer, standby)
            sent = sum(s.sent for s in [*streams, writer])
            say(f"killing {victim} (SIGKILL; it runs {', '.join(lost)}) after {sent} requests")
            killed_at = time.time()
            notes.probe = FailoverProbe(gateway, active[0], time.monotonic(), stop)
            cluster.kill(victim)
            probe_thread = notes.probe.thread()
            probe_thread.start()
            recovered = wait_recovered(client, lost, victim, killed_at)
            probe_thread.join(max(0.0, notes.probe.killed + RECOVER_WAIT - time.monotonic()))
            _say_failover(notes)
            if recovered:
                say(f"{', '.join(lost)} running elsewhere; {AFTER_RECOVERY:.0f}s more traffic")
                time.sleep(AFTER_RECOVERY)
        finally:
            stop.set()
            writer.stop.set()
            for thread in [*threads, *([probe_thread] if probe_thread is not None else [])]:
                thread.join(REQUEST_TIMEOUT * 4)
        if recovered:
            _check_new_standby(cluster, client, notes)
        events = events_since(client, killed_at - 1.0)
        from ninefold.decide.availability import summary_lines  # docs/availability.md

        try:
            for line in summary_lines(client.availability()):
                say(f"measured availability: {line}")
        except ApiError as exc:
            say(f"measured availability: not known ({exc.message})")
    if keep:
        cluster.start(victim)
        say(f"started {victim} again; the cluster stays up")
    return Outcome(client_node.name, streams, notes, victim, lost, killed_at, recovered, events)


def _wait_standby_copy(cluster: LocalCluster, writer: NotesTraffic, standby: Where) -> float | None:
    """Wait until the standby's copy has every note stored; the seconds from the
    last note stored until then, or None if it does not within COPY_WAIT."""
    instance, node = standby
    wanted = set(writer.stored)
    say(f"stored {len(wanted)} notes; waiting for {node}'s copy ({instance}, standby) to have them")
    directory = notes_copy(cluster, node)
    if not wait_copied(directory, wanted):
        say(
            f"[red]{node}'s copy has {copied(directory, wanted)} of {len(wanted)} notes "
            f"after {COPY_WAIT:.0f}s[/red]"
        )
        return None
    lag = time.monotonic() - writer.last_stored
    say(f"{node}'s copy has all {len(wanted)} notes, {lag:.2f}s after the last was stored")
    return lag


def _say_failover(notes: NotesOutcome) -> None:
    probe = notes.probe
    if probe is None or probe.answered_after is None:
        last = probe.last_problem if probe else "not probed"
        say(f"[red]no new {NOTES} active answered within {RECOVER_WAIT:.0f}s ({last})[/red]")
        return
    say(
        f"{probe.new_active} answered {probe.answered_after:.1f}s after the kill with "
        f"{notes.survived} of the {notes.written} notes"
    )


def _check_new_standby(cluster: LocalCluster, client: ClusterClient, notes: NotesOutcome) -> None:
    """Wait until the killed active's instance, a standby on another node now,
    has every note in its copy (the new active sends it there)."""
    try:
        notes.new_active, standby = notes_roles(client)
    except ApiError as exc:
        say(f"cannot tell where the new standby runs: {exc.message}")
        return
    if standby is None:
        return
    instance, node = standby
    wanted = set(notes.writer.stored)
    directory = notes_copy(cluster, node)
    done = wait_copied(directory, wanted)
    notes.new_standby = standby
    notes.new_standby_has = copied(directory, wanted)
    if done:
        say(f"{node}'s copy for the new standby {instance} has all {len(wanted)} notes too")
    else:
        say(f"{node}'s copy for {instance} has {notes.new_standby_has} of {len(wanted)} notes")
