"""The leader's alert decision: from facts about the cluster, the alerts'
previous states and the time, their new states and the notices to send.
Pure: the doer (agent/alerts.py) reads the facts, silences, acks and previous
states from the store, calls `evaluate`, writes the states back (guarded by
the leader lock, so a new leader does not send again) and only then sends.

An alert is one rule matched on one subject (a node, an instance, a volume
copy...); its labels name it, and its id is a hash of them. It is `pending`
while its condition holds for less than the rule's `for:`, then `firing`;
when the condition ends it is `resolved` (kept a while, then dropped).

Notices: `firing` once when it fires, `repeat` every `repeat` seconds while
it fires (not while acknowledged), `resolved` when it ends (only if a
firing notice went out), and `healed` when a pending alert ends before its
`for:` and its rule says `notify_healed` (a failure ninefold healed by itself,
seed 001). A silence whose matchers match an alert's labels holds back every
notice of it while the silence lasts; a firing alert that was never notified
is notified when its silence ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict

from ninefold.spec.alerts import (
    BackupAge,
    CertExpiry,
    DiskUsage,
    EventHappened,
    InstanceUnhealthy,
    RestartLoop,
    Rule,
    StoreQuorum,
    VolumeLag,
)

KEEP_RESOLVED = 900.0
"""Seconds a resolved alert stays listed (and its id remembered)."""

AlertPhase = Literal["pending", "firing", "resolved"]
NoticeKind = Literal["firing", "repeat", "resolved", "healed"]

# --- facts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceFact:
    service: str
    instance: str
    node: str
    state: str
    health: str
    restart_times: tuple[float, ...] = ()
    """When the doer saw its restart count go up (recent ones)."""


@dataclass(frozen=True)
class EventFact:
    kind: str
    subject: str
    time: float
    node: str = ""
    reason: str = ""


@dataclass(frozen=True)
class VolumeFact:
    service: str
    volume: str
    node: str
    lag: float


@dataclass(frozen=True)
class BackupFact:
    target: str
    every: float
    """Its schedule's interval (for cron: the gap between two slots)."""
    last_good_at: float | None
    tried: bool
    """Some run of it has finished (a target never tried is not late yet)."""


@dataclass(frozen=True)
class DiskFact:
    node: str
    path: str
    ratio: float


@dataclass(frozen=True)
class CertFact:
    node: str
    not_after: float


@dataclass(frozen=True)
class StoreFact:
    members: int
    alive: int


@dataclass(frozen=True)
class Facts:
    """What the rules look at, read by the doer at one time."""

    nodes: Mapping[str, bool] = field(default_factory=dict)
    """Node name -> alive (its lease is there)."""
    instances: Sequence[InstanceFact] = ()
    events: Sequence[EventFact] = ()
    volumes: Sequence[VolumeFact] = ()
    backups: Sequence[BackupFact] = ()
    disks: Sequence[DiskFact] = ()
    store: StoreFact | None = None
    certs: Sequence[CertFact] = ()


# --- states, silences, acks, notices --------------------------------------------------


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls.model_validate_json(raw)


class AlertState(_Data):
    """One alert, as the store keeps it (`alerts/state/<id>`)."""

    id: str
    rule: str
    labels: dict[str, str]
    severity: str
    text: str
    value: str = ""
    state: AlertPhase
    active_since: float
    """When its condition began to hold."""
    fired_at: float | None = None
    resolved_at: float | None = None
    notified_at: float | None = None
    """When its last firing or repeat notice went out (None: none yet)."""
    notices: int = 0
    channels: list[str] = []
    repeat: float = 0.0
    healed: bool = False
    """It ended before its `for:` (it never fired)."""
    silenced_by: list[str] = []
    acked_until: float | None = None


class Silence(_Data):
    """Holds back the notices of every alert whose labels match all its
    matchers (a value may hold `*` and `?` wildcards) until `ends_at`."""

    id: str
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    comment: str = ""
    created_by: str = ""

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(fnmatchcase(labels.get(k, ""), v) for k, v in self.matchers.items())


class Ack(_Data):
    """An alert acknowledged: no repeat until it resolves or `until`."""

    alert: str
    until: float
    at: float
    comment: str = ""
    by: str = ""


class Notice(_Data):
    """What goes to the channels about one alert."""

    alert: str
    kind: NoticeKind
    status: Literal["firing", "resolved"]
    rule: str
    labels: dict[str, str]
    severity: str
    text: str
    value: str = ""
    starts_at: float
    ends_at: float | None = None
    """None while firing."""
    channels: list[str]
    repeat: float = 0.0
    at: float


