"""Measured availability, from the client's side: each node's probes of each
service's route through its own gateway (agent/probes.py) and the requests its
gateway answered and failed, turned into figures per service. Pure: the API
reads the records, calls `service_availability` with the time, and shows it.

What a node records, for each route it probes (once a second, ten times a
second while the route fails): the spans of time it was probing, and each
interval it saw the route down with its edges' brackets. The outage began
after its last good probe and by its first failed one (`last_ok` <
start <= `first_failed`), and ended after its last failed probe and by its
first good one again (`last_failed` < end <= `first_ok`).

How the nodes are merged (docs/availability.md):

- A node's interval is estimated from the middle of its brackets: with a
  probe a second, a start is known within +-0.5 s, an end within +-0.05 s.
- A moment is down when every node observing the service then (probing it,
  through its own gateway, while it held its lease) saw it down. A node that
  is cut off from the others sees routes fail that work for every client
  elsewhere: it does not make an outage alone. A node that stops probing
  (dead, stopped, without its lease) no longer has a say.
- Each edge of such a period is then narrowed by the other nodes' brackets
  of the same edge: the nodes see one outage at different phases (the agents
  stagger their probes), so it lies in the intersection of their brackets.
  With three nodes a start is known within about +-0.17 s.

Each period of downtime is an incident; its cause is taken from the event
journal around its start (`cause_of`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ninefold.state.records import Event

WINDOWS: tuple[tuple[str, float], ...] = (("1h", 3600.0), ("24h", 86400.0), ("30d", 30 * 86400.0))
"""The windows figures are given for, by name."""
KEEP = 30 * 86400.0
"""Seconds the records are kept (the longest window)."""
PRECISION = 0.5
"""Seconds: how precisely an outage's edges are measured (at worst, one node)."""
CAUSE_BEFORE = 30.0
CAUSE_AFTER = 10.0
"""Seconds before and after an incident's start in which events may be its
cause: a decision (a drain, a move) comes before the outage it makes; a
detection (unhealthy after `fall` checks, a node lost after its lease's TTL)
after it."""
STALE = 30.0
"""Seconds after which an open probing span is no longer taken to go on
(its node rewrites it every 10 s)."""
_EPS = 1e-6


@dataclass(frozen=True)
class DownInterval:
    """One node's observation of one outage of a route (times: when the probes
    were sent, Unix seconds)."""

    node: str
    first_failed: float
    last_failed: float
    last_ok: float | None = None
    """The last good probe before it; None: the node began probing during it."""
    first_ok: float | None = None
    """The first good probe after it; None: still down (or cut short, see `cut`)."""
    error: str = ""
    """What the first failed probe saw."""

    @property
    def start_bracket(self) -> tuple[float, float]:
        return (-math.inf if self.last_ok is None else self.last_ok, self.first_failed)

    @property
    def end_bracket(self) -> tuple[float, float]:
        return (self.last_failed, math.inf if self.first_ok is None else self.first_ok)

    @property
    def start(self) -> float:
        """The estimated start: the middle of its bracket (its first failure
        when it has no good probe before)."""
        if self.last_ok is None:
            return self.first_failed
        return (self.last_ok + self.first_failed) / 2

    @property
    def end(self) -> float:
        """The estimated end; +inf while it goes on."""
        if self.first_ok is None:
            return math.inf
        return (self.last_failed + self.first_ok) / 2


@dataclass(frozen=True)
class NodeObservation:
    """What one node saw of one service: when it was probing, and the outages."""

    node: str
    spans: tuple[tuple[float, float], ...]
    """(start, end) of each time it was probing, as `coverage` gives them."""
    downs: tuple[DownInterval, ...] = ()


@dataclass(frozen=True)
class Traffic:
    """Client requests through one gateway in one minute (or one hour, for
    the older ones), the node's own probes taken out."""

    start: float
    """The minute's (hour's) start, Unix seconds."""
    answered: int
    failed: int
    """Answered with a 5xx, or by the gateway itself (nothing could serve it)."""
    seconds: float = 60.0
    """How long it counted: a window has the counts whose middle is in it."""


@dataclass(frozen=True)
class Period:
    """A time the service was down for every node observing it."""

    start: float
    end: float | None
    """None: it goes on."""


@dataclass(frozen=True)
class Incident:
    start: float
    end: float | None
    cause: str

    def duration(self, now: float) -> float:
        return max(0.0, (now if self.end is None else self.end) - self.start)


@dataclass(frozen=True)
class WindowFigures:
    seconds: float
    """The window's length."""
    observed_seconds: float
    """How much of it at least one node was probing."""
    downtime_seconds: float
    availability_percent: float | None
    """None: not observed at all."""
    nines: float | None
    """-log10(unavailability), at most log10(observed / PRECISION): what the
    observed time can show at the measurement's precision."""
    requests_answered: int = 0
    requests_failed: int = 0

    @property
    def request_success_percent(self) -> float | None:
        total = self.requests_answered + self.requests_failed
        return None if total == 0 else round(100.0 * self.requests_answered / total, 4)


