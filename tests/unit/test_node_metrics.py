"""The node's and its instances' series, parsed back with prometheus_client's
parser: names with units, counters as `_total`, one state series per state."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ninefold.agent.node_metrics import STATES, render
from ninefold.state.records import InstanceStatus


def test_the_machine_and_each_instance_are_exported(tmp_path: Path) -> None:
    statuses = [
        InstanceStatus(service="db", instance="db-0", node="n1", address="10.0.0.1",
                       state="running", health="healthy", role="active", restarts=2),
        InstanceStatus(service="db", instance="db-1", node="n1", address="10.0.0.1",
                       state="backoff", health="unhealthy", role="standby"),
    ]  # fmt: skip
    text = render("n1", tmp_path, lambda: statuses).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("instance", ""), sample.labels.get("state", ""),
                   sample.labels.get("role", ""))  # fmt: skip
            samples[key] = sample.value
    names = {k[0] for k in samples}
    for name in (
        "ninefold_node_cpu_usage_ratio", "ninefold_node_memory_total_bytes",
        "ninefold_node_memory_available_bytes", "ninefold_node_data_disk_used_bytes",
        "ninefold_node_load1", "ninefold_node_network_received_bytes_total",
        "ninefold_agent_resident_memory_bytes", "ninefold_agent_cpu_seconds_total",
    ):  # fmt: skip
        assert name in names, name
    assert 0.0 <= samples[("ninefold_node_cpu_usage_ratio", "", "", "")] <= 1.0
    assert samples[("ninefold_node_memory_total_bytes", "", "", "")] > 0
    assert samples[("ninefold_instance_state", "db-0", "running", "")] == 1.0
    assert samples[("ninefold_instance_state", "db-1", "running", "")] == 0.0
    assert sum(samples[("ninefold_instance_state", "db-1", s, "")] for s in STATES) == 1.0
    assert samples[("ninefold_instance_healthy", "db-0", "", "")] == 1.0
    assert samples[("ninefold_instance_healthy", "db-1", "", "")] == 0.0
    assert samples[("ninefold_instance_role", "db-0", "", "active")] == 1.0
    assert samples[("ninefold_instance_restarts_total", "db-0", "", "")] == 2.0
