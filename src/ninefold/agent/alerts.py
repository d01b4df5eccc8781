"""Alerts, as the agent does them.

Every agent publishes its own facts the leader cannot read from the store
(`alerts/facts/<node>`, under its lease): how full the disk of its data
directory is and when its certificate expires.

The leader evaluates the rules every second (`AlertEvaluator`): it reads
what the rules in force need (node records, instance statuses, volume copy
records, the backups' last runs, the nodes' facts; the journal's events are
followed by a watch; the nodes' facts every 5 s), the alerts' previous
states (once per leadership: only the leader writes them), the silences and
the acks; `decide/alerts.py` says the new states and the notices. Those
reads are serializable (from the agent's own store member: no network, see
Store.list_serializable): the writes below are guarded, and an alert is
never a second late for want of a write of the last milliseconds. The states
are written back in one transaction guarded by the leader lock's fencing
token, and only then are the notices sent: a new leader starts from the
stored states, so a notice already sent is not sent again (at most once:
one lost with a leader that dies between the write and the send is not
re-sent). Each notice is an event, and so is each channel's success or
failure; channels are tried in the background with their own backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

from cryptography import x509

from ninefold.agent.journal import EventJournal
from ninefold.agent.leader import LeaderLoop
from ninefold.agent.membership import LeaseKeeper
from ninefold.alerts.channels import ChannelError, send
from ninefold.decide.alerts import (
    Ack,
    AlertState,
    BackupFact,
    CertFact,
    DiskFact,
    EventFact,
    Facts,
    InstanceFact,
    Notice,
    Silence,
    StoreFact,
    VolumeFact,
    evaluate,
)
from ninefold.decide.backup import backup_targets
from ninefold.spec import ClusterSpec
from ninefold.spec.alerts import EventHappened, RestartLoop, Rule
from ninefold.spec.backups import next_cron
from ninefold.state.keys import (
    ACKS,
    ALERT_FACTS,
    ALERT_STATES,
    BACKUP_LAST,
    EVENTS,
    LEADER_LOCK,
    NODES,
    SILENCES,
    STATUS,
    VOLUMES,
    ack_key,
    alert_facts_key,
    alert_state_key,
    last_segment,
    silence_key,
)
from ninefold.state.records import BackupResultRecord, CopyRecord, Event, InstanceStatus, Record
from ninefold.store.base import Compare, Delete, Put, Store, StoreError, lock_key

log = logging.getLogger("ninefold.alerts")

EVALUATE_EVERY = 1.0
"""Seconds between two evaluations by the leader."""
FACTS_EVERY = 15.0
"""Seconds between two looks of an agent at its disk and certificate."""
FACTS_REWRITE = 300.0
"""An agent rewrites its facts at least this often even when unchanged."""
REFRESH_STORED = 30.0
"""An alert whose text or value changed, but not its state, is rewritten at most this often."""
FACTS_READ_EVERY = 5.0
"""Seconds between two reads of the nodes' facts by the leader (they change slowly)."""
EVENTS_HELD = 2000
"""Events the leader holds for the rules (the journal keeps 1000)."""


class NodeFacts(Record):
    """`alerts/facts/<node>`: what only the node itself can see."""

    node: str
    path: str
    disk_ratio: float
    cert_not_after: float | None = None
    at: float


