"""This agent's rolling history of its own series, for the dashboard's plots
(docs/observability.md#history).

Every `interval` (default 10 s) the sampler reads the node's /metrics text
(the same function the route serves), keeps what `history_math.read_metrics`
selects (node CPU and memory; per service requests/s, errors/s, p99 latency
and healthy instances; volume lag) and appends it to a fixed-size ring (24 h:
8640 samples). Rendering the text is what a scrape does, on the event loop;
parsing it and downsampling a window for `GET /v1/history` run in a thread,
on a copy of the ring."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from ninefold import defaults
from ninefold.history_math import (
    WINDOWS,
    Reading,
    SeriesRing,
    derive,
    downsample,
    read_metrics,
    rounded,
    window_step,
)

log = logging.getLogger("ninefold.history")

MAX_SAMPLES = 8640
"""A ring holds at most this many samples (24 h at 10 s), so memory stays
bounded whatever the interval: a shorter one keeps a shorter history."""
INTERVAL_ENV = "NINEFOLD_HISTORY_INTERVAL"
"""Overrides the sampling interval (seconds), for tests and benchmarks."""


def configured_interval() -> float:
    """`defaults.HISTORY_INTERVAL`, or $NINEFOLD_HISTORY_INTERVAL when it is a
    positive number of seconds."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return defaults.HISTORY_INTERVAL
    return value if value > 0 and math.isfinite(value) else defaults.HISTORY_INTERVAL


class History:
    """Samples `source` (the node's metrics text) into a ring until cancelled."""

    def __init__(
        self,
        node: str,
        source: Callable[[], bytes],
        interval: float | None = None,
        keep: float = defaults.HISTORY_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.interval = interval if interval is not None else configured_interval()
        self.keep = keep
        self.ring = SeriesRing(max(1, min(MAX_SAMPLES, round(keep / self.interval))))
        self._source = source
        self._clock = clock
        self._last: Reading | None = None

    async def sample(self) -> None:
        """Take one sample now."""
        now = self._clock()
        text = self._source().decode("utf-8", "replace")
        reading = await asyncio.to_thread(read_metrics, text, now, self.node)
        values = derive(self._last, reading, self.node)
        self._last = reading
        self.ring.append(now, values)

    async def run(self) -> None:
        """Sample every `interval`, on a fixed beat (a slow sample does not shift
        the next ones); a failed sample is logged and skipped."""
        loop = asyncio.get_running_loop()
        beat = loop.time()
        failed = False
        while True:
            try:
                await self.sample()
                failed = False
            except Exception as exc:  # a bad text must not end the history
                if not failed:
                    log.warning("history: sample failed: %r", exc)
                failed = True
            beat += self.interval
            now = loop.time()
            if beat < now:  # late (a suspended process): skip the missed beats
                beat = now + self.interval - (now - beat) % self.interval
            await asyncio.sleep(beat - now)

    async def window(self, name: str) -> dict[str, Any]:
        """The answer of `GET /v1/history?window=NAME` for this node (a KeyError
        for an unknown window). The ring is copied here, downsampled in a thread."""
        seconds = WINDOWS[name]
        snapshot = self.ring.copy()
        now = self._clock()
        return await asyncio.to_thread(
            render_window, snapshot, self.node, name, seconds, self.interval, now
        )


def render_window(
    ring: SeriesRing, node: str, name: str, seconds: float, interval: float, now: float
) -> dict[str, Any]:
    """The JSON of one node's window (see docs/api.md#history)."""
    step = window_step(seconds, interval)
    times, series = ring.ordered(since=now - seconds)
    points = downsample(times, series, step)
    return {
        "node": node,
        "window": name,
        "seconds": seconds,
        "interval": interval,
        "step": step,
        "time": now,
        "times": [round(t, 3) for t in points.times],
        "series": [
            {
                "kind": kind,
                "subject": subject,
                "metric": metric,
                "values": [rounded(v) for v in values],
            }
            for (kind, subject, metric), values in sorted(points.series.items())
            if any(v is not None for v in values)
        ],
        "memory_bytes": ring.nbytes,
    }
