"""The arithmetic of an agent's rolling history (docs/observability.md): what a
sample of /metrics says, rates and p99 latency between two samples, the
fixed-size ring that keeps them, and the downsampling of a window for plots.

Everything here is pure (no I/O, no clock, no event loop); `agent/history.py`
samples and serves it.

Memory: a series is one `array('f')` of `capacity` 4-byte floats, plus one
shared `array('d')` of sample times (8 bytes each). At 24 h kept at a 10 s
interval (8640 samples) a series takes 34,560 bytes (about 34 KiB, plus some
200 bytes of key and dict entry) and the times 69,120 bytes; `SeriesRing.nbytes`
says what a ring holds now.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

NAN = float("nan")

Key = tuple[str, str, str]
"""(kind, subject, metric) of a series: ("node", "n1", "cpu_ratio"),
("service", "web", "p99_seconds"), ("volume", "db/data", "lag_seconds")."""

MAX_KINDS = ("p99_seconds", "lag_seconds")
"""Metrics whose downsampled point is the worst (max) of its interval, not the mean:
a latency or lag spike must not be averaged away in a 24 h view."""

ERROR_CODES = frozenset({"5xx", "error"})
"""Response classes counted as errors (`error`: the gateway answered itself)."""

SERIES_BYTES_PER_SAMPLE = array("f").itemsize
TIME_BYTES_PER_SAMPLE = array("d").itemsize


# --- one sample of /metrics -----------------------------------------------------------


@dataclass
class Reading:
    """What one sample of a node's /metrics text says, before any rate."""

    time: float
    gauges: dict[Key, float] = field(default_factory=dict)
    """Series kept as they are: node CPU and memory, healthy instances, volume lag."""
    requests: dict[str, float] = field(default_factory=dict)
    """Per service: the gateway's requests counter."""
    errors: dict[str, float] = field(default_factory=dict)
    """Per service: the gateway's 5xx and `error` responses."""
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    """Per service: the latency histogram, upper bound (inf for +Inf) -> cumulative count."""
    active: dict[str, float] = field(default_factory=dict)
    """Per service: requests in flight (counted in the gateway's +Inf bucket, not observed yet)."""


def read_metrics(text: str, time: float, node: str) -> Reading:
    """The series of `text` (Prometheus' text format) the history keeps.

    Series it does not know are skipped; a gateway series is the service's
    total (label `backend` empty), not one backend's; volume lag is every
    gauge named `ninefold_volume_*lag*`, its subject made of its labels
    (`volume_subject`)."""
    reading = Reading(time)
    memory: dict[str, float] = {}
    for family in text_string_to_metric_families(kept_lines(text)):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            service = labels.get("service", "")
            if name == "ninefold_node_cpu_usage_ratio":
                reading.gauges[("node", node, "cpu_ratio")] = value
            elif name in (
                "ninefold_node_memory_total_bytes",
                "ninefold_node_memory_available_bytes",
            ):
                memory[name] = value
            elif name == "ninefold_instance_healthy" and service:
                key = ("service", service, "healthy_instances")
                reading.gauges[key] = reading.gauges.get(key, 0.0) + value
            elif name.startswith("ninefold_gateway_") and service and not labels.get("backend"):
                if name == "ninefold_gateway_requests_total":
                    reading.requests[service] = value
                elif name == "ninefold_gateway_responses_total":
                    if labels.get("code") in ERROR_CODES:
                        reading.errors[service] = reading.errors.get(service, 0.0) + value
                elif name == "ninefold_gateway_active":
                    reading.active[service] = value
                elif name == "ninefold_gateway_latency_seconds_bucket" and "le" in labels:
                    bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
                    reading.buckets.setdefault(service, {})[bound] = value
            elif _is_volume_lag(name, family.type):
                metric = name.removeprefix("ninefold_volume_")
                reading.gauges[("volume", volume_subject(labels), metric)] = value
    total = memory.get("ninefold_node_memory_total_bytes", 0.0)
    if total > 0 and "ninefold_node_memory_available_bytes" in memory:
        used = 1.0 - memory["ninefold_node_memory_available_bytes"] / total
        reading.gauges[("node", node, "memory_ratio")] = used
    return reading


KEPT_PREFIXES = (
    "# TYPE ",
    "ninefold_node_cpu_usage_ratio",
    "ninefold_node_memory_",
    "ninefold_instance_healthy",
    "ninefold_gateway_requests_total",
    "ninefold_gateway_responses_total",
    "ninefold_gateway_active",
    "ninefold_gateway_latency_seconds_bucket",
    "ninefold_volume_",
)


