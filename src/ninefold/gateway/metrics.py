"""Gateway metrics in Prometheus' text format, from an engine's snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ninefold.gateway.engine import LATENCY_BUCKETS, Counters, MetricsSnapshot


class GatewayCollector(Collector):
    """Reads the engine's counters at scrape time; nothing is copied in between."""

    def __init__(self, node: str, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._node = node
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "service", "backend"]
        requests = CounterMetricFamily(
            "ninefold_gateway_requests",
            "Requests (HTTP) or connections (TCP) received",
            labels=labels,
        )
        responses = CounterMetricFamily(
            "ninefold_gateway_responses",
            "Responses by status class; 'error' when the gateway answered itself",
            labels=[*labels, "code"],
        )
        retries = CounterMetricFamily(
            "ninefold_gateway_retries", "Requests retried on another instance", labels=labels
        )
        active = GaugeMetricFamily(
            "ninefold_gateway_active", "Requests or connections in flight", labels=labels
        )
        latency = HistogramMetricFamily(
            "ninefold_gateway_latency_seconds", "Time to the response's end", labels=labels
        )
        for service, metrics in sorted(self._snapshot().items()):
            rows: list[tuple[str, Counters]] = [("", metrics.total)]
            rows += sorted(metrics.backends.items())
            for backend, counters in rows:
                values = [self._node, service, backend]
                requests.add_metric(values, counters.requests)
                for code, count in sorted(counters.responses.items()):
                    responses.add_metric([*values, code], count)
                retries.add_metric(values, counters.retries)
                active.add_metric(values, counters.active)
                latency.add_metric(values, _buckets(counters), counters.latency_sum)
        yield from (requests, responses, retries, active, latency)


def _buckets(counters: Counters) -> list[tuple[str, float]]:
    cumulative, out = 0, []
    for bound, count in zip(LATENCY_BUCKETS, counters.latency_counts, strict=True):
        cumulative += count
        out.append((repr(bound), float(cumulative)))
    out.append(("+Inf", float(max(counters.requests, cumulative))))
    return out


def render(node: str, snapshot: Callable[[], MetricsSnapshot]) -> bytes:
    """The text a /metrics endpoint serves for this gateway."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(node, snapshot))
    return generate_latest(registry)
