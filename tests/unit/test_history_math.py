"""The history's pure arithmetic (ninefold.history_math): reading /metrics text,
rates, p99 from bucket deltas, the ring and downsampling."""

from __future__ import annotations

import math
import sys

import pytest

from ninefold.gateway.engine import Counters, ServiceMetrics
from ninefold.gateway.metrics import render as render_gateway
from ninefold.history_math import (
    MAX_POINTS,
    WINDOWS,
    Reading,
    SeriesRing,
    counter_rate,
    derive,
    downsample,
    memory_estimate,
    quantile_from_buckets,
    read_metrics,
    rounded,
    typical_series,
    window_step,
)

INF = math.inf

NODE_TEXT = """\
# TYPE ninefold_node_cpu_usage_ratio gauge
ninefold_node_cpu_usage_ratio{node="n1"} 0.25
# TYPE ninefold_node_memory_total_bytes gauge
ninefold_node_memory_total_bytes{node="n1"} 1000.0
# TYPE ninefold_node_memory_available_bytes gauge
ninefold_node_memory_available_bytes{node="n1"} 400.0
# TYPE ninefold_instance_healthy gauge
ninefold_instance_healthy{instance="web-0",node="n1",service="web"} 1.0
ninefold_instance_healthy{instance="web-1",node="n1",service="web"} 1.0
ninefold_instance_healthy{instance="db-0",node="n1",service="db"} 0.0
# TYPE ninefold_volume_lag_seconds gauge
ninefold_volume_lag_seconds{node="n1",service="db",volume="data",target="n2"} 0.5
ninefold_volume_lag_seconds{node="n1",service="db",volume="logs",target="n3",x="y"} 0.0
# TYPE ninefold_volume_bytes_behind gauge
ninefold_volume_bytes_behind{node="n1",service="db",volume="data"} 4096.0
# TYPE ninefold_volume_sync_lag_seconds histogram
ninefold_volume_sync_lag_seconds_bucket{le="1.0",node="n1"} 3.0
ninefold_volume_sync_lag_seconds_bucket{le="+Inf",node="n1"} 3.0
ninefold_volume_sync_lag_seconds_count{node="n1"} 3.0
ninefold_volume_sync_lag_seconds_sum{node="n1"} 1.0
"""


def gateway_text(requests: int, errors: int, latencies: list[float]) -> str:
    """What the real gateway collector renders for a service `web` with these counters."""
    counters = Counters(requests=requests)
    counters.responses = {"2xx": requests - errors, "5xx": errors} if requests else {}
    for seconds in latencies:
        counters.observe(seconds)
    backend = Counters(requests=requests)  # a backend's series must not count twice
    snapshot = {"web": ServiceMetrics(total=counters, backends={"127.0.0.1:9": backend})}
    return render_gateway("n1", lambda: snapshot).decode()


def test_read_metrics_keeps_the_node_instance_and_volume_series() -> None:
    reading = read_metrics(NODE_TEXT, 100.0, "n1")
    assert reading.gauges == {
        ("node", "n1", "cpu_ratio"): 0.25,
        ("node", "n1", "memory_ratio"): pytest.approx(0.6),
        ("service", "web", "healthy_instances"): 2.0,
        ("service", "db", "healthy_instances"): 0.0,
        ("volume", "db/data to n2", "lag_seconds"): 0.5,
        ("volume", "db/logs to n3 x=y", "lag_seconds"): 0.0,
    }
    assert reading.time == 100.0


def test_read_metrics_takes_the_gateway_totals_not_the_backends() -> None:
    reading = read_metrics(gateway_text(10, 2, [0.003] * 10), 0.0, "n1")
    assert reading.requests == {"web": 10.0}
    assert reading.errors == {"web": 2.0}
    assert reading.buckets["web"][0.005] == 10.0
    assert reading.buckets["web"][INF] == 10.0


