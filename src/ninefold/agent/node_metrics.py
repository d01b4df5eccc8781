"""The node's and its instances' metrics in Prometheus' text format, read at
scrape time: the machine through psutil (CPU, memory, the data directory's
disk, load, network), and each instance this node runs (state, health, role,
restarts).

Each psutil call is one small read of /proc or a statfs, done on the event
loop at scrape time (microseconds); nothing is sampled in between. CPU usage
is psutil's since the previous scrape (the first scrape reads 0)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ninefold.state.records import InstanceStatus

STATES = ("starting", "seeding", "running", "backoff", "failed", "stopped", "standby")


class NodeCollector(Collector):
    def __init__(
        self, node: str, data_dir: Path, instances: Callable[[], Iterable[InstanceStatus]]
    ) -> None:
        self._node = node
        self._data_dir = data_dir
        self._instances = instances

    def collect(self) -> Iterator[Metric]:
        yield from self._machine()
        yield from self._instance_series()

    def _machine(self) -> Iterator[Metric]:
        node = [self._node]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["node"])
            family.add_metric(node, value)
            return family

        yield gauge(
            "ninefold_node_cpu_usage_ratio",
            "Share of all CPUs busy since the previous scrape (0 to 1)",
            psutil.cpu_percent(interval=None) / 100.0,
        )
        yield gauge("ninefold_node_cpus", "Logical CPUs", float(psutil.cpu_count() or 1))
        memory = psutil.virtual_memory()
        yield gauge("ninefold_node_memory_total_bytes", "Memory in all", float(memory.total))
        yield gauge(
            "ninefold_node_memory_available_bytes",
            "Memory available without swapping",
            float(memory.available),
        )
        try:
            disk = psutil.disk_usage(str(self._data_dir))
        except OSError:
            pass
        else:
            yield gauge(
                "ninefold_node_data_disk_total_bytes",
                "Size of the filesystem of the agent's data directory",
                float(disk.total),
            )
            yield gauge(
                "ninefold_node_data_disk_used_bytes",
                "Bytes used on the filesystem of the agent's data directory",
                float(disk.used),
            )
        for minutes, value in zip((1, 5, 15), os.getloadavg(), strict=True):
            yield gauge(f"ninefold_node_load{minutes}", f"Load average over {minutes} min", value)
        net = psutil.net_io_counters()
        for direction, value in (("received", net.bytes_recv), ("sent", net.bytes_sent)):
            counter = CounterMetricFamily(
                f"ninefold_node_network_{direction}_bytes",
                f"Bytes {direction} on every interface of the node's network namespace",
                labels=["node"],
            )
            counter.add_metric(node, float(value))
            yield counter
        agent = psutil.Process()
        with agent.oneshot():
            rss = float(agent.memory_info().rss)
            cpu = agent.cpu_times()
        yield gauge("ninefold_agent_resident_memory_bytes", "The agent's resident memory", rss)
        seconds = CounterMetricFamily(
            "ninefold_agent_cpu_seconds", "CPU time the agent used", labels=["node"]
        )
        seconds.add_metric(node, cpu.user + cpu.system)
        yield seconds

    def _instance_series(self) -> Iterator[Metric]:
        labels = ["node", "service", "instance"]
        state = GaugeMetricFamily(
            "ninefold_instance_state",
            "1 for the state the instance is in (one series per state)",
            labels=[*labels, "state"],
        )
        healthy = GaugeMetricFamily(
            "ninefold_instance_healthy",
            "1 when the instance runs and its check passes (or it has none)",
            labels=labels,
        )
        role = GaugeMetricFamily(
            "ninefold_instance_role",
            "1 for the instance's role: replica, active or standby",
            labels=[*labels, "role"],
        )
        restarts = CounterMetricFamily(
            "ninefold_instance_restarts", "Restarts of the instance on this node", labels=labels
        )
        for status in sorted(self._instances(), key=lambda s: s.instance):
            values = [self._node, status.service, status.instance]
            for name in STATES:
                state.add_metric([*values, name], 1.0 if status.state == name else 0.0)
            healthy.add_metric(values, 1.0 if status.serving else 0.0)
            role.add_metric([*values, status.role], 1.0)
            restarts.add_metric(values, float(status.restarts))
        yield from (state, healthy, role, restarts)


def render(node: str, data_dir: Path, instances: Callable[[], Iterable[InstanceStatus]]) -> bytes:
    registry = CollectorRegistry()
    registry.register(NodeCollector(node, data_dir, instances))
    return generate_latest(registry)
