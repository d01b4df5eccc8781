"""The debug count of store requests (NINEFOLD_STORE_STATS) that
bench/control_traffic.py reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ninefold.store import request_stats
from ninefold.store.request_stats import ENV, RequestStats, from_env, key_group


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("spec", "spec"),
        ("status/n1/web-1", "status/"),
        ("status/", "status/"),
        ("locks/active/queue", "locks/active/"),
        ("locks/leader", "locks/"),
        ("alerts/facts/n1", "alerts/facts/"),
        ("availability/down/web/n1/1", "availability/down/"),
        ("", ""),
    ],
)
def test_keys_are_grouped_by_record_kind(key: str, group: str) -> None:
    assert key_group(key) == group


def test_counts_are_written_per_process(tmp_path: Path) -> None:
    stats = RequestStats(tmp_path)
    stats.count("get", "status/n1/a", 10, 100)  # the first count writes at once
    stats.count("get", "status/n2/b", 10, 50)
    stats.write()
    (written,) = tmp_path.glob("*.json")
    assert json.loads(written.read_text()) == {"get status/": [2, 20, 150]}


def test_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert from_env() is None


def test_one_count_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, str(tmp_path / "stats"))
    monkeypatch.setattr(request_stats, "_shared", {})
    first = from_env()
    assert first is not None and first is from_env()
    assert (tmp_path / "stats").is_dir()


def test_a_directory_that_cannot_be_made_counts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(ENV, str(tmp_path / "file" / "stats"))
    monkeypatch.setattr(request_stats, "_shared", {})
    with caplog.at_level(logging.WARNING, "ninefold.store"):
        assert from_env() is None
    (line,) = caplog.messages
    assert line.startswith(f"{ENV}=") and "not counting store requests" in line