def test_counter_rate_and_reset() -> None:
    assert counter_rate(10.0, 30.0, 10.0) == 2.0
    assert counter_rate(100.0, 20.0, 10.0) == 2.0  # restarted: all of now is new
    assert math.isnan(counter_rate(None, 30.0, 10.0))
    assert math.isnan(counter_rate(1.0, 30.0, 0.0))


def test_p99_interpolates_inside_the_bucket_of_the_rank() -> None:
    before = {0.1: 0.0, 0.5: 0.0, 1.0: 0.0, INF: 0.0}
    now = {0.1: 90.0, 0.5: 100.0, 1.0: 100.0, INF: 100.0}
    # rank 99 of 100: the 9th of 10 observations in (0.1, 0.5]
    assert quantile_from_buckets(0.99, before, now) == pytest.approx(0.1 + 0.4 * 9 / 10)
    assert quantile_from_buckets(0.5, before, now) == pytest.approx(0.1 * 50 / 90)


def test_p99_uses_deltas_not_totals() -> None:
    before = {0.1: 1000.0, 1.0: 1000.0, INF: 1000.0}  # a fast past
    now = {0.1: 1000.0, 1.0: 1010.0, INF: 1010.0}  # ten slow requests since
    assert quantile_from_buckets(0.99, before, now) == pytest.approx(0.1 + 0.9 * 9.9 / 10)


def test_p99_in_the_inf_bucket_is_the_highest_bound_and_nothing_is_nan() -> None:
    assert quantile_from_buckets(0.99, {}, {1.0: 0.0, INF: 5.0}) == 1.0
    assert math.isnan(quantile_from_buckets(0.99, {1.0: 3.0, INF: 3.0}, {1.0: 3.0, INF: 3.0}))
    assert math.isnan(quantile_from_buckets(0.99, {}, {}))
    # a histogram that went down restarted: now alone counts
    assert quantile_from_buckets(0.5, {1.0: 50.0, INF: 50.0}, {1.0: 4.0, INF: 4.0}) == 0.5


def test_derive_from_two_real_gateway_renders() -> None:
    first = read_metrics(gateway_text(100, 0, [0.001] * 100), 0.0, "n1")
    second = read_metrics(gateway_text(300, 20, [0.001] * 100 + [0.2] * 200), 10.0, "n1")
    assert math.isnan(derive(None, first, "n1")[("service", "web", "requests_per_second")])
    values = derive(first, second, "n1")
    assert values[("service", "web", "requests_per_second")] == 20.0
    assert values[("service", "web", "errors_per_second")] == 2.0
    # the 200 new requests all took 0.2 s: bucket (0.1, 0.25]
    assert 0.1 < values[("service", "web", "p99_seconds")] <= 0.25


def test_ring_wraps_forgets_and_is_bounded() -> None:
    ring = SeriesRing(4, max_series=2)
    a, b, c = ("node", "n1", "a"), ("node", "n1", "b"), ("node", "n1", "c")
    for i in range(6):
        ring.append(float(i), {a: float(i)} | ({b: 1.0} if i == 0 else {}) | {c: 9.0})
    times, series = ring.ordered()
    assert times == [2.0, 3.0, 4.0, 5.0]
    assert series[a] == [2.0, 3.0, 4.0, 5.0]
    assert b not in series  # absent for a whole ring: forgotten
    assert c not in series or ring.refused  # the third series was refused while b lived
    assert ring.refused >= 1
    assert ring.nbytes == (len(ring.series) * 4 + 8) * 4
    times, _ = ring.ordered(since=4.0)
    assert times == [4.0, 5.0]


def test_ring_copy_is_independent() -> None:
    ring = SeriesRing(3)
    key = ("node", "n1", "cpu_ratio")
    ring.append(1.0, {key: 0.5})
    copy = ring.copy()
    ring.append(2.0, {key: 0.7})
    assert copy.ordered()[0] == [1.0]
    assert ring.ordered()[1][key] == [0.5, pytest.approx(0.7)]


