"""Hydra's scenarios (seed 002) run against a lab whose spec has a pool, with
client traffic on, and what they showed (`ninefold lab drill`, docs/pools.md).

    S1  a server down        SIGKILL every process of one pool machine
    S2  a site down          every node and machine of one zone killed
    S3  a zone down          the zone cut off (Lab.isolate) and left so
    S4  a zone isolated,     the zone cut off until its pool machine is
        then healed          replaced, then the network healed
    S5  a compromised server `ninefold node quarantine` of one pool machine,
                             whose TLS files an attacker copied beforehand

While a drill runs, the client namespace sends GETs to a pool service's
route through the gateway of a node outside the fault (and through the
gateway VIP when the spec has one), puts a key through the API every 0.5 s
(the store's quorum), and a sampler reads every node's addresses every
100 ms (a VIP on two nodes). The report says, from the fault: when the leader
saw a victim lost (`node-lost`), fenced it (`machine-fenced`), created its
replacement (`machine-created`), and when a replacement served (an instance
of a pool service running and healthy on it); requests sent and failed;
store writes failed; samples with two VIP holders or two actives; the pool's
machines at the end. Failed requests are reported; a replacement that never
serves, a victim never fenced, a duplicate machine, a machine made in the
zone that is down, two holders, or a pool not back at its count are failed
expectations (`DrillReport.problems`).

A zone cut off stays cut off as machines come and go: the lab's isolation is
a snapshot of the zone's addresses, and a replacement made elsewhere may get
the address its victim had (which the snapshot drops), so the drill applies
the isolation again whenever the lab's machines change.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ninefold import defaults
from ninefold.lab import netns
from ninefold.lab.errors import LabError
from ninefold.lab.lab import Lab
from ninefold.spec.pools import POOL_LABEL, PoolSpec

Progress = Callable[[str], None]

SCENARIOS: dict[str, str] = {
    "S1": "a server down",
    "S2": "a site down",
    "S3": "a zone down",
    "S4": "a zone isolated, then healed",
    "S5": "a compromised server",
}

CLUSTER_TAG = "ninefold-cluster"
POOL_TAG = "ninefold-pool"
"""The tags every pool machine carries (ninefold.pools.provider's; not
imported from there: the pools' lab provider depends on the lab)."""
SERVE_TIMEOUT = 120.0
"""Seconds a replacement has, from the fault, to serve."""
READY_TIMEOUT = 180.0
"""Seconds the lab has to be whole (pool at its count, services healthy) before a drill."""
SETTLE_TIMEOUT = 60.0
"""Seconds, once a replacement serves, for the pool to be back at its count."""
AFTER_HEAL = 2 * defaults.POOL_LIST_INTERVAL + 1.0
"""Seconds S4 watches the healed cluster (two provider listings) for duplicates."""
REQUEST_INTERVAL = 0.02
WRITE_INTERVAL = 0.5
SAMPLE_INTERVAL = 0.1
POLL = 0.25
KV_KEY = "ninefold-drill/quorum"
QUORUM_GAP = 5.0
"""Seconds without a successful store write that mean the quorum was lost:
longer than an etcd election (election timeout 1 s, then a vote) plus a
write's own timeout (3 s)."""


class DrillError(LabError):
    """The drill cannot run as asked (no pool, no such zone, S5): a usage error."""


def _quiet(_: str) -> None:
    pass


# --- the report ---------------------------------------------------------------------------


@dataclass
class DrillReport:
    scenario: str
    title: str
    lab: str
    pool: str
    zone: str | None
    """The zone faulted (S2-S4), or the victim's (S1)."""
    fault: str
    """What was done, in words."""
    victims: list[str]
    """The pool machines lost."""
    nodes_hit: list[str]
    """Hand-written nodes killed or cut off with them."""
    observer: str
    """The node whose API and gateway the drill used (outside the fault)."""
    replacements: dict[str, str] = field(default_factory=dict)
    """Machines created after the fault -> their zone."""
    detect_s: float | None = None
    fence_s: float | None = None
    replace_s: float | None = None
    serve_s: float | None = None
    served_by: str | None = None
    """`instance on node`: the first replacement's instance that served."""
    heal_s: float | None = None
    """S4: seconds from the fault to the network healed."""
    rejoined_s: float | None = None
    """S4: seconds from the heal to the zone's hand-written nodes up again."""
    revoked_s: float | None = None
    """S5: seconds from the quarantine to the victim's certificate refused by
    every watched port (each observer's API and etcd client port)."""
    refused: list[str] = field(default_factory=list)
    """S5: the ports that refused the victim's certificate (`n1 api`, ...)."""
    requests: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    longest_gap_s: float = 0.0
    """The longest time without a successful request, from the fault on."""
    vip: str | None = None
    vip_requests: int = 0
    vip_failed: int = 0
    vip_longest_gap_s: float = 0.0
    vip_samples: int = 0
    vip_doubles: int = 0
    """Samples that saw a VIP (the gateway's or a service's) on two nodes."""
    two_actives: int = 0
    """Status reads that saw an active-passive service with two actives."""
    store_writes: int = 0
    store_failed: int = 0
    store_errors: dict[str, int] = field(default_factory=dict)
    store_longest_gap_s: float = 0.0
    quorum_kept: bool = True
    """Store writes through the API never stopped succeeding for longer than
    QUORUM_GAP (a raft election fails a write or two; a lost quorum fails
    them all) and the last one succeeded."""
    voters_before: list[str] | None = None
    voters_after: list[str] | None = None
    machines: dict[str, str] = field(default_factory=dict)
    """The pool's machines at the end (the provider's listing) -> zone."""
    count: int = 0
    timeline: list[str] = field(default_factory=list)
    """The pool's and nodes' events from the fault on: `+12.3s kind subject: reason`."""
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Failed expectations; empty: the drill passed."""
    seconds: float = 0.0
    """How long the drill ran, fault to end."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def format_report(r: DrillReport) -> list[str]:
    """The report as lines for people."""
    lines = [f"drill {r.scenario} ({r.title}) on lab {r.lab}, pool {r.pool}: {r.fault}"]
    replaced = ", ".join(f"{n} (zone {z})" for n, z in r.replacements.items()) or "none"
    lines += [
        f"  detected     {_s(r.detect_s):>8}  node-lost {', '.join(r.victims)}",
        f"  fenced       {_s(r.fence_s):>8}  machine-fenced",
        f"  replaced     {_s(r.replace_s):>8}  machine-created {replaced}",
        f"  serving      {_s(r.serve_s):>8}  {r.served_by or 'no replacement served'}",
    ]
    if r.scenario == "S5":
        lines.insert(1, f"  revoked      {_s(r.revoked_s):>8}  the stolen certificate refused by "
                        f"{len(r.refused)} ports ({', '.join(r.refused) or 'none'})")  # fmt: skip
    if r.heal_s is not None:
        back = ", ".join(r.nodes_hit) or "the zone"
        lines.append(
            f"  healed       {_s(r.heal_s):>8}  network whole again; {back} up "
            f"{_s(r.rejoined_s)} later"
        )
    errors = ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items()))
    lines.append(
        f"  requests     {r.requests} through {r.observer}'s gateway, {r.failed} failed"
        + (f" ({errors})" if errors else "")
        + f", longest gap {r.longest_gap_s:.2f} s"
    )
    if r.vip is not None:
        lines.append(
            f"  VIP {r.vip}  {r.vip_requests} requests, {r.vip_failed} failed, longest gap "
            f"{r.vip_longest_gap_s:.2f} s; two holders in {r.vip_doubles} of "
            f"{r.vip_samples} samples"
        )
    if r.two_actives:
        lines.append(f"  two actives  in {r.two_actives} status reads")
    voters = ", ".join(r.voters_after) if r.voters_after is not None else "unknown"
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(r.store_errors.items()))
    lines.append(
        f"  store        {r.store_writes} writes through {r.observer}'s API, "
        f"{r.store_failed} failed"
        + (f" ({kinds})" if kinds else "")
        + f", longest gap {r.store_longest_gap_s:.2f} s: quorum "
        f"{'kept' if r.quorum_kept else 'NOT kept'}; voting members {voters}"
    )
    machines = ", ".join(f"{n} ({z})" for n, z in r.machines.items()) or "none"
    lines.append(f"  machines     {len(r.machines)} of {r.count}: {machines}")
    lines += [f"  note: {n}" for n in r.notes]
    if r.timeline:
        lines.append("  events (from the fault):")
        lines += [f"    {line}" for line in r.timeline]
    lines += [f"  FAILED: {p}" for p in r.problems]
    lines.append("ok" if r.ok else f"failed: {len(r.problems)} expectation(s) not met")
    return lines