def kept_lines(text: str) -> str:
    """The lines of `text` `read_metrics` may keep (and every TYPE line): the
    parser then reads a tenth of a gateway's text, whose lines are mostly
    per-backend series."""
    out = []
    for line in text.splitlines():
        if not line.startswith(KEPT_PREFIXES):
            continue
        if line.startswith("ninefold_gateway_") and 'backend=""' not in line:
            continue  # one backend's series; the service's total has backend=""
        out.append(line)
    out.append("")
    return "\n".join(out)


def _is_volume_lag(name: str, kind: str) -> bool:
    if not name.startswith("ninefold_volume_") or "lag" not in name:
        return False
    if kind in ("histogram", "summary", "gaugehistogram"):
        return False  # its buckets are no lag; a gauge of it may come another day
    return not name.endswith(("_created", "_bucket", "_count", "_sum"))


def volume_subject(labels: Mapping[str, str]) -> str:
    """`service/volume`, ` to TARGET` for the copy's node (label `target`), then
    every other label but `node` as ` name=value`."""
    words = ["/".join(labels[k] for k in ("service", "volume") if labels.get(k))]
    if labels.get("target"):
        words.append(f"to {labels['target']}")
    skip = ("node", "service", "volume", "target")
    words += [f"{k}={v}" for k, v in sorted(labels.items()) if k not in skip]
    return " ".join(w for w in words if w) or "-"


# --- from two samples to the history's values ------------------------------------------


def counter_rate(before: float | None, now: float, seconds: float) -> float:
    """Per second between two readings of a counter; a counter that went down
    restarted from 0, so all of `now` is new (Prometheus' rule). NaN without
    an earlier reading or time between them."""
    if before is None or seconds <= 0:
        return NAN
    increase = now - before if now >= before else now
    return increase / seconds


def quantile_from_buckets(
    q: float, before: Mapping[float, float], now: Mapping[float, float], unfinished: float = 0.0
) -> float:
    """The q-quantile (0..1) of what a cumulative histogram observed between two
    readings, interpolated linearly inside its bucket like Prometheus'
    `histogram_quantile`; a value in the +Inf bucket reads as the highest
    finite bound. NaN when nothing was observed. A histogram that went down
    restarted: `now` alone counts.

    `unfinished`: how many more requests are in flight than at `before`. The
    gateway's +Inf bucket counts requests when they start and the others when
    they end, so these are in the +Inf bucket's increase without being slow:
    they are taken out of it (never below the highest finite bucket)."""
    if not now:
        return NAN
    reset = any(now.get(b, 0.0) < c for b, c in before.items())
    bounds = sorted(now)
    deltas = [now[b] - (0.0 if reset else before.get(b, 0.0)) for b in bounds]
    if bounds[-1] == math.inf:
        floor = max(deltas[:-1], default=0.0)
        deltas[-1] = max(floor, deltas[-1] - (0.0 if reset else unfinished))
    total = deltas[-1] if bounds[-1] == math.inf else max(deltas)
    if total <= 0:
        return NAN
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, deltas, strict=True):
        if count >= rank:
            if bound == math.inf:
                return lower
            inside = count - below
            if inside <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / inside
        lower, below = bound, count
    return lower


def derive(before: Reading | None, now: Reading, node: str) -> dict[Key, float]:
    """The history's values at `now`: the gauges as they are, and per service
    requests/s, errors/s (since `before`) and p99 latency of the requests in
    between (NaN when there were none)."""
    values = dict(now.gauges)
    seconds = now.time - before.time if before is not None else 0.0
    for service, count in now.requests.items():
        previous = before.requests.get(service) if before is not None else None
        values[("service", service, "requests_per_second")] = counter_rate(previous, count, seconds)
    for service in now.requests:
        previous = None  # the service appeared just now: no rate yet
        if before is not None and service in before.requests:
            previous = before.errors.get(service, 0.0)
        values[("service", service, "errors_per_second")] = counter_rate(
            previous, now.errors.get(service, 0.0), seconds
        )
    for service, buckets in now.buckets.items():
        if before is None or service not in before.buckets:
            continue
        unfinished = now.active.get(service, 0.0) - before.active.get(service, 0.0)
        values[("service", service, "p99_seconds")] = quantile_from_buckets(
            0.99, before.buckets[service], buckets, unfinished
        )
    return values


# --- the ring ---------------------------------------------------------------------------