def disk_ratio(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return usage.used / usage.total if usage.total else 0.0


def cert_not_after(path: Path) -> float | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


class NodeFactsReporter:
    """Every agent: its facts under its lease, written when they change by
    half a percent of disk or a new certificate, or every FACTS_REWRITE."""

    def __init__(
        self, store: Store, lease: LeaseKeeper, node: str, data_dir: Path, cert: Path | None
    ) -> None:
        self._store = store
        self._lease = lease
        self._node = node
        self._data_dir = data_dir
        self._cert = cert
        self._written: tuple[float, float | None, int, float] | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except StoreError as exc:
                log.debug("facts put off: %s", exc)
            except Exception:  # a bug here must not stop the agent
                log.exception("writing this node's alert facts failed")
            await asyncio.sleep(FACTS_EVERY)

    async def step(self) -> None:
        lease = self._lease.lease
        if not lease:
            return
        ratio = await asyncio.to_thread(disk_ratio, self._data_dir)
        expires = cert_not_after(self._cert) if self._cert is not None else None
        now = time.time()
        last = self._written
        if (
            last is not None
            and last[2] == lease
            and abs(last[0] - ratio) < 0.005
            and last[1] == expires
            and now - last[3] < FACTS_REWRITE
        ):
            return
        record = NodeFacts(
            node=self._node, path=str(self._data_dir), disk_ratio=ratio,
            cert_not_after=expires, at=now,
        )  # fmt: skip
        await self._store.put(alert_facts_key(self._node), record.encode(), lease)
        self._written = (ratio, expires, lease, now)


def schedule_interval(every: float | None, cron: str | None, now: float) -> float:
    """Seconds between two runs of a schedule (for cron: its next two slots)."""
    if every is not None:
        return every
    assert cron is not None
    first = next_cron(cron, now)
    return next_cron(cron, first) - first


class AlertEvaluator:
    """The leader's loop: facts -> decide -> stored states -> notices."""

    def __init__(
        self,
        store: Store,
        journal: EventJournal,
        leader: LeaderLoop,
        generator_url: str = "",
        every: float = EVALUATE_EVERY,
    ) -> None:
        self._store = store
        self._journal = journal
        self._leader = leader
        self._generator_url = generator_url
        self._every = every
        self.evaluated_at = 0.0
        """time.monotonic() when the last evaluation step ended (0: none yet)."""
        self._events: deque[EventFact] = deque(maxlen=EVENTS_HELD)
        self._events_task: asyncio.Task[None] | None = None
        self._restarts: dict[tuple[str, str], tuple[int, deque[float]]] = {}
        self._written_at: dict[str, float] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._stored: dict[str, AlertState] | None = None
        """The alerts' states as the store holds them: only the leader writes
        them, so it reads them once per leadership (and after a failed write)."""
        self._stored_token = 0
        self._node_facts: tuple[float, list[NodeFacts]] = (0.0, [])

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._every)
                try:
                    await self.step()
                    self.evaluated_at = time.monotonic()
                except StoreError as exc:
                    log.debug("alert evaluation put off: %s", exc)
                except Exception:  # a bug here must not stop the agent: said, tried again
                    log.exception("alert evaluation failed")
                    await asyncio.sleep(5.0)
        finally:
            await self._stop_events()
            sending = list(self._sending)
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def step(self) -> None:
        hold = self._leader.hold
        if hold is None:
            await self._stop_events()
            self._restarts.clear()
            self._written_at.clear()
            self._stored = None
            return
        spec = self._leader.spec
        rules = spec.alerts.effective_rules()
        if self._stored is None or self._stored_token != hold.fencing_token:
            self._stored = await self._read_states()
            self._stored_token = hold.fencing_token
        previous = self._stored
        if not rules and not previous:
            return  # no rules and nothing left to resolve: no other store read
        now = time.time()
        facts = await self._facts(spec, rules, now)
        silences: list[Silence] = []
        acks: dict[str, Ack] = {}
        for item in (await self._store.list_serializable(SILENCES)).items:
            with contextlib.suppress(ValueError):
                silences.append(Silence.decode(item.value))
        for item in (await self._store.list_serializable(ACKS)).items:
            with contextlib.suppress(ValueError):
                ack = Ack.decode(item.value)
                acks[ack.alert] = ack
        result = evaluate(
            rules, facts, previous, silences, acks, now, base_labels={"cluster": spec.cluster}
        )
        ops: list[Put | Delete] = []
        stored: dict[str, AlertState] = {}
        for ident, state in result.states.items():
            before = previous.get(ident)
            if before is None or self._changed(before, state, now):
                ops.append(Put(alert_state_key(ident), state.encode()))
                self._written_at[ident] = now
                stored[ident] = state
            else:
                stored[ident] = before
        ops += [Delete(alert_state_key(i)) for i in result.dropped]
        ops += [Delete(ack_key(a)) for a in result.done_acks]
        ops += [Delete(silence_key(s)) for s in result.done_silences]
        for ident in result.dropped:
            self._written_at.pop(ident, None)
        if ops:
            guard = Compare(lock_key(LEADER_LOCK), "create", "==", hold.fencing_token)
            if not (await self._store.txn([guard], ops)).succeeded:
                self._stored = None
                return  # no longer leader: its successor decides and sends
        self._stored = stored
        for notice in result.notices:
            await self._notify(spec, notice)

    async def _read_states(self) -> dict[str, AlertState]:
        out: dict[str, AlertState] = {}
        for item in (await self._store.list_serializable(ALERT_STATES)).items:
            with contextlib.suppress(ValueError):
                state = AlertState.decode(item.value)
                out[state.id] = state
        return out

    def _changed(self, before: AlertState, after: AlertState, now: float) -> bool:
        if before.model_dump(exclude={"text", "value"}) != after.model_dump(
            exclude={"text", "value"}
        ):
            return True
        if (before.text, before.value) == (after.text, after.value):
            return False
        return now - self._written_at.get(after.id, 0.0) >= REFRESH_STORED

    # -- facts ----------------------------------------------------------------------

    async def _facts(self, spec: ClusterSpec, rules: list[Rule], now: float) -> Facts:
        kinds = {r.when.kind for r in rules}
        alive = {last_segment(i.key) for i in (await self._store.list_serializable(NODES)).items}
        nodes = {n.name: n.name in alive for n in spec.nodes}
        nodes.update(dict.fromkeys(alive, True))
        instances: list[InstanceFact] = []
        if kinds & {"instance_unhealthy", "restart_loop"}:
            window = max(
                (r.when.params.within for r in rules if isinstance(r.when.params, RestartLoop)),
                default=0.0,
            )
            seen: set[tuple[str, str]] = set()
            for item in (await self._store.list_serializable(STATUS)).items:
                with contextlib.suppress(ValueError):
                    status = InstanceStatus.decode(item.value)
                    key = (status.node, status.instance)
                    seen.add(key)
                    times = self._restart_times(key, status.restarts, now, window)
                    instances.append(
                        InstanceFact(
                            status.service, status.instance, status.node, status.state,
                            status.health, times,
                        )
                    )  # fmt: skip
            for key in set(self._restarts) - seen:
                del self._restarts[key]
        events: list[EventFact] = []
        event_kinds = {
            k
            for r in rules
            if isinstance(r.when.params, EventHappened)
            for k in r.when.params.kinds
        }
        if event_kinds:
            self._follow_events()
            events = [e for e in self._events if e.kind in event_kinds]
        else:
            await self._stop_events()
        volumes: list[VolumeFact] = []
        if "volume_lag" in kinds and spec.replicates_volumes:
            for item in (await self._store.list_serializable(VOLUMES)).items:
                with contextlib.suppress(ValueError):
                    copy = CopyRecord.decode(item.value)
                    service, volume = item.key[len(VOLUMES) :].split("/")[:2]
                    if copy.source != copy.node:
                        volumes.append(VolumeFact(service, volume, copy.node, copy.lag(now)))
        backups: list[BackupFact] = []
        targets = dict(backup_targets(spec)) if "backup_age" in kinds else {}
        if targets:
            lasts: dict[str, BackupResultRecord] = {}
            for item in (await self._store.list_serializable(BACKUP_LAST)).items:
                with contextlib.suppress(ValueError):
                    lasts[item.key[len(BACKUP_LAST) :]] = BackupResultRecord.decode(item.value)
            for target, schedule in sorted(targets.items()):
                last = lasts.get(target.key)
                good = None
                if last is not None:
                    good = last.last_good_at or (last.finished_at if last.ok else None)
                every = schedule_interval(schedule.every, schedule.cron, now)
                backups.append(BackupFact(target.key, every, good, last is not None))
        disks: list[DiskFact] = []
        certs: list[CertFact] = []
        if kinds & {"disk", "cert_expiry"}:
            read_at, records = self._node_facts
            if time.monotonic() - read_at >= FACTS_READ_EVERY:
                records = []
                for item in (await self._store.list_serializable(ALERT_FACTS)).items:
                    with contextlib.suppress(ValueError):
                        records.append(NodeFacts.decode(item.value))
                self._node_facts = (time.monotonic(), records)
            for record in records:
                disks.append(DiskFact(record.node, record.path, record.disk_ratio))
                if record.cert_not_after is not None:
                    certs.append(CertFact(record.node, record.cert_not_after))
        store = None
        members = [n.name for n in spec.store_nodes()]
        if members:
            store = StoreFact(len(members), sum(1 for m in members if m in alive))
        return Facts(nodes, instances, events, volumes, backups, disks, store, certs)

    def _restart_times(
        self, key: tuple[str, str], restarts: int, now: float, window: float
    ) -> tuple[float, ...]:
        """When this leader saw the instance's restart count go up (within `window`)."""
        count, times = self._restarts.get(key, (restarts, deque[float]()))
        if restarts > count:
            times.extend([now] * min(restarts - count, 100))
        while times and now - times[0] > window:
            times.popleft()
        self._restarts[key] = (restarts, times)
        return tuple(times)

    def _follow_events(self) -> None:
        if self._events_task is None or self._events_task.done():
            self._events_task = asyncio.create_task(self._watch_events(), name="alert-events")

    async def _stop_events(self) -> None:
        task, self._events_task = self._events_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._events.clear()

    async def _watch_events(self) -> None:
        while True:
            try:
                listing = await self._store.list_serializable(EVENTS)
                self._events.clear()
                for item in listing.items:
                    self._take(item.value)
                async with contextlib.aclosing(
                    self._store.watch(EVENTS, listing.revision + 1)
                ) as changes:
                    async for change in changes:
                        if change.kind == "put" and change.value is not None:
                            self._take(change.value)
            except StoreError as exc:
                log.debug("following events for alerts: %s", exc)
            await asyncio.sleep(1.0)

    def _take(self, raw: bytes) -> None:
        with contextlib.suppress(ValueError):
            event = Event.decode(raw)
            self._events.append(
                EventFact(event.kind, event.subject, event.time, event.node, event.reason)
            )

    # -- notices ------------------------------------------------------------------------

    async def _notify(self, spec: ClusterSpec, notice: Notice) -> None:
        channels = [c for c in notice.channels if c in spec.alerts.channels]
        await self._journal.record(
            f"alert-{notice.kind}",
            notice.rule,
            notice.text,
            alert=notice.alert,
            channels=",".join(channels) or "none",
        )
        for name in channels:
            task = asyncio.create_task(
                self._send(name, spec, notice), name=f"alert-{name}-{notice.alert}"
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, name: str, spec: ClusterSpec, notice: Notice) -> None:
        channel = spec.alerts.channels[name]
        data: dict[str, Any] = {"alert": notice.alert, "channel": name, "notice": notice.kind}
        try:
            tries = await send(channel, notice, self._generator_url)
        except ChannelError as exc:
            await self._journal.record("alert-failed", notice.rule, f"{name}: {exc}", **data)
            return
        except Exception as exc:  # a bug in a channel must not stop the others
            log.exception("channel %s failed", name)
            await self._journal.record("alert-failed", notice.rule, f"{name}: {exc!r}", **data)
            return
        await self._journal.record(
            "alert-sent", notice.rule, f"{notice.kind} to {name}", tries=tries, **data
        )
