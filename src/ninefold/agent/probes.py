"""Route probes: what a client sees of each service, measured on every node.

Each agent probes each service's route (`route: {http: ...}` or `{tcp: ...}`)
through its own gateway, once a second, at a phase of its own (node i of n
probes i/n s past each second, so the nodes' probes interleave), with a
PROBE_TIMEOUT. An HTTP answer below 500 is up; a 5xx, a refused or reset
connection or no answer in time is down (the gateway's own 404 "no route", a
route it has not learnt yet, is neither). A TCP route is up when the gateway
keeps the connection open (or the service speaks first) for TCP_SETTLE; the
gateway closes it at once when nothing can serve it.

While a route fails, it is probed every PROBE_FAST_EVERY until it answers:
an outage's start is then known to a second (between the last good probe
and the first failed one), its end to a tenth. decide/availability.py takes
the middle of each bracket and narrows it with the other nodes' brackets.

What a node writes (state/keys.py), never once per good probe:

- `availability/down/<svc>/<node>/<start_ms>` (DownRecord) when an outage
  begins and when it ends;
- `availability/probing/<svc>/<node>` (ProbingRecord): the spans of time it
  probed, rewritten every PROBING_WRITE_EVERY while it goes on;
- `availability/traffic/<svc>/<node>/<hour_ms>` (TrafficRecord): its
  gateway's answered and failed client requests by minute, every
  TRAFFIC_EVERY when there were any (its own probes taken out); summed up
  to the hour's once the hour ended over an hour ago.

All of it in at most one transaction per FLUSH_EVERY. The node prunes its
own records older than 30 days once an hour.

A node counts only while it holds its lease: one cut off from the store
(and so, most likely, from the others) stops observing. It starts observing
a service at its first good probe, unless it has probed it before (so a
service that never came up is not counted as down from the start, and one
that is down while an agent restarts still is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.decide.availability import KEEP
from ninefold.gateway.engine import MetricsSnapshot
from ninefold.spec import ClusterSpec
from ninefold.state.keys import (
    AVAILABILITY_DOWN,
    AVAILABILITY_TRAFFIC,
    SPEC_KEY,
    down_key,
    last_segment,
    probing_key,
    traffic_key,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import DownRecord, ProbingRecord, TrafficRecord
from ninefold.store.base import Delete, Put, Store, StoreError
from ninefold.tasks import cancel_and_wait

log = logging.getLogger("ninefold.probes")

PROBE_EVERY = 1.0
"""Seconds between two probes of a route that answers."""
PROBE_FAST_EVERY = 0.1
"""Seconds between two probes of a route that fails."""
PROBE_TIMEOUT = 1.0
"""Seconds a probe waits for an answer before it counts as failed."""
TCP_SETTLE = 0.25
"""Seconds a TCP probe's connection must stay open (or bring data) to count as up."""
MAX_IN_FLIGHT = 12
"""Probes of one route at once at most (while the route times out)."""
FLUSH_EVERY = 1.0
"""Seconds between two writes at most."""
PROBING_WRITE_EVERY = 10.0
"""Seconds between two rewrites of an open probing span."""
TRAFFIC_EVERY = 10.0
"""Seconds between two readings of the gateway's counters (the hour's record
is rewritten then, when there was traffic)."""
PRUNE_EVERY = 3600.0
SPEC_RESYNC = 30.0


@dataclass(frozen=True)
class Target:
    """What a node probes for one service."""

    kind: str
    """http or tcp"""
    url: str = ""
    host: str | None = None
    """The Host header of a host route."""
    address: str = ""
    port: int = 0

    def describe(self) -> str:
        if self.kind == "tcp":
            return f"tcp://{self.address}:{self.port}"
        return self.url + (f" (Host: {self.host})" if self.host else "")