@dataclass
class Evaluation:
    states: dict[str, AlertState]
    """Every alert still known, by id (resolved ones until KEEP_RESOLVED)."""
    notices: list[Notice]
    dropped: list[str]
    """Ids of alerts forgotten (resolved long enough ago)."""
    done_acks: list[str]
    """Alert ids whose ack is over (resolved, or expired)."""
    done_silences: list[str]
    """Ids of silences expired."""


# --- matching ------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    labels: dict[str, str]
    value: str
    since: float | None = None
    fields: dict[str, str] = field(default_factory=dict)


def restarts_within(times: Sequence[float], now: float, within: float) -> int:
    return sum(1 for t in times if now - t <= within)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(rule: Rule, facts: Facts, now: float) -> list[Match]:
    """Every subject `rule`'s condition holds for now."""
    kind, params = rule.when.kind, rule.when.params
    out: list[Match] = []
    if kind == "node_down":
        out = [Match({"node": n}, "down") for n, alive in sorted(facts.nodes.items()) if not alive]
    elif kind == "instance_unhealthy":
        assert isinstance(params, InstanceUnhealthy)
        for i in facts.instances:
            if params.service is not None and i.service != params.service:
                continue
            if i.state in ("failed", "backoff"):
                value = i.state
            elif i.state == "running" and i.health == "unhealthy":
                value = "unhealthy"
            else:
                continue
            out.append(Match({"node": i.node, "service": i.service, "instance": i.instance}, value))
    elif kind == "failover":
        assert isinstance(params, EventHappened)
        latest: dict[str, EventFact] = {}
        for e in facts.events:
            recent = e.kind in params.kinds and 0 <= now - e.time < params.within
            if recent and (e.subject not in latest or e.time > latest[e.subject].time):
                latest[e.subject] = e
        for subject, e in sorted(latest.items()):
            out.append(
                Match(
                    {"service": subject, "kind": e.kind},
                    e.reason,
                    since=e.time,
                    fields={"node": e.node, "reason": e.reason},
                )
            )
    elif kind == "restart_loop":
        assert isinstance(params, RestartLoop)
        for i in facts.instances:
            count = restarts_within(i.restart_times, now, params.within)
            if count >= params.restarts:
                labels = {"node": i.node, "service": i.service, "instance": i.instance}
                out.append(Match(labels, str(count)))
    elif kind == "volume_lag":
        assert isinstance(params, VolumeLag)
        for v in facts.volumes:
            if v.lag > params.over:
                labels = {"node": v.node, "service": v.service, "volume": v.volume}
                out.append(Match(labels, _number(v.lag)))
    elif kind == "backup_age":
        assert isinstance(params, BackupAge)
        for b in facts.backups:
            if b.last_good_at is None:
                if b.tried:
                    out.append(Match({"target": b.target}, "never"))
                continue
            age = now - b.last_good_at
            if age > params.factor * b.every:
                out.append(Match({"target": b.target}, _number(age)))
    elif kind == "disk":
        assert isinstance(params, DiskUsage)
        for d in facts.disks:
            if d.ratio > params.over:
                out.append(
                    Match({"node": d.node}, f"{d.ratio * 100:.1f}%", fields={"path": d.path})
                )
    elif kind == "store_quorum":
        assert isinstance(params, StoreQuorum)
        s = facts.store
        if s is not None and s.members > 0 and s.alive < s.members // 2 + 1 + params.margin:
            fields = {"alive": str(s.alive), "members": str(s.members)}
            out.append(Match({}, str(s.alive), fields=fields))
    elif kind == "cert_expiry":
        assert isinstance(params, CertExpiry)
        for c in facts.certs:
            left = c.not_after - now
            if left < params.within:
                fields = {"expires": _iso(c.not_after)}
                out.append(Match({"node": c.node}, _number(max(0.0, left)), fields=fields))
    return out


def alert_id(labels: Mapping[str, str]) -> str:
    """Stable across leaders: a hash of the labels."""
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(text: str, values: Mapping[str, str]) -> str:
    """`text` with its `{name}` placeholders filled in (an unknown one stays)."""
    try:
        return text.format_map(_Missing(values))
    except (ValueError, IndexError, KeyError, AttributeError):
        return text


_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# --- evaluation ------------------------------------------------------------------------