# --- talking to the cluster from the client namespace ---------------------------------------


class Client:
    """Requests from the lab's client namespace: the API (HTTPS with the
    cluster CA under `security.tls`, the CLI's token when one is configured)
    and the gateways."""

    def __init__(self, lab: Lab, token: str | None = None) -> None:
        self.lab = lab
        self.ns = lab.namespace("client")
        self.tls = lab.api_tls()
        if token is None:
            from ninefold.client import ApiError, configured_token

            try:
                token = configured_token()
            except ApiError as exc:
                raise DrillError(str(exc)) from None
        self.token = token

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float = 2.0,
        api: bool = True,
    ) -> tuple[int, bytes]:
        """(status, body); OSError when nothing answers."""
        headers = {}
        if api and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return netns.http_request(self.ns, method, url, timeout, self.tls, data, headers)

    def get_json(self, node: str, path: str, timeout: float = 2.0) -> Any:
        """GET an API path through `node`; None unless it answers 200 with JSON."""
        try:
            status, body = self.request("GET", self.lab.api_url(node) + path, timeout=timeout)
            return json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None

    def status(self, via: Iterable[str]) -> dict[str, Any] | None:
        for node in via:
            data = self.get_json(node, "/v1/status")
            if isinstance(data, dict):
                return data
        return None

    def events(self, via: Iterable[str]) -> list[dict[str, Any]] | None:
        for node in via:
            data = self.get_json(node, f"/v1/events?limit={defaults.EVENTS_KEEP}", timeout=5.0)
            if isinstance(data, list):
                return data
        return None


# --- what runs during a drill -----------------------------------------------------------------