@dataclass(frozen=True)
class ServiceAvailability:
    service: str
    windows: dict[str, WindowFigures]
    incidents: list[Incident]
    observers: list[str] = field(default_factory=list)
    """The nodes probing it now."""


# -- coverage --------------------------------------------------------------------------


def coverage(
    spans: Iterable[tuple[float, float]],
    open_: bool,
    alive: bool,
    now: float,
    written_at: float | None = None,
) -> tuple[tuple[float, float], ...]:
    """A node's probing spans as recorded, sorted and merged, clipped to the
    last KEEP seconds and to `now`; the last span runs on to `now` while the
    node says it is still probing (`open_`), is alive (its lease is, so its
    agent writes on) and wrote it less than STALE ago (an agent that
    restarts rewrites it); a node that died is taken to have stopped at its
    last write."""
    items = sorted((s, e) for s, e in spans if e >= s)
    fresh = written_at is None or now - written_at <= STALE
    if open_ and alive and fresh and items:
        items[-1] = (items[-1][0], max(items[-1][1], now))
    return _merge(items, now - KEEP, now)


def _merge(
    items: Iterable[tuple[float, float]], lo: float, hi: float
) -> tuple[tuple[float, float], ...]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(items):
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        if out and s <= out[-1][1] + _EPS:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return tuple(out)


