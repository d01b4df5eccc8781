"""Backup metrics: each target's last run on the node that ran it, in
Prometheus' text format (parsed back with prometheus_client's parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ninefold.backup.metrics import render
from ninefold.state.records import BackupResultRecord


def record(target: str, node: str, ok: bool, good: float | None) -> BackupResultRecord:
    return BackupResultRecord(
        target=target, run_id="r", node=node, started_at=100.0, finished_at=112.5, ok=ok,
        data_added=4096, total_bytes=10_000, last_good_at=good,
    )  # fmt: skip


def samples(text: bytes) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, sample.labels["target"])] = sample.value
    return out


def test_a_node_exports_the_runs_it_carried_out() -> None:
    records = [
        record("volume/db/data/offsite", "n1", True, 112.5),
        record("cluster/offsite", "n2", True, 50.0),
        record("check/offsite", "n1", False, None),
    ]
    got = samples(render("n1", records))
    db = "volume/db/data/offsite"
    assert got[("ninefold_backup_last_success_timestamp_seconds", db)] == 112.5
    assert got[("ninefold_backup_last_run_ok", db)] == 1.0
    assert got[("ninefold_backup_last_run_duration_seconds", db)] == 12.5
    assert got[("ninefold_backup_last_run_added_bytes", db)] == 4096
    assert got[("ninefold_backup_last_run_ok", "check/offsite")] == 0.0
    assert ("ninefold_backup_last_success_timestamp_seconds", "check/offsite") not in got
    assert not [k for k in got if k[1] == "cluster/offsite"]  # n2's run