def probe_targets(spec: ClusterSpec, node: str) -> dict[str, Target]:
    """Each routed service's target through `node`'s gateway (none without one)."""
    if not spec.gateway.enabled:
        return {}
    me = spec.node(node)
    host = f"[{me.address}]" if ":" in me.address else me.address
    tls = spec.gateway.tls
    if tls is not None and tls.redirect_http:
        base = f"https://{host}:{tls.port}"
    else:
        base = f"http://{host}:{me.ports.gateway_http}"
    out: dict[str, Target] = {}
    for name, service in sorted(spec.services.items()):
        route = service.route
        if route is None:
            continue
        if route.tcp is not None:
            out[name] = Target("tcp", address=me.address, port=route.tcp)
        else:
            out[name] = Target("http", url=base + (route.http or "/"), host=route.host)
    return out


class RouteProber:
    """Probes one service's route from this node and keeps what it saw."""

    def __init__(
        self,
        service: str,
        node: str,
        target: Target,
        phase: float,
        counts: Callable[[], bool],
        client: httpx.AsyncClient,
        previous: ProbingRecord | None,
    ) -> None:
        self.service = service
        self.node = node
        self.target = target
        self._phase = phase
        self._counts = counts
        self._client = client
        now = time.time()
        self.spans: list[tuple[float, float]] = [
            (s, e) for s, e in (previous.spans if previous else []) if e >= now - KEEP
        ]
        self._measured_before = bool(self.spans)
        self.span_start: float | None = None
        self.covered_until = 0.0
        self.last_ok: float | None = None
        self.down: DownRecord | None = None
        self._down_key = ""
        self.dirty: dict[str, bytes] = {}
        """Records to write at the next flush, by key."""
        self.probing_dirty = previous is not None and previous.open
        """To write at the next flush: a span began or ended (or an agent
        that died left its record open: closed at its last write)."""
        self.probes_ok = 0
        self.probes_failed = 0
        """This prober's own requests, taken out of the gateway's counts."""
        self._wake = asyncio.Event()
        self._next = 0.0
        self._in_flight: set[asyncio.Task[None]] = set()

    # -- probing ----------------------------------------------------------------------
    async def run(self) -> None:
        self._next = self._aligned(time.time())
        try:
            while True:
                delay = self._next - time.time()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue  # the time may have moved (a failure: sooner)
                sent = time.time()
                if not self._counts():
                    self.pause()
                elif len(self._in_flight) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(self._one(sent))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                if self.down is not None:
                    self._next = sent + PROBE_FAST_EVERY
                else:
                    self._next = self._aligned(sent)
        finally:
            await cancel_and_wait(*self._in_flight, ignore_errors=True)

    def _aligned(self, after: float) -> float:
        """The first time past `after` at this node's phase of the second."""
        at = math.floor(after / PROBE_EVERY) * PROBE_EVERY + self._phase
        while at <= after:
            at += PROBE_EVERY
        return at

    async def _one(self, sent: float) -> None:
        ok, error = await self._probe()
        if ok is not None:
            self.observe(sent, ok, error)

    async def _probe(self) -> tuple[bool | None, str]:
        """(True, "") up, (False, what failed) down, (None, why) no verdict."""
        target = self.target
        try:
            if target.kind == "tcp":
                return await _probe_tcp(target.address, target.port)
            headers = {"Host": target.host} if target.host else {}
            response = await self._client.get(target.url, headers=headers)
            if response.status_code >= 500:
                return False, str(response.status_code)
            if response.status_code == 404 and b'"no route"' in response.content[:200]:
                return None, "not routed yet"  # the gateway's own: its table lacks the route
            return True, ""
        except httpx.TimeoutException:
            return False, "timed out"
        except httpx.ConnectError as exc:
            return False, _short(exc) or "connection refused"
        except (httpx.HTTPError, OSError) as exc:
            return False, _short(exc) or type(exc).__name__

    # -- what it saw ---------------------------------------------------------------------
    def observe(self, sent: float, ok: bool, error: str = "") -> None:
        """A probe sent at `sent` answered (ok) or failed; results may come
        out of order (a slow probe after a fast one), each counts by when it
        was sent."""
        if ok:
            self.probes_ok += 1
        else:
            self.probes_failed += 1
        if not self._counts():
            return
        if self.span_start is None:
            if not ok and not self._measured_before:
                return  # not up yet since it was first seen: not observed yet
            self.span_start = sent
            self._measured_before = True
            self.probing_dirty = True
        self.covered_until = max(self.covered_until, sent)
        down = self.down
        if ok:
            if down is not None:
                if sent > down.last_failed:
                    down.first_ok = sent
                    self.last_ok = sent
                    self._mark(down)
                    self.down = None
                    log.info("%s answers again through %s's gateway", self.service, self.node)
            elif self.last_ok is None or sent > self.last_ok:
                self.last_ok = sent
            return
        if down is not None:
            if sent > down.last_failed:
                down.last_failed = sent
                down.failed_probes += 1
            elif sent < down.first_failed and (self.last_ok is None or sent > self.last_ok):
                down.first_failed = sent
                self._mark(down)
            return
        if self.last_ok is not None and sent < self.last_ok:
            return  # a late failure of a probe older than a good one
        self.down = DownRecord(
            service=self.service, node=self.node, first_failed=sent, last_failed=sent,
            last_ok=self.last_ok, error=error,
        )  # fmt: skip
        self._down_key = down_key(self.service, self.node, sent)
        self._mark(self.down)
        log.info("%s fails through %s's gateway: %s", self.service, self.node, error)
        self._next = min(self._next, time.time() + PROBE_FAST_EVERY)
        self._wake.set()

    def _mark(self, down: DownRecord) -> None:
        self.dirty[self._down_key] = down.encode()

    def pause(self) -> None:
        """Stop observing (the lease is at risk, or probing stops): the span
        ends at the last probe; an outage going on is left open (it ends
        where the span does)."""
        if self.span_start is not None:
            self.spans.append((self.span_start, max(self.covered_until, self.span_start)))
            self.span_start = None
            self.probing_dirty = True
        if self.down is not None:
            self._mark(self.down)
            self.down = None
        self.last_ok = None

    def probing_record(self) -> ProbingRecord:
        now = time.time()
        spans = [(s, e) for s, e in self.spans if e >= now - KEEP]
        self.spans = spans
        if self.span_start is not None:
            spans = [*spans, (self.span_start, max(self.covered_until, self.span_start))]
        return ProbingRecord(
            service=self.service, node=self.node, target=self.target.describe(),
            spans=spans, open=self.span_start is not None, written_at=now,
        )  # fmt: skip