def _measure(items: Iterable[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(e - s for s, e in _merge(items, lo, hi))


class _Spans:
    """Membership in a sorted, disjoint list of spans."""

    def __init__(self, spans: Sequence[tuple[float, float]]) -> None:
        self.spans = list(spans)
        self.starts = [s for s, _ in self.spans]

    def find(self, t: float) -> int | None:
        i = bisect.bisect_right(self.starts, t) - 1
        if i >= 0 and self.spans[i][0] <= t < self.spans[i][1]:
            return i
        return None


# -- merging the nodes ----------------------------------------------------------------------


@dataclass
class _Clipped:
    """A node's down interval cut to its coverage."""

    interval: DownInterval
    start: float
    end: float


def down_periods(observations: Sequence[NodeObservation], now: float) -> list[Period]:
    """The times every observing node saw the service down, oldest first,
    each edge narrowed by the nodes' brackets (see the module's text)."""
    coverages = {o.node: _Spans(_merge(o.spans, -math.inf, now)) for o in observations}
    clipped: dict[str, list[_Clipped]] = {}
    for obs in observations:
        pieces: list[_Clipped] = []
        for down in obs.downs:
            start = down.start
            if down.last_ok is None:  # it began probing during the outage: from then on
                i = coverages[obs.node].find(start)
                start = start if i is None else coverages[obs.node].spans[i][0]
            end = min(down.end, now)
            for s, e in coverages[obs.node].spans:
                a, b = max(start, s), min(end, e)
                if b > a:
                    pieces.append(_Clipped(down, a, b))
        pieces.sort(key=lambda p: p.start)
        clipped[obs.node] = pieces
    downs = {node: _Spans([(p.start, p.end) for p in pieces]) for node, pieces in clipped.items()}
    edges = sorted(
        {x for spans in coverages.values() for span in spans.spans for x in span}
        | {x for pieces in clipped.values() for p in pieces for x in (p.start, p.end)}
    )
    raw: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(edges):
        if b - a <= _EPS:
            continue
        mid = (a + b) / 2
        observers = [node for node, spans in coverages.items() if spans.find(mid) is not None]
        if observers and all(downs[node].find(mid) is not None for node in observers):
            if raw and abs(raw[-1][1] - a) <= _EPS:
                raw[-1] = (raw[-1][0], b)
            else:
                raw.append((a, b))
    periods: list[Period] = []
    previous_end = -math.inf
    for i, (a, b) in enumerate(raw):
        after = raw[i + 1][0] if i + 1 < len(raw) else math.inf
        start = _narrow_edge("start", a, b, coverages, clipped, downs)
        start = max(start, previous_end)
        if b >= now - _EPS and _ongoing_at(b, coverages, clipped, downs):
            periods.append(Period(start, None))
            break
        finish = min(_narrow_edge("end", a, b, coverages, clipped, downs), after)
        if finish - start <= _EPS:
            continue
        periods.append(Period(start, finish))
        previous_end = finish
    return periods


def _at(
    t: float,
    coverages: Mapping[str, _Spans],
    clipped: Mapping[str, list[_Clipped]],
    downs: Mapping[str, _Spans],
) -> list[_Clipped]:
    """The clipped intervals of the nodes observing at `t` that contain it."""
    out = []
    for node, spans in coverages.items():
        if spans.find(t) is None:
            continue
        i = downs[node].find(t)
        if i is not None:
            out.append(clipped[node][i])
    return out


def _intersect(brackets: Iterable[tuple[float, float]]) -> tuple[float, float]:
    lo, hi = -math.inf, math.inf
    for a, b in brackets:
        lo, hi = max(lo, a), min(hi, b)
    return lo, hi


def _narrow_edge(
    edge: Literal["start", "end"],
    a: float,
    b: float,
    coverages: Mapping[str, _Spans],
    clipped: Mapping[str, list[_Clipped]],
    downs: Mapping[str, _Spans],
) -> float:
    """A period [a, b]'s start or end, narrowed when a node's own outage edge
    set it: the middle of the brackets of every node that saw that edge."""
    at = a if edge == "start" else b
    here = _at(
        min(a + _EPS, (a + b) / 2) if edge == "start" else max(b - _EPS, (a + b) / 2),
        coverages, clipped, downs,
    )  # fmt: skip

    def period_edge(p: _Clipped) -> float:
        return p.start if edge == "start" else p.end

    def outage_edge(p: _Clipped) -> float:
        return p.interval.start if edge == "start" else p.interval.end

    def bracket(p: _Clipped) -> tuple[float, float]:
        return p.interval.start_bracket if edge == "start" else p.interval.end_bracket

    setters = [
        p for p in here if abs(period_edge(p) - at) <= _EPS and abs(outage_edge(p) - at) <= _EPS
    ]
    if not setters:
        return at  # a coverage edge: a node began or stopped observing
    own = bracket(setters[0])
    overlapping = [bracket(p) for p in here if bracket(p)[0] <= own[1] and own[0] <= bracket(p)[1]]
    lo, hi = _intersect(overlapping)
    if lo > hi or not (math.isfinite(lo) and math.isfinite(hi)):
        return at
    return (lo + hi) / 2


def _ongoing_at(
    b: float,
    coverages: Mapping[str, _Spans],
    clipped: Mapping[str, list[_Clipped]],
    downs: Mapping[str, _Spans],
) -> bool:
    """Whether a period reaching `now` goes on: every node observing then is
    in an outage that has not ended."""
    here = _at(b - _EPS, coverages, clipped, downs)
    return bool(here) and all(p.interval.first_ok is None for p in here)


# -- causes --------------------------------------------------------------------------------

_RANKS: tuple[tuple[str, ...], ...] = (
    ("exited", "failed", "start-failed"),
    ("node-lost", "fenced", "machine-fenced"),
    ("failover", "switchover", "demoted", "promoted"),
    ("health",),
    ("stopped", "removed", "moved", "unplaced", "rolling", "restarted"),
    ("restore-failed", "vip-down", "leader", "access-failed"),
)
"""Kinds of events that may cause an outage, the likeliest first."""
_CLUSTER_WIDE = {"node-lost", "machine-fenced", "leader", "vip-down", "access-failed"}
"""Kinds about the cluster rather than one service: a cause of any outage near them."""


def _about(event: Event, service: str) -> bool:
    """Whether an event names the service or one of its instances."""
    if event.kind in _CLUSTER_WIDE:
        return True
    if event.kind == "health" and event.reason != "unhealthy":
        return False
    subject = event.subject
    return (
        subject == service
        or re.fullmatch(rf"{re.escape(service)}-\d+", subject) is not None
        or subject.startswith(f"{service}/")
        or event.data.get("service") == service
    )


def cause_of(service: str, start: float, events: Sequence[Event]) -> str:
    """The likeliest cause of an outage of `service` starting at `start`:
    the events about it (or about the cluster: a node lost) from CAUSE_BEFORE
    before to CAUSE_AFTER after, of the likeliest kind, those of that kind
    close to the first one said together (`web-0, web-1 exited (killed by
    SIGKILL)`)."""
    near = [
        e
        for e in events
        if start - CAUSE_BEFORE <= e.time <= start + CAUSE_AFTER and _about(e, service)
    ]
    for kinds in _RANKS:
        ranked = [e for e in near if e.kind in kinds]
        if not ranked:
            continue
        first = min(ranked, key=lambda e: abs(e.time - start))
        same = sorted(
            (e for e in ranked if e.kind == first.kind and abs(e.time - first.time) <= 5.0),
            key=lambda e: e.time,
        )
        return _say(first.kind, same)
    if not events or min(e.time for e in events) > start - CAUSE_BEFORE:
        return "unknown (the event journal does not reach back to it)"
    return "unknown (no event about it near its start)"


_VERBS = {
    "exited": "exited",
    "failed": "failed (gave up restarting)",
    "start-failed": "could not start",
    "node-lost": "lost",
    "fenced": "fenced",
    "machine-fenced": "fenced",
    "failover": "failover",
    "switchover": "switchover",
    "demoted": "demoted",
    "promoted": "promoted",
    "health": "unhealthy",
    "stopped": "stopped",
    "removed": "removed",
    "moved": "moved",
    "unplaced": "not placed",
    "rolling": "restarted for a new generation",
    "restarted": "restarted",
    "restore-failed": "restore failed",
    "vip-down": "VIP dropped",
    "leader": "leader changed",
    "access-failed": "access policy failed to load",
}


def _say(kind: str, events: Sequence[Event]) -> str:
    subjects = list(dict.fromkeys(e.subject for e in events))
    reasons = list(dict.fromkeys(e.reason for e in events if e.reason and kind != "health"))
    verb = _VERBS.get(kind, kind)
    what = ", ".join(subjects)
    if kind in ("node-lost", "machine-fenced"):
        what = ("node " if len(subjects) == 1 else "nodes ") + what
    if kind in ("failover", "switchover", "leader"):
        text = f"{verb} of {what}" if kind != "leader" else verb
    else:
        text = f"{what} {verb}"
    if reasons:
        text += f" ({'; '.join(reasons[:2])})"
    return text


# -- figures ---------------------------------------------------------------------------------


def nines(downtime: float, observed: float) -> float | None:
    """-log10 of the unavailability, at most what `observed` can show at PRECISION."""
    if observed <= 0:
        return None
    cap = math.log10(observed / PRECISION) if observed > PRECISION else 0.0
    if downtime <= 0:
        return round(cap, 2)
    return round(max(0.0, min(-math.log10(min(1.0, downtime / observed)), cap)), 2)


def window_figures(
    seconds: float,
    periods: Sequence[Period],
    observed: Sequence[tuple[float, float]],
    traffic: Sequence[Traffic],
    now: float,
) -> WindowFigures:
    """The figures over the last `seconds`: `observed` is the union of the
    nodes' coverage."""
    lo = now - seconds
    seen = _measure(observed, lo, now)
    down = _measure(((p.start, now if p.end is None else p.end) for p in periods), lo, now)
    down = min(down, seen)
    percent = None if seen <= 0 else round(100.0 * (seen - down) / seen, 4)
    counted = [t for t in traffic if lo <= t.start + t.seconds / 2 and t.start < now]
    answered = sum(t.answered for t in counted)
    failed = sum(t.failed for t in counted)
    return WindowFigures(
        seconds=seconds,
        observed_seconds=round(seen, 3),
        downtime_seconds=round(down, 3),
        availability_percent=percent,
        nines=nines(down, seen),
        requests_answered=answered,
        requests_failed=failed,
    )


def service_availability(
    service: str,
    observations: Sequence[NodeObservation],
    events: Sequence[Event],
    traffic: Sequence[Traffic],
    now: float,
) -> ServiceAvailability:
    """Everything `GET /v1/availability` says of one service."""
    periods = down_periods(observations, now)
    observed = [span for o in observations for span in o.spans]
    windows = {
        name: window_figures(seconds, periods, observed, traffic, now) for name, seconds in WINDOWS
    }
    incidents = [
        Incident(p.start, p.end, cause_of(service, p.start, events))
        for p in periods
        if p.end is None or p.end >= now - KEEP
    ]
    observers = sorted(o.node for o in observations if o.spans and o.spans[-1][1] >= now - _EPS)
    return ServiceAvailability(service, windows, incidents, observers)


# -- for people ------------------------------------------------------------------------------


def summary_lines(answer: Mapping[str, Any], window: str = "1h") -> list[str]:
    """One line per service of a `GET /v1/availability` answer, for the
    demo's and the lab drills' reports: `web: 99.9065% over 1h (3.03 nines),
    3.4s down in 1 incident, the last: web-0 exited (killed by SIGKILL)`."""
    lines = []
    for service in answer.get("services", []):
        figures = service.get("windows", {}).get(window, {})
        percent = figures.get("availability_percent")
        if percent is None:
            lines.append(f"{service.get('service')}: not observed yet")
            continue
        start = float(answer.get("time", 0.0)) - dict(WINDOWS).get(window, 3600.0)
        incidents = [
            i for i in service.get("incidents", []) if i.get("end") is None or i["end"] >= start
        ]
        text = f"{service.get('service')}: {percent:g}% over {window}"
        if figures.get("nines") is not None:
            text += f" ({figures['nines']:.2f} nines)"
        down = float(figures.get("downtime_seconds", 0.0))
        if not incidents:
            lines.append(text + ", no downtime")
            continue
        many = "incident" if len(incidents) == 1 else "incidents"
        last = incidents[-1]
        lines.append(
            f"{text}, {down:.1f}s down in {len(incidents)} {many}, the last: "
            f"{last.get('cause', '?')}" + (" (ongoing)" if last.get("end") is None else "")
        )
    return lines