def evaluate(
    rules: Sequence[Rule],
    facts: Facts,
    previous: Mapping[str, AlertState],
    silences: Sequence[Silence],
    acks: Mapping[str, Ack],
    now: float,
    *,
    base_labels: Mapping[str, str] | None = None,
    keep_resolved: float = KEEP_RESOLVED,
) -> Evaluation:
    """The new states and the notices to send now (see the module's docstring)."""
    live = [s for s in silences if s.active(now)]

    def silenced_by(labels: Mapping[str, str]) -> list[str]:
        return [s.id for s in live if s.matches(labels)]

    states: dict[str, AlertState] = {}
    notices: list[Notice] = []

    def notice(state: AlertState, kind: NoticeKind, ends_at: float | None = None) -> None:
        notices.append(
            Notice(
                alert=state.id,
                kind=kind,
                status="resolved" if kind in ("resolved", "healed") else "firing",
                rule=state.rule,
                labels=state.labels,
                severity=state.severity,
                text=state.text,
                value=state.value,
                starts_at=state.active_since,
                ends_at=ends_at,
                channels=state.channels,
                repeat=state.repeat,
                at=now,
            )
        )

    for rule in rules:
        for match in matches(rule, facts, now):
            labels = {
                **(base_labels or {}),
                "alertname": rule.name,
                "severity": rule.severity,
                **rule.labels,
                **match.labels,
            }
            labels = {k: v for k, v in labels.items() if _LABEL.fullmatch(k)}
            ident = alert_id(labels)
            if ident in states:
                continue
            values = {
                **labels, **match.fields, "value": match.value, "rule": rule.name,
            }  # fmt: skip
            text = render(rule.text, values)
            prev = previous.get(ident)
            if prev is None or prev.state == "resolved":
                state = AlertState(
                    id=ident,
                    rule=rule.name,
                    labels=labels,
                    severity=rule.severity,
                    text=text,
                    value=match.value,
                    state="pending",
                    active_since=match.since if match.since is not None else now,
                )
            else:
                state = prev.model_copy(update={"text": text, "value": match.value})
            state.channels = list(rule.channels)
            state.repeat = rule.repeat
            if state.state == "pending" and now - state.active_since >= rule.for_:
                state.state = "firing"
                state.fired_at = now
            state.silenced_by = silenced_by(labels)
            ack = acks.get(ident)
            acked = state.state == "firing" and ack is not None and ack.until > now
            state.acked_until = ack.until if acked and ack is not None else None
            if state.state == "firing" and not state.silenced_by:
                if state.notified_at is None:
                    notice(state, "firing")
                elif not acked and now - state.notified_at >= rule.repeat:
                    notice(state, "repeat")
                else:
                    states[ident] = state
                    continue
                state.notified_at = now
                state.notices += 1
            states[ident] = state

    by_name = {r.name: r for r in rules}
    dropped: list[str] = []
    for ident, prev in previous.items():
        if ident in states:
            continue
        if prev.state == "resolved":
            if prev.resolved_at is not None and now - prev.resolved_at < keep_resolved:
                states[ident] = prev
            else:
                dropped.append(ident)
            continue
        state = prev.model_copy(
            update={"state": "resolved", "resolved_at": now, "acked_until": None}
        )
        state.silenced_by = silenced_by(state.labels)
        if prev.state == "firing":
            if prev.notified_at is not None and not state.silenced_by:
                notice(state, "resolved", ends_at=now)
        else:  # pending: ended before its for:
            state.healed = True
            settled = by_name.get(prev.rule)
            if settled is not None and settled.notify_healed and not state.silenced_by:
                notice(state, "healed", ends_at=now)
        states[ident] = state

    done_acks = [
        a for a, ack in acks.items()
        if ack.until <= now or states.get(a) is None or states[a].state != "firing"
    ]  # fmt: skip
    done_silences = [s.id for s in silences if s.ends_at <= now]
    return Evaluation(states, notices, dropped, done_acks, done_silences)


def ends_at_for_receiver(notice: Notice) -> float:
    """The `endsAt` a firing alert is sent with, so an Alertmanager keeps it
    active until the next repeat (it expires a firing alert without one):
    one and a half repeat intervals after the notice; a resolved one ends when
    it did."""
    if notice.ends_at is not None:
        return notice.ends_at
    repeat = notice.repeat if notice.repeat > 0 and math.isfinite(notice.repeat) else 3600.0
    return notice.at + 1.5 * repeat