class SeriesRing:
    """The last `capacity` samples of every series, in fixed-size arrays.

    A series appears when a sample first has it (earlier slots are NaN) and
    is forgotten once a whole ring has gone by without it; at most
    `max_series` are kept (`refused` counts those turned away), so memory is
    bounded by `(max_series * 4 + 8) * capacity` bytes."""

    def __init__(self, capacity: int, max_series: int = 512) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_series = max_series
        self.times = array("d", [NAN]) * capacity
        self.series: dict[Key, array[float]] = {}
        self._last_seen: dict[Key, int] = {}
        self.count = 0
        """Samples appended since the start (the next one's sequence number)."""
        self.refused = 0

    def append(self, time: float, values: Mapping[Key, float]) -> None:
        slot = self.count % self.capacity
        self.times[slot] = time
        for key, value in values.items():
            column = self.series.get(key)
            if column is None:
                if len(self.series) >= self.max_series:
                    self.refused += 1
                    continue
                column = self.series[key] = array("f", [NAN]) * self.capacity
            column[slot] = value
            self._last_seen[key] = self.count
        for key in [k for k in self.series if k not in values]:
            self.series[key][slot] = NAN
            if self.count - self._last_seen[key] >= self.capacity:
                del self.series[key], self._last_seen[key]
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    @property
    def nbytes(self) -> int:
        """The bytes of the arrays (times and every series), without Python's
        per-object overhead (~200 bytes a series)."""
        return (len(self.series) * SERIES_BYTES_PER_SAMPLE + TIME_BYTES_PER_SAMPLE) * self.capacity

    def copy(self) -> SeriesRing:
        """A copy to read from elsewhere (a thread) while this one goes on (a
        memcpy per array)."""
        other = SeriesRing(self.capacity, self.max_series)
        other.times = array("d", self.times)
        other.series = {k: array("f", v) for k, v in self.series.items()}
        other._last_seen = dict(self._last_seen)
        other.count, other.refused = self.count, self.refused
        return other

    def ordered(self, since: float = -math.inf) -> tuple[list[float], dict[Key, list[float]]]:
        """The samples taken at or after `since`, oldest first: times and each series."""
        n = len(self)
        start = self.count % self.capacity if self.count >= self.capacity else 0

        def rotated(column: array[Any]) -> array[Any]:  # oldest first (C-speed slices)
            return column[start:n] + column[:start]

        times = rotated(self.times).tolist()
        first = bisect.bisect_left(times, since)  # sample times only grow
        return times[first:], {k: rotated(v)[first:].tolist() for k, v in self.series.items()}


def memory_estimate(capacity: int, series: int) -> int:
    """Bytes of a ring of `capacity` samples of `series` series (arrays only)."""
    return (series * SERIES_BYTES_PER_SAMPLE + TIME_BYTES_PER_SAMPLE) * capacity


def typical_series(services: int, volumes: int) -> int:
    """Series one agent keeps: CPU and memory, four per service (requests/s,
    errors/s, p99, healthy instances) and one per volume lag series."""
    return 2 + 4 * services + volumes


# --- windows and downsampling -------------------------------------------------------------

WINDOWS: dict[str, float] = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0}
"""The windows the API and the dashboard offer, in seconds."""
MAX_POINTS = 360
"""A window is downsampled to at most this many points (24 h: one per 4 min)."""


def window_step(window: float, interval: float, max_points: int = MAX_POINTS) -> float:
    """The width of a point of `window`: the sampling interval, or the least
    whole multiple of it that fits the window in `max_points` points."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    multiple = max(1, math.ceil(window / max_points / interval - 1e-9))
    return multiple * interval


@dataclass(frozen=True)
class Downsampled:
    times: list[float]
    """The start of each point's interval (aligned to multiples of `step`); only
    intervals with at least one sample."""
    series: dict[Key, list[float | None]]
    """Per point: the mean of its samples (the max for MAX_KINDS); None when the
    series had no value then."""


def downsample(
    times: list[float], series: Mapping[Key, Iterable[float]], step: float
) -> Downsampled:
    """`times` (ascending) and their series cut into intervals of `step` seconds.

    NaN values are left out of a point; a point with none is None."""
    if step <= 0:
        raise ValueError("step must be positive")
    groups: list[tuple[float, int, int]] = []  # (start, first index, end index)
    for i, t in enumerate(times):
        start = math.floor(t / step) * step
        if groups and groups[-1][0] == start:
            groups[-1] = (start, groups[-1][1], i + 1)
        else:
            groups.append((start, i, i + 1))
    out: dict[Key, list[float | None]] = {}
    for key, raw in series.items():
        values = list(raw)
        worst = key[2] in MAX_KINDS
        points: list[float | None] = []
        for _, first, end in groups:
            chunk = [v for v in values[first:end] if v == v]  # NaN != NaN
            if not chunk:
                points.append(None)
            else:
                points.append(max(chunk) if worst else math.fsum(chunk) / len(chunk))
        out[key] = points
    return Downsampled([g[0] for g in groups], out)


def rounded(value: float | None, digits: int = 6) -> float | None:
    """A point for JSON: None stays None, floats lose float32's noise."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return float(f"{value:.{digits}g}")