async def _probe_tcp(address: str, port: int) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(address, port)
    except TimeoutError:
        return False, "timed out"
    except OSError as exc:
        return False, _short(exc) or "connection refused"
    try:
        try:
            async with asyncio.timeout(TCP_SETTLE):
                data = await reader.read(1)
        except TimeoutError:
            return True, ""  # still open: the gateway found a backend
        except OSError:
            return False, "connection reset"
        return (True, "") if data else (False, "closed by the gateway")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:120] if text else ""


def _answered_failed(snapshot: MetricsSnapshot, service: str) -> tuple[int, int]:
    metrics = snapshot.get(service)
    if metrics is None:
        return 0, 0
    responses = metrics.total.responses
    failed = responses.get("5xx", 0) + responses.get("error", 0)
    answered = sum(n for cls, n in responses.items() if cls not in ("5xx", "error"))
    return answered, failed


class RouteProbes:
    """Every route's prober on this node, and the writes of what they saw."""

    def __init__(
        self,
        store: Store,
        node: str,
        spec: ClusterSpec,
        counts: Callable[[], bool],
        snapshot: Callable[[], MetricsSnapshot] | None,
    ) -> None:
        self._store = store
        self._node = node
        self._spec = spec
        self._counts = counts
        self._snapshot = snapshot
        names = [n.name for n in spec.nodes]
        index = names.index(node) if node in names else 0
        self._phase = (index % max(1, len(names))) / max(1, len(names)) * PROBE_EVERY
        self.probers: dict[str, RouteProber] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retired: list[RouteProber] = []
        self._client: httpx.AsyncClient | None = None
        self._traffic: dict[str, tuple[int, int, int, int]] = {}
        """service -> (answered, failed, own ok, own failed) at the last reading."""
        self._hours: dict[str, TrafficRecord] = {}
        """service -> the traffic record of the hour being counted."""
        self._traffic_dirty: set[str] = set()
        self._probing_written = 0.0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            context = ssl.create_default_context()  # the gateway's certificate may be
            context.check_hostname = False  # the node's own, for its name, not its address
            context.verify_mode = ssl.CERT_NONE
            self._client = httpx.AsyncClient(
                timeout=PROBE_TIMEOUT,
                verify=context,
                limits=httpx.Limits(max_keepalive_connections=0),  # a new client each time
                trust_env=False,
            )
        return self._client

    async def run(self) -> None:
        loops = [
            asyncio.create_task(self._flush_loop(), name="probe-writes"),
            asyncio.create_task(self._traffic_loop(), name="probe-traffic"),
            asyncio.create_task(self._prune_loop(), name="probe-prune"),
        ]
        signal = ChangeSignal(self._store, SPEC_KEY)
        try:
            await run_level_triggered(signal, self.sync, "route probes", every=SPEC_RESYNC)
        finally:
            await cancel_and_wait(*self._tasks.values(), *loops, ignore_errors=True)
            for prober in self.probers.values():
                prober.pause()
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(self.flush(final=True), 2.0)
            if self._client is not None:
                await self._client.aclose()

    async def sync(self) -> None:
        """Probers for the stored spec's routes: new ones started, gone or
        changed ones stopped."""
        spec = await read_spec(self._store, self._spec)
        if self._node not in {n.name for n in spec.nodes}:
            return
        targets = probe_targets(spec, self._node)
        replaced: dict[str, ProbingRecord] = {}
        for service in list(self.probers):
            if targets.get(service) != self.probers[service].target:
                self._tasks.pop(service).cancel()
                prober = self.probers.pop(service)
                prober.pause()
                self._retired.append(prober)
                if service in targets:  # a new route: its next prober goes on with the spans
                    replaced[service] = prober.probing_record()
                    prober.probing_dirty = False
        for service, target in targets.items():
            if service in self.probers:
                continue
            previous = replaced.get(service)
            if previous is None:
                got = await self._store.get(probing_key(service, self._node))
                previous = ProbingRecord.decode(got.value) if got is not None else None
            prober = RouteProber(
                service, self._node, target, self._phase, self._counts, self._http(), previous
            )
            self.probers[service] = prober
            self._tasks[service] = asyncio.create_task(prober.run(), name=f"probe-{service}")
            log.info("probing %s at %s", service, target.describe())

    # -- writes ----------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                await self.flush()
            except StoreError as exc:
                log.debug("availability records put off: %s", exc)

    async def flush(self, final: bool = False) -> None:
        """One transaction with what changed; on a store error everything is
        kept for the next one."""
        now = time.time()
        probers = [*self.probers.values(), *self._retired]
        puts: dict[str, bytes] = {}
        for prober in probers:
            puts.update(prober.dirty)
        rewrite = final or now - self._probing_written >= PROBING_WRITE_EVERY
        for prober in probers:
            if prober.probing_dirty or (rewrite and prober.span_start is not None):
                puts[probing_key(prober.service, prober.node)] = prober.probing_record().encode()
        for service in self._traffic_dirty:
            record = self._hours[service]
            puts[traffic_key(service, self._node, record.hour)] = record.encode()
        if not puts:
            return
        await self._store.txn([], [Put(key, value) for key, value in puts.items()])
        for prober in probers:
            for key in list(prober.dirty):
                if prober.dirty[key] == puts.get(key):
                    del prober.dirty[key]
            prober.probing_dirty = False
        self._retired = [p for p in self._retired if p.dirty]
        self._traffic_dirty.clear()
        if rewrite:
            self._probing_written = now

    # -- the gateway's counts ------------------------------------------------------------------
    async def _traffic_loop(self) -> None:
        if self._snapshot is None:
            return
        while True:
            try:
                await self.read_traffic()
            except StoreError as exc:
                log.debug("traffic counts put off: %s", exc)
            await asyncio.sleep(TRAFFIC_EVERY)

    async def read_traffic(self) -> None:
        """The client requests each routed service's gateway answered and
        failed since the last reading, this node's probes taken out, added to
        the minute's count (written with the next flush)."""
        if self._snapshot is None:
            return
        snapshot = self._snapshot()
        now = time.time()
        hour = math.floor(now / 3600) * 3600
        minute = int((now - hour) // 60)
        for service, prober in self.probers.items():
            answered, failed = _answered_failed(snapshot, service)
            reading = (answered, failed, prober.probes_ok, prober.probes_failed)
            # the gateway counts from its start, like this agent's first reading
            last = self._traffic.get(service, (0, 0, 0, 0))
            self._traffic[service] = reading
            if answered < last[0] or failed < last[1]:
                continue  # the counters started again
            own_ok = reading[2] - last[2] if reading[2] >= last[2] else reading[2]
            own_failed = reading[3] - last[3] if reading[3] >= last[3] else reading[3]
            did_answer = max(0, answered - last[0] - own_ok)
            did_fail = max(0, failed - last[1] - own_failed)
            if not did_answer and not did_fail:
                continue
            record = self._hours.get(service)
            if record is None or record.hour != hour:
                got = await self._store.get(traffic_key(service, self._node, hour))
                record = (
                    TrafficRecord.decode(got.value)
                    if got is not None
                    else TrafficRecord(service=service, node=self._node, hour=hour)
                )
            a, f = record.minutes.get(minute, (0, 0))
            record.minutes[minute] = (a + did_answer, f + did_fail)
            self._hours[service] = record
            self._traffic_dirty.add(service)

    # -- pruning ---------------------------------------------------------------------------------
    async def _prune_loop(self) -> None:
        await asyncio.sleep(60.0)
        while True:
            try:
                await self.prune()
            except StoreError as exc:
                log.debug("pruning availability records put off: %s", exc)
            await asyncio.sleep(PRUNE_EVERY)

    async def prune(self, now: float | None = None) -> int:
        """Delete this node's outages and traffic counts older than KEEP, and
        sum up the minutes of its traffic counts of hours that ended over an
        hour ago (the 1 h window needs no more); how many went."""
        now = time.time() if now is None else now
        old: list[str] = []
        summed: list[Put] = []
        for item in (await self._store.list(AVAILABILITY_DOWN)).items:
            parts = item.key[len(AVAILABILITY_DOWN) :].split("/")
            if len(parts) != 3 or parts[1] != self._node:
                continue
            with contextlib.suppress(ValueError):
                record = DownRecord.decode(item.value)
                if max(record.first_ok or 0.0, record.last_failed) < now - KEEP:
                    old.append(item.key)
        for item in (await self._store.list(AVAILABILITY_TRAFFIC)).items:
            parts = item.key[len(AVAILABILITY_TRAFFIC) :].split("/")
            if len(parts) != 3 or parts[1] != self._node:
                continue
            with contextlib.suppress(ValueError):
                if int(last_segment(item.key)) / 1000 + 3600 < now - KEEP:
                    old.append(item.key)
                    continue
                counted = TrafficRecord.decode(item.value)
                if counted.whole is None and counted.hour + 3600 <= now - 3600:
                    answered = sum(a for a, _ in counted.minutes.values())
                    failed = sum(f for _, f in counted.minutes.values())
                    counted = counted.model_copy(
                        update={"minutes": {}, "whole": (answered, failed)}
                    )
                    summed.append(Put(item.key, counted.encode()))
        ops: list[Put | Delete] = [*summed, *(Delete(key) for key in old)]
        for start in range(0, len(ops), 100):
            await self._store.txn([], ops[start : start + 100])
        return len(old)
