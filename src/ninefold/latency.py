"""How long something took, counted into the buckets of a Prometheus histogram
by whoever times it (health checks, lease renewals) and read by a collector at
scrape time. A few integers per histogram: nothing is kept per observation."""

from __future__ import annotations

from collections.abc import Sequence

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds), the gateway's too (`gateway.engine.LATENCY_BUCKETS`)."""


class LatencyHistogram:
    def __init__(self, bounds: Sequence[float] = BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.count = 0
        self.sum = 0.0
        self.last: float | None = None
        """The latest observation (None before the first)."""

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        index = next((i for i, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        self._counts[index] += 1
        self.count += 1
        self.sum += seconds
        self.last = seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound, count) pairs ending with +Inf, as
        `HistogramMetricFamily.add_metric` takes them."""
        out, total = [], 0
        for bound, count in zip(self.bounds, self._counts, strict=False):
            total += count
            out.append((repr(bound), float(total)))
        out.append(("+Inf", float(self.count)))
        return out
