"""Backup metrics in Prometheus' text format: each target's last run, as
exported by the node that ran it (so a target appears once, on the node of
its last run; `max by (target)` across nodes when the active moved).

The age of the last good backup is `time() -
ninefold_backup_last_success_timestamp_seconds`: a timestamp, as Prometheus
conventions have it, rather than an age that goes stale between scrapes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ninefold.state.records import BackupResultRecord


class BackupCollector(Collector):
    def __init__(self, node: str, records: Iterable[BackupResultRecord]) -> None:
        self._node = node
        self._records = [r for r in records if r.node == node]

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "target", "kind", "repository"]
        success = GaugeMetricFamily(
            "ninefold_backup_last_success_timestamp_seconds",
            "When the target's last successful run ended (unix time)",
            labels=labels,
        )
        ok = GaugeMetricFamily(
            "ninefold_backup_last_run_ok", "1 if the target's last run succeeded", labels=labels
        )
        ended = GaugeMetricFamily(
            "ninefold_backup_last_run_timestamp_seconds",
            "When the target's last run ended (unix time)",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "ninefold_backup_last_run_duration_seconds",
            "How long the target's last run took",
            labels=labels,
        )
        added = GaugeMetricFamily(
            "ninefold_backup_last_run_added_bytes",
            "Bytes the last run added to the repository (after deduplication)",
            labels=labels,
        )
        read = GaugeMetricFamily(
            "ninefold_backup_last_run_read_bytes", "Bytes the last run read", labels=labels
        )
        for record in sorted(self._records, key=lambda r: r.target):
            parts = record.target.split("/")
            values = [self._node, record.target, parts[0], parts[-1]]
            if record.last_good_at is not None:
                success.add_metric(values, record.last_good_at)
            ok.add_metric(values, 1.0 if record.ok else 0.0)
            ended.add_metric(values, record.finished_at)
            duration.add_metric(values, max(0.0, record.finished_at - record.started_at))
            added.add_metric(values, record.data_added)
            read.add_metric(values, record.total_bytes)
        yield from (success, ok, ended, duration, added, read)


def render(node: str, records: Iterable[BackupResultRecord]) -> bytes:
    registry = CollectorRegistry()
    registry.register(BackupCollector(node, records))
    return generate_latest(registry)