class Repeater:
    """Sends one request every `interval` on a thread; keeps (start time,
    end time, ok, what went wrong) per request, times from time.time()."""

    def __init__(self, send: Callable[[], tuple[bool, str]], interval: float) -> None:
        self._send = send
        self._interval = interval
        self.results: list[tuple[float, float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.time()
            try:
                ok, what = self._send()
            except OSError as exc:
                ok, what = False, type(exc).__name__
            except Exception as exc:  # the drill must go on: counted as a failure
                ok, what = False, type(exc).__name__
            self.results.append((began, time.time(), ok, what))
            self._stop.wait(max(0.0, self._interval - (time.time() - began)))

    def start(self) -> Repeater:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def since(self, t: float) -> list[tuple[float, float, bool, str]]:
        return [r for r in list(self.results) if r[0] >= t]

    def ok_count(self) -> int:
        return sum(1 for r in list(self.results) if r[2])

    def summary(self, t: float, end: float) -> tuple[int, int, dict[str, int], float]:
        """Requests started in [t, end]: (sent, failed, failures by kind, the
        longest time without a success, counted from t)."""
        window = [r for r in list(self.results) if t <= r[0] <= end]
        kinds: dict[str, int] = {}
        for r in window:
            if not r[2]:
                kinds[r[3]] = kinds.get(r[3], 0) + 1
        marks = [t, *sorted(r[1] for r in window if r[2] and r[1] <= end), end]
        gap = max(b - a for a, b in itertools.pairwise(marks))
        return len(window), sum(kinds.values()), kinds, round(gap, 3)


def _get(client: Client, url: str) -> Callable[[], tuple[bool, str]]:
    def send() -> tuple[bool, str]:
        status, _ = client.request("GET", url, timeout=2.0, api=False)
        return 200 <= status < 400, str(status)

    return send


def _put(client: Client, url: str) -> Callable[[], tuple[bool, str]]:
    counter = iter(range(1, 1 << 62))

    def send() -> tuple[bool, str]:
        status, _ = client.request("PUT", url, {"value": str(next(counter))}, timeout=3.0)
        return status == 200, str(status)

    return send


class HolderSampler:
    """Every 100 ms, which nodes (hand-written and machines) carry each VIP;
    keeps the samples that saw one on two nodes."""

    def __init__(self, lab: Lab, vips: list[str]) -> None:
        self.lab, self.vips = lab, vips
        self.samples = 0
        self.doubles: list[tuple[float, str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.time()
            with contextlib.suppress(Exception):
                self.lab.machines()  # re-reads the lab's state: machines come and go
            held: dict[str, set[str]] = {}
            for node in self.lab.nodes:
                with contextlib.suppress(Exception):  # a machine destroyed meanwhile
                    held[node] = self.lab.addresses(node)
            for vip in self.vips:
                holders = sorted(n for n, addresses in held.items() if vip in addresses)
                if len(holders) > 1:
                    self.doubles.append((began, vip, holders))
            self.samples += 1
            self._stop.wait(max(0.0, SAMPLE_INTERVAL - (time.time() - began)))

    def start(self) -> HolderSampler:
        if self.vips:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def doubled_since(self, t: float) -> int:
        return len({began for began, _, _ in list(self.doubles) if began >= t})


class ZoneCut:
    """Keeps a zone isolated as the lab's machines come and go: the lab's
    isolation drops the addresses the nodes had when it was applied."""

    def __init__(self, lab: Lab, zone: str, say: Progress) -> None:
        self.lab, self.zone, self.say = lab, zone, say
        self.reapplied: list[str] = []
        self.errors: list[str] = []
        self._shape: tuple[tuple[str, str, str], ...] = ()
        self._had: dict[str, str] = {}
        """address -> the last node seen with it."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> tuple[tuple[str, str, str], ...]:
        self.lab.machines()  # re-reads the lab's state
        state = self.lab.state["nodes"]
        return tuple(sorted((n, s["address"], s["zone"]) for n, s in state.items()))

    def apply(self) -> None:
        for attempt in range(5):
            shape = self._now()
            try:
                self.lab.isolate(self.zone)
            except LabError as exc:  # a machine's namespace deleted meanwhile
                if attempt == 4:
                    raise
                self.errors.append(str(exc))
                time.sleep(0.1)
                continue
            self._shape = shape
            self._had.update({address: name for name, address, _ in shape})
            return

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                shape = self._now()
                if shape == self._shape:
                    continue
                before = {n for n, _, _ in self._shape}
                had = dict(self._had)
                new = [
                    f"{n} {a}" + (f" (the address {had[a]} had)" if had.get(a, n) != n else "")
                    for n, a, _ in shape
                    if n not in before
                ]
                self.apply()
                if new:
                    self.reapplied.append(", ".join(new))
                    self.say(f"zone {self.zone} isolated again: new machine {', '.join(new)}")
            except Exception as exc:
                self.errors.append(repr(exc))

    def start(self) -> ZoneCut:
        self.apply()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# --- reading the cluster ------------------------------------------------------------------


def pool_machines(lab: Lab, pool: str) -> dict[str, dict[str, Any]]:
    """The lab's machines carrying the cluster's and the pool's tags (the
    provider's listing): name -> zone, address, tags, powered."""
    return {
        name: m
        for name, m in lab.machines().items()
        if m.get("tags", {}).get(POOL_TAG) == pool
        and m.get("tags", {}).get(CLUSTER_TAG) == lab.spec.cluster
    }


def pool_services(lab: Lab, pool: str) -> list[str]:
    """Services placed on the pool (`placement.constraints: {pool: NAME}`)."""
    return sorted(
        name
        for name, service in lab.spec.services.items()
        if service.placement.constraints.get(POOL_LABEL) == pool
    )


def serving(status: dict[str, Any], services: Iterable[str]) -> dict[str, str]:
    """instance -> node, for the services' instances running and healthy (or unchecked)."""
    wanted = set(services)
    return {
        i["instance"]: i["node"]
        for i in status.get("instances", [])
        if i["service"] in wanted and i["state"] == "running" and i["health"] in ("healthy", "none")
    }


def two_actives(status: dict[str, Any]) -> bool:
    actives: dict[str, int] = {}
    for i in status.get("instances", []):
        if i.get("role") == "active" and i.get("state") == "running":
            actives[i["service"]] = actives.get(i["service"], 0) + 1
    return any(n > 1 for n in actives.values())


def store_voters(lab: Lab, via: Iterable[str]) -> list[str] | None:
    """The embedded store's voting members, asked with etcdctl from a store
    node's namespace; None when none answers."""
    tls = lab.spec.security.tls is not None
    for name in via:
        node = lab.spec.node(name)
        if not node.store:
            continue
        scheme = "https" if tls else "http"
        argv = ["etcdctl", "--endpoints", f"{scheme}://{node.host_port(node.ports.store_client)}"]
        if tls:
            files = lab.data_dir(name) / "tls"
            argv += ["--cacert", str(files / "ca.crt"), "--cert", str(files / "node.crt"),
                     "--key", str(files / "node.key")]  # fmt: skip
        argv += ["--command-timeout", "3s", "member", "list", "-w", "json"]
        try:
            done = lab.run(name, argv, capture_output=True, text=True, timeout=10)
            members = json.loads(done.stdout)["members"] if done.returncode == 0 else None
        except (OSError, ValueError, KeyError, LabError):
            members = None
        except Exception:  # subprocess.TimeoutExpired
            members = None
        if members is not None:
            return sorted(m.get("name", "?") for m in members if not m.get("isLearner"))
    return None


# --- choosing the fault -------------------------------------------------------------------


@dataclass
class Plan:
    zone: str | None
    victims: list[str]
    nodes_hit: list[str]
    observer: str
    observers: list[str]
    """Hand-written nodes outside the fault, the observer first."""


def _pool(lab: Lab, pool: str | None) -> tuple[str, PoolSpec]:
    pools = lab.spec.pools
    if not pools:
        raise DrillError(
            f"lab {lab.id}'s spec has no pool: a drill needs one (pools: in the spec, "
            "docs/pools.md)"
        )
    if pool is None:
        name = sorted(pools)[0]
        return name, pools[name]
    if pool not in pools:
        raise DrillError(f"no pool named {pool!r} in lab {lab.id} (pools: {', '.join(pools)})")
    return pool, pools[pool]


def _plan(
    lab: Lab, scenario: str, zone: str | None, pool: str, spec: PoolSpec, status: dict[str, Any]
) -> Plan:
    written = [n.name for n in lab.spec.nodes]
    up = {n["name"] for n in status.get("nodes", []) if n.get("state") == "up"}
    machines = {n: m for n, m in pool_machines(lab, pool).items() if n in up}
    zones = lab.zones
    if zone is not None and zone not in zones:
        raise DrillError(f"no zone named {zone!r} in lab {lab.id} (zones: {', '.join(zones)})")

    def where() -> str:
        return ", ".join(f"{n} in {m['zone']}" for n, m in sorted(machines.items())) or "none"

    def outside(z: str | None, victims: list[str]) -> list[str]:
        return [n for n in written if n not in victims and (z is None or lab.zone(n) != z)]

    if scenario in ("S1", "S5"):
        chosen = [n for n, m in machines.items() if zone is None or m["zone"] == zone]
        if not chosen:
            raise DrillError(f"zone {zone} holds no machine of pool {pool} that is up "
                             f"(its machines: {where()})")  # fmt: skip
        number = {n: (int(n.rsplit("-", 1)[-1]), n) for n in chosen}
        # S1 the oldest machine; S5 the newest (a replacement, after other drills)
        victim = (max if scenario == "S5" else min)(chosen, key=lambda n: number[n])
        observers = outside(None, [victim])
        return Plan(machines[victim]["zone"], [victim], [], observers[0], observers)

    store = [n.name for n in lab.spec.nodes if n.store]

    def fit(z: str) -> str | None:
        """Why zone z cannot be faulted (None: it can)."""
        inside = [n for n, m in machines.items() if m["zone"] == z]
        if not inside:
            return f"zone {z} holds no machine of pool {pool} that is up (its machines: {where()})"
        cut = [n for n in store if lab.zone(n) == z]
        if len(store) - len(cut) < len(store) // 2 + 1:
            return (f"zone {z} holds {len(cut)} of the {len(store)} store members: without it "
                    "the store has no quorum and nothing can heal")  # fmt: skip
        if not [x for x in spec.zones if x != z]:
            return f"pool {pool} has no zone but {z}: a replacement would have nowhere to go"
        if not outside(z, []):
            return f"every hand-written node is in zone {z}: nothing would watch from outside"
        return None

    if zone is None:
        candidates = sorted(
            (z for z in zones if fit(z) is None),
            key=lambda z: (
                not [n for n in store if lab.zone(n) == z],
                sum(1 for m in machines.values() if m["zone"] == z) != 1,
                z,
            ),
        )
        if not candidates:
            raise DrillError(f"no zone of lab {lab.id} can be faulted: "
                             + "; ".join(str(fit(z)) for z in zones))  # fmt: skip
        zone = candidates[0]
    elif (why := fit(zone)) is not None:
        raise DrillError(why)
    victims = sorted(n for n, m in machines.items() if m["zone"] == zone)
    hit = [n for n in written if lab.zone(n) == zone]
    observers = sorted(outside(zone, []), key=lambda n: (not lab.spec.node(n).store, n))
    return Plan(zone, victims, hit, observers[0], observers)


# --- waiting ------------------------------------------------------------------------------


def readiness(
    lab: Lab, client: Client, pool: str, spec: PoolSpec, services: list[str]
) -> tuple[dict[str, Any] | None, str]:
    """(status, "") when the lab is whole: every hand-written node and the
    pool's `count` machines up, the pool's services healthy; else (status or
    None, what is missing)."""
    written = [n.name for n in lab.spec.nodes]
    status = client.status(written)
    if status is None:
        return None, "no node's API answers"
    if not status.get("leader"):
        return status, "the cluster has no leader"
    up = {n["name"] for n in status.get("nodes", []) if n.get("state") == "up"}
    down = [n for n in written if n not in up]
    if down:
        return status, f"{', '.join(down)} not up"
    machines = [n for n, m in pool_machines(lab, pool).items() if m.get("powered")]
    joined = [n for n in machines if n in up]
    if len(joined) != spec.count or len(machines) != spec.count:
        return status, (f"pool {pool}: {len(joined)} of {spec.count} machines up "
                        f"({', '.join(sorted(machines)) or 'none'} made)")  # fmt: skip
    healthy = {s["name"]: (s["healthy"], s["desired"]) for s in status.get("services", [])}
    short = [
        f"{n} {healthy[n][0]}/{healthy[n][1]}" if n in healthy else f"{n} unknown"
        for n in services
        if n not in healthy or healthy[n][0] < healthy[n][1]
    ]
    if short:
        return status, f"services not all healthy: {', '.join(short)}"
    return status, ""


def wait_ready(
    lab: Lab,
    client: Client,
    pool: str,
    spec: PoolSpec,
    services: list[str],
    timeout: float = READY_TIMEOUT,
    say: Progress = _quiet,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        status, missing = readiness(lab, client, pool, spec, services)
        if status is not None and not missing:
            return status
        if missing != last:
            say(f"waiting for the lab to be whole: {missing}")
            last = missing
        if time.monotonic() > deadline:
            raise LabError(f"lab {lab.id} is not whole after {timeout:g}s: {missing}")
        time.sleep(0.5)


def _heal(lab: Lab) -> None:
    for attempt in range(5):
        lab.machines()  # re-reads the lab's state: a destroyed machine is no namespace to clean
        try:
            lab.heal()
            return
        except LabError:
            if attempt == 4:
                raise
            time.sleep(0.2)


def restore(
    lab: Lab,
    pool: str | None = None,
    timeout: float = READY_TIMEOUT,
    progress: Progress | None = None,
    client: Client | None = None,
) -> None:
    """No fault left: the network whole, every hand-written node thawed, started
    and up, the pool back at its count (its lost machines are the healer's to
    replace) and its services healthy."""
    say = progress or _quiet
    _heal(lab)
    written = [n.name for n in lab.spec.nodes]
    started = []
    for node in written:
        lab.thaw(node)
        if lab.agent_pid(node) is None:
            lab.start(node)
            started.append(node)
    if started:
        say(f"started {', '.join(started)} again")
    lab.wait_up(timeout, say, nodes=written)
    name, spec = _pool(lab, pool)
    wait_ready(lab, client or Client(lab), name, spec, pool_services(lab, name), timeout, say)


# --- S5: a compromised server ----------------------------------------------------------


def _quarantine(client: Client, lab: Lab, via: str, node: str) -> None:
    try:
        status, body = client.request(
            "POST", f"{lab.api_url(via)}/v1/nodes/{node}/quarantine",
            {"reason": "drill S5: a compromised server"}, timeout=15.0,
        )  # fmt: skip
    except OSError as exc:
        raise LabError(f"the quarantine of {node} through {via} did not complete: {exc}") from None
    if status != 200:
        raise LabError(f"the quarantine of {node} was refused ({status}): {body[:200]!r}")


class StolenCertificate:
    """The victim's certificate and key as an attacker copied them before the
    quarantine, tried from the client namespace against each observer's API
    and etcd client port."""

    def __init__(self, lab: Lab, victim: str, observers: list[str]) -> None:
        tls = lab.data_dir(victim) / "tls"
        self._dir = Path(tempfile.mkdtemp(prefix="ninefold-s5-"))
        for name in ("ca.crt", "node.crt", "node.key"):
            shutil.copy(tls / name, self._dir / name)
        self._lab = lab
        self._ns = lab.namespace("client")
        self._ports = [
            (f"{n} {kind}", lab.address(n), getattr(lab.spec.node(n).ports, kind))
            for n in observers
            for kind in ("api", "store_client")
        ]
        self.refused: list[str] = []

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self._dir / "ca.crt"))
        ctx.load_cert_chain(self._dir / "node.crt", self._dir / "node.key")
        return ctx

    def _taken(self, address: str, port: int) -> bool:
        """Whether a request with the certificate gets an HTTP answer
        (etcd's client port answers /health over HTTPS too)."""
        try:
            netns.http_request(self._ns, "GET", f"https://{address}:{port}/health", 2.0,
                               self._context())  # fmt: skip
        except (OSError, ssl.SSLError):
            return False
        return True

    def refused_everywhere(self) -> bool:
        self.refused = [what for what, a, p in self._ports if not self._taken(a, p)]
        return len(self.refused) == len(self._ports)


# --- the drill ----------------------------------------------------------------------------


def _first(events: list[dict[str, Any]], kind: str, subjects: Iterable[str], t0: float
           ) -> float | None:  # fmt: skip
    """Seconds from t0 to the first `kind` event of every one of `subjects`
    (the last of those firsts); None when one of them has none."""
    firsts = []
    for subject in subjects:
        times = [e["time"] for e in events if e["kind"] == kind and e["subject"] == subject]
        if not times:
            return None
        firsts.append(min(times))
    return round(max(firsts) - t0, 2) if firsts else None


TIMELINE_KINDS = {
    "node-lost", "node-joined", "machine-fenced", "machine-fence-failed", "machine-created",
    "machine-create-failed", "machine-joined", "machine-replaced", "machine-destroy-failed",
    "machine-rogue-destroyed", "pool-held", "pool-provider-failed", "store-member-removed",
    "moved", "placed", "unplaced", "removed", "started", "health", "vip-up", "vip-down",
    "vip-failed", "leader", "node-quarantined", "machine-locks-freed",
}  # fmt: skip


def run(
    lab: Lab,
    scenario: str,
    zone: str | None = None,
    pool: str | None = None,
    timeout: float = SERVE_TIMEOUT,
    restore_after: bool = False,
    progress: Progress | None = None,
    token: str | None = None,
) -> DrillReport:
    """Run one scenario (S1-S5) on a running lab whose spec has a pool; the
    report. DrillError when it cannot run as asked, LabError
    when the lab is not whole (a fault on, a node down, the pool short)."""
    say = progress or _quiet
    scenario = scenario.upper()
    if scenario not in SCENARIOS:
        raise DrillError(f"no scenario {scenario!r}: S1 a server down, S2 a site down, "
                         "S3 a zone down, S4 a zone isolated then healed, "
                         "S5 a compromised server")  # fmt: skip
    name, spec = _pool(lab, pool)
    if zone is not None and zone not in lab.zones:
        raise DrillError(f"no zone named {zone!r} in lab {lab.id} (zones: {', '.join(lab.zones)})")
    services = pool_services(lab, name)
    routed = [s for s in services if (route := lab.spec.services[s].route) and route.http]
    if not routed:
        raise DrillError(
            f"no service with an HTTP route is placed on pool {name} "
            f"(placement.constraints: {{pool: {name}}}): no traffic to watch"
        )
    if lab.fault is not None:
        raise LabError(f"lab {lab.id} has a fault on ({lab.fault}): heal it first "
                       "(ninefold lab heal)")  # fmt: skip
    stopped = [n.name for n in lab.spec.nodes if lab.agent_state(n.name) != "running"]
    if stopped:
        raise LabError(f"lab {lab.id}: {', '.join(stopped)} not running: "
                       f"ninefold lab start {stopped[0]}")  # fmt: skip
    client = Client(lab, token)
    say(f"lab {lab.id}: waiting for it to be whole")
    status = wait_ready(lab, client, name, spec, services, READY_TIMEOUT, say)
    plan = _plan(lab, scenario, zone, name, spec, status)
    observer = lab.spec.node(plan.observer)
    route = lab.spec.services[routed[0]].route
    assert route is not None and route.http is not None
    path = route.http
    report = DrillReport(
        scenario=scenario, title=SCENARIOS[scenario], lab=lab.id, pool=name, zone=plan.zone,
        fault="", victims=plan.victims, nodes_hit=plan.nodes_hit, observer=plan.observer,
        count=spec.count,
    )  # fmt: skip
    vip = lab.spec.gateway.vip
    vips = [v.ip for v in [vip, *(s.vip for s in lab.spec.services.values())] if v is not None]
    report.vip = vip.ip if vip is not None else None
    before = serving(status, services)
    victims_serving = sorted({n for n in before.values() if n in plan.victims})
    known = set(pool_machines(lab, name))
    report.voters_before = store_voters(lab, plan.observers)

    gateway_url = f"http://{observer.address}:{observer.ports.gateway_http}{path}"
    traffic = Repeater(_get(client, gateway_url), REQUEST_INTERVAL)
    vip_traffic = (
        Repeater(_get(client, f"http://{vip.ip}:{observer.ports.gateway_http}{path}"),
                 REQUEST_INTERVAL)
        if vip is not None else None
    )  # fmt: skip
    writes = Repeater(_put(client, f"{lab.api_url(plan.observer)}/v1/kv/{KV_KEY}"),
                      WRITE_INTERVAL)  # fmt: skip
    sampler = HolderSampler(lab, vips)
    cut: ZoneCut | None = None
    running = [traffic, writes, *([vip_traffic] if vip_traffic else [])]
    t0 = time.time()
    try:
        for repeater in running:
            repeater.start()
        sampler.start()
        steady = time.monotonic() + 30
        while traffic.ok_count() < 25 or (vip_traffic is not None and vip_traffic.ok_count() < 25):
            if time.monotonic() > steady:
                raise LabError(f"no steady traffic through {gateway_url}"
                               + (" and the VIP" if vip_traffic else "")
                               + " before the fault")  # fmt: skip
            time.sleep(0.1)
        # -- the fault --
        t0 = time.time()
        stolen: StolenCertificate | None = None
        if scenario == "S5":
            stolen = StolenCertificate(lab, plan.victims[0], plan.observers)
            report.fault = (f"{plan.victims[0]} (zone {plan.zone}) quarantined through "
                            f"{plan.observer}'s API; its TLS files copied before")  # fmt: skip
            say(f"{scenario}: quarantining {plan.victims[0]}")
            _quarantine(client, lab, plan.observer, plan.victims[0])
        elif scenario == "S1":
            report.fault = f"every process of {plan.victims[0]} (zone {plan.zone}) killed"
            say(f"{scenario}: killing {plan.victims[0]}")
            lab.kill(plan.victims[0])
        elif scenario == "S2":
            hit = [*plan.nodes_hit, *plan.victims]
            report.fault = f"zone {plan.zone} down: {', '.join(hit)} killed"
            say(f"{scenario}: killing zone {plan.zone} ({', '.join(hit)})")
            for node in hit:
                lab.kill(node)
        else:
            assert plan.zone is not None
            report.fault = (f"zone {plan.zone} ({', '.join([*plan.nodes_hit, *plan.victims])}) "
                            "cut off from the rest and the client")  # fmt: skip
            say(f"{scenario}: isolating zone {plan.zone}")
            cut = ZoneCut(lab, plan.zone, say).start()
        # -- until a replacement serves --
        deadline = time.monotonic() + timeout
        served_at: float | None = None
        last_events = 0.0
        events: list[dict[str, Any]] = []
        while served_at is None:
            now = time.time()
            if stolen is not None and report.revoked_s is None and stolen.refused_everywhere():
                report.revoked_s = round(time.time() - t0, 2)
                report.refused = stolen.refused
                say(f"{scenario}: the stolen certificate is refused {report.revoked_s:.2f}s "
                    "after the quarantine")  # fmt: skip
            current = client.status(plan.observers)
            new = {n: m for n, m in pool_machines(lab, name).items() if n not in known}
            if current is not None:
                if two_actives(current):
                    report.two_actives += 1
                on_new = {i: n for i, n in serving(current, services).items() if n in new}
                if victims_serving and len(set(on_new.values())) >= len(victims_serving):
                    served_at = now
                    report.served_by = ", ".join(f"{i} on {n}" for i, n in sorted(on_new.items()))
                elif not victims_serving and new:
                    up = {n["name"] for n in current.get("nodes", []) if n.get("state") == "up"}
                    if len([n for n in new if n in up]) >= len(plan.victims):
                        served_at = now
                        joined = ", ".join(sorted(new))
                        report.served_by = f"{joined} joined (no instance to take over)"
            if time.monotonic() - last_events > 1.0:
                last_events = time.monotonic()
                events = client.events(plan.observers) or events
                held = [e for e in events if e["time"] >= t0 and e["kind"] == "pool-held"
                        and e["subject"] == name and "budget" in e.get("reason", "")]  # fmt: skip
                if held and served_at is None:
                    report.problems.append(f"pool {name} held: {held[0].get('reason', '')}")
                    break
            if served_at is None and time.monotonic() > deadline:
                report.problems.append(f"no replacement served within {timeout:g}s of the fault")
                break
            if served_at is None:
                time.sleep(POLL)
        if served_at is not None:
            report.serve_s = round(served_at - t0, 2)
            say(f"{scenario}: a replacement serves {report.serve_s:.1f}s after the fault")
        # -- the pool back at its count, the victims gone --
        if served_at is not None:
            _settle(lab, client, report, plan, name, spec, services, SETTLE_TIMEOUT)
        # -- S4: heal, and watch for duplicates --
        if scenario == "S4" and cut is not None:
            cut.stop()
            _heal(lab)
            healed = time.time()
            report.heal_s = round(healed - t0, 2)
            cut = None
            say(f"{scenario}: network healed; waiting for {', '.join(plan.nodes_hit)}")
            try:
                lab.wait_up(90, nodes=plan.nodes_hit)
                report.rejoined_s = round(time.time() - healed, 2)
            except LabError as exc:
                report.problems.append(f"after the heal: {exc}")
            _after_heal(lab, client, report, plan, name, spec)
        end = time.time()
    finally:
        for repeater in running:
            repeater.stop()
        sampler.stop()
        if cut is not None:
            cut.stop()
            report.notes += [f"zone {plan.zone} isolated again for new machine {what}"
                             for what in cut.reapplied]  # fmt: skip
    report.seconds = round(end - t0, 1)
    report.requests, report.failed, report.errors, report.longest_gap_s = traffic.summary(t0, end)
    if vip_traffic is not None:
        report.vip_requests, report.vip_failed, _, report.vip_longest_gap_s = vip_traffic.summary(
            t0, end
        )
    report.vip_samples = sampler.samples
    report.vip_doubles = sampler.doubled_since(t0)
    (report.store_writes, report.store_failed, report.store_errors,
     report.store_longest_gap_s) = writes.summary(t0, end)  # fmt: skip
    tail = writes.since(t0)
    report.quorum_kept = report.store_longest_gap_s <= QUORUM_GAP and bool(tail and tail[-1][2])
    if not report.quorum_kept:
        report.problems.append(
            f"store writes failed for {report.store_longest_gap_s:.1f}s in a row"
            + ("" if tail and tail[-1][2] else ", and still at the end")
            + ": the store lost its quorum"
        )
    _conclude(lab, client, report, plan, name, t0)
    if restore_after:
        say(f"restoring lab {lab.id}")
        restore(lab, name, READY_TIMEOUT, say, client)
    elif scenario == "S3":
        report.notes.append(f"zone {plan.zone} is still isolated: undo with ninefold lab heal")
    elif scenario == "S2" and plan.nodes_hit:
        report.notes.append(f"{', '.join(plan.nodes_hit)} still down: start again with "
                            f"ninefold lab start {plan.nodes_hit[0]}")  # fmt: skip
    return report


def _settle(
    lab: Lab,
    client: Client,
    report: DrillReport,
    plan: Plan,
    pool: str,
    spec: PoolSpec,
    services: list[str],
    timeout: float,
) -> None:
    """Wait until the victims are destroyed and forgotten and the pool has its
    count of machines up, its services healthy; a problem if not in time."""
    deadline = time.monotonic() + timeout
    missing = ""
    while time.monotonic() < deadline:
        current = client.status(plan.observers)
        machines = pool_machines(lab, pool)
        if current is not None:
            if two_actives(current):
                report.two_actives += 1
            nodes = {n["name"]: n.get("state") for n in current.get("nodes", [])}
            left = [v for v in plan.victims if v in machines or v in nodes]
            working = [n for n, m in machines.items() if m.get("powered") and nodes.get(n) == "up"]
            healthy = {s["name"]: s["healthy"] >= s["desired"] for s in current.get("services", [])}
            short = [s for s in services if not healthy.get(s)]
            if left:
                missing = f"{', '.join(left)} not destroyed and forgotten yet"
            elif len(working) != spec.count or len(machines) != spec.count:
                missing = f"{len(working)} of {spec.count} machines up, {len(machines)} made"
            elif short:
                missing = f"{', '.join(short)} not all healthy"
            else:
                return
        time.sleep(POLL)
    report.problems.append(f"pool {pool} not settled {timeout:g}s after a replacement served: "
                           f"{missing or 'no status'}")  # fmt: skip


def _after_heal(
    lab: Lab, client: Client, report: DrillReport, plan: Plan, pool: str, spec: PoolSpec
) -> None:
    """S4 after the heal: for two provider listings, the pool keeps its count,
    the cut-off machine does not come back; more machines than the count
    (rogue duplicates) must be gone within the rogue grace."""
    watched = time.monotonic() + AFTER_HEAL
    extra_since: float | None = None
    while time.monotonic() < watched or extra_since is not None:
        machines = pool_machines(lab, pool)
        current = client.status(plan.observers)
        if current is not None and two_actives(current):
            report.two_actives += 1
        back = [v for v in plan.victims if v in machines]
        if current is not None:
            back += [v for v in plan.victims
                     if any(n["name"] == v for n in current.get("nodes", []))]  # fmt: skip
        if back:
            report.problems.append(f"after the heal the cut-off machine is back: "
                                   f"{', '.join(sorted(set(back)))}")  # fmt: skip
            return
        if len(machines) > spec.count:
            if extra_since is None:
                extra_since = time.monotonic()
                report.notes.append(f"after the heal {len(machines)} machines for a count of "
                                    f"{spec.count}: {', '.join(sorted(machines))}")  # fmt: skip
            elif time.monotonic() - extra_since > spec.rogue_grace + AFTER_HEAL:
                report.problems.append(f"duplicates not destroyed {spec.rogue_grace:g}s after "
                                       f"the heal: {', '.join(sorted(machines))}")  # fmt: skip
                return
        else:
            extra_since = None
        time.sleep(0.5)


def _conclude(
    lab: Lab, client: Client, report: DrillReport, plan: Plan, pool: str, t0: float
) -> None:
    """Times from the events, the machines at the end, the failed expectations."""
    events = [e for e in (client.events(plan.observers) or []) if e["time"] >= t0 - 0.5]
    ours = [e for e in events if e["kind"] == "machine-created"
            and e.get("data", {}).get("pool", pool) == pool and e["time"] >= t0]  # fmt: skip
    ours.sort(key=lambda e: e["time"])
    report.replacements = {e["subject"]: e.get("data", {}).get("zone", "?") for e in ours}
    seen = "node-quarantined" if report.scenario == "S5" else "node-lost"
    report.detect_s = _first(events, seen, plan.victims, t0)
    if report.scenario == "S5" and report.revoked_s is None:
        report.problems.append("the stolen certificate was still taken by some port at the end")
    report.fence_s = _first(events, "machine-fenced", plan.victims, t0)
    if len(ours) >= len(plan.victims) and plan.victims:
        report.replace_s = round(ours[len(plan.victims) - 1]["time"] - t0, 2)
    report.timeline = [
        f"+{e['time'] - t0:6.2f}s {e['kind']} {e['subject']}: {e.get('reason', '')}"
        for e in events
        if e["kind"] in TIMELINE_KINDS and e["time"] >= t0
    ]
    machines = pool_machines(lab, pool)
    report.machines = {n: str(m["zone"]) for n, m in sorted(machines.items())}
    report.voters_after = store_voters(lab, plan.observers + plan.nodes_hit)
    from ninefold.decide.availability import summary_lines  # docs/availability.md

    for node in plan.observers:  # as the gateways' probes measured it
        answer = client.get_json(node, "/v1/availability", timeout=5.0)
        if isinstance(answer, dict):
            report.notes += [f"availability {line}" for line in summary_lines(answer)]
            break
    # failed expectations
    for victim in plan.victims:
        if not any(e["kind"] == "machine-fenced" and e["subject"] == victim for e in events):
            report.problems.append(f"{victim} was never fenced (no machine-fenced event)")
    if len(ours) > len(plan.victims):
        report.problems.append(
            f"{len(ours)} machines created for {len(plan.victims)} lost: "
            + ", ".join(report.replacements)
        )
    if report.scenario not in ("S1", "S5"):  # a machine lost, not a zone: any zone will do
        wrong = [n for n, z in report.replacements.items() if z == plan.zone]
        if wrong:
            report.problems.append(f"{', '.join(wrong)} made in zone {plan.zone}, which was down")
    if len(machines) != report.count:
        report.problems.append(f"{len(machines)} machines at the end for a count of {report.count}")
    if report.vip_doubles:
        report.problems.append(f"a VIP on two nodes in {report.vip_doubles} samples")
    if report.two_actives:
        report.problems.append(f"two actives in {report.two_actives} status reads")
    before, after = report.voters_before, report.voters_after
    if before is not None and after is not None:
        lost = sorted(set(before) - set(after) - set(plan.victims))
        if lost:
            report.problems.append(f"store members lost: {', '.join(lost)}")
    for kind in ("machine-fence-failed", "machine-create-failed", "machine-destroy-failed"):
        for e in events:
            if e["kind"] == kind and e["time"] >= t0:
                report.notes.append(f"{kind} {e['subject']}: {e.get('reason', '')}")