def test_windows_fit_in_max_points() -> None:
    assert window_step(WINDOWS["15m"], 10.0) == 10.0
    assert window_step(WINDOWS["1h"], 10.0) == 10.0
    assert window_step(WINDOWS["24h"], 10.0) == 240.0
    for seconds in WINDOWS.values():
        for interval in (0.2, 1.0, 10.0, 15.0):
            assert seconds / window_step(seconds, interval) <= MAX_POINTS


def test_downsample_means_but_keeps_the_worst_latency_and_lag() -> None:
    rate, p99 = ("service", "web", "requests_per_second"), ("service", "web", "p99_seconds")
    times = [0.0, 10.0, 20.0, 30.0, 60.0]
    nan = float("nan")
    out = downsample(times, {rate: [1.0, 3.0, 5.0, 7.0, nan], p99: [0.1, 0.9, 0.2, nan, nan]}, 30.0)
    assert out.times == [0.0, 30.0, 60.0]
    assert out.series[rate] == [3.0, 7.0, None]
    assert out.series[p99] == [pytest.approx(0.9), None, None]


def test_a_day_of_samples_downsamples_to_360_points() -> None:
    ring = SeriesRing(8640)
    key = ("node", "n1", "cpu_ratio")
    for i in range(8640):
        ring.append(1_000_000.0 + 10 * i, {key: (i % 100) / 100})
    times, series = ring.ordered()
    out = downsample(times, series, window_step(86400.0, 10.0))
    assert 359 <= len(out.times) <= 361


def test_memory_figures_of_the_docs() -> None:
    """docs/observability.md: 34,560 bytes a series, 69,120 for the times, and
    a typical agent (5 services, 2 volume lag series) under 1 MB."""
    assert memory_estimate(8640, 1) - memory_estimate(8640, 0) == 34_560
    assert memory_estimate(8640, 0) == 69_120
    series = typical_series(services=5, volumes=2)
    assert series == 24
    assert memory_estimate(8640, series) == 898_560
    assert memory_estimate(8640, typical_series(services=3, volumes=0)) == 552_960
    assert memory_estimate(8640, typical_series(services=5, volumes=4)) == 967_680
    assert memory_estimate(8640, 512) == 17_763_840
    ring = SeriesRing(8640)
    ring.append(0.0, {("node", "n1", str(i)): 0.0 for i in range(series)})
    arrays = sum(sys.getsizeof(v) for v in ring.series.values()) + sys.getsizeof(ring.times)
    assert arrays < 1.01 * ring.nbytes + 100 * series


def test_rounded() -> None:
    assert rounded(None) is None
    assert rounded(float("nan")) is None
    assert rounded(0.30000001192092896) == 0.3


def test_reading_defaults() -> None:
    assert Reading(1.0).gauges == {}


def test_p99_leaves_out_requests_still_in_flight() -> None:
    """The gateway counts a request in +Inf when it starts, in its bucket when it
    ends: 100 fast requests ended, 2 more are in flight, none is slow."""
    before = {0.01: 0.0, 10.0: 0.0, INF: 0.0}
    now = {0.01: 100.0, 10.0: 100.0, INF: 102.0}
    assert quantile_from_buckets(0.99, before, now) == 10.0  # taken for slow requests
    assert quantile_from_buckets(0.99, before, now, unfinished=2.0) < 0.01
    # requests that were in flight before and ended in between are no slow ones either
    assert quantile_from_buckets(0.99, {0.01: 0.0, INF: 3.0}, {0.01: 3.0, INF: 3.0}, -3.0) < 0.01


def test_derive_reads_the_active_gauge_for_p99() -> None:
    def text(requests: int, ended: int, active: int) -> str:
        counters = Counters(requests=requests, active=active)
        for _ in range(ended):
            counters.observe(0.002)
        snapshot = {"web": ServiceMetrics(total=counters)}
        return render_gateway("n1", lambda: snapshot).decode()

    first = read_metrics(text(10, 10, 0), 0.0, "n1")
    second = read_metrics(text(110, 108, 2), 10.0, "n1")
    assert second.active == {"web": 2.0}
    assert derive(first, second, "n1")[("service", "web", "p99_seconds")] <= 0.0025
