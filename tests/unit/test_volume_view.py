"""The picture of the replicated volumes' copies (state/volume_view.py): which
copy is the source, and the one word each copy gets, from its record, its
node's life and the time."""

from __future__ import annotations

from typing import Any

import pytest

from ninefold.spec import ClusterSpec, parse_spec
from ninefold.state.keys import copy_key, volume_copies
from ninefold.state.records import CopyRecord
from ninefold.state.volume_view import CopyView, VolumesView, build_volumes_view, copy_of_key

NOW = 1_800_000_000.0

SPEC = """\
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, store: true}
  - {name: n2, address: 10.0.0.2}
  - {name: n3, address: 10.0.0.3}
services:
  db:
    mode: active-passive
    replicas: 3
    command: [db, "{volume.data}", "{volume.wal}", "{volume.tmp}"]
    volumes:
      wal: {replicate: continuous}
      data: {replicate: continuous}
      tmp: {}
  web:
    command: [web, "{port}"]
  files:
    replicas: 2
    command: [files, "{volume.docs}"]
    volumes: {docs: {replicate: continuous}}
"""
ALIVE = ("n1", "n2", "n3")


def spec() -> ClusterSpec:
    return parse_spec(SPEC)


def source(node: str = "n1", **fields: Any) -> CopyRecord:
    base: dict[str, Any] = {"token": 7, "seq": 40, "synced_at": NOW - 0.5, "written_at": NOW}
    return CopyRecord(node=node, source=node, **{**base, **fields})


def copy(node: str, **fields: Any) -> CopyRecord:
    base: dict[str, Any] = {
        "source": "n1",
        "token": 7,
        "seq": 40,
        "synced_at": NOW - 0.5,
        "completed_at": NOW - 0.4,
        "written_at": NOW - 0.4,
    }
    return CopyRecord(node=node, **{**base, **fields})


def build(
    *records: CopyRecord,
    alive: tuple[str, ...] = ALIVE,
    service: str | None = None,
    volume: str = "data",
) -> VolumesView:
    return build_volumes_view(
        spec(), [("db", volume, r) for r in records], alive, NOW, service=service
    )


def copies(view: VolumesView, volume: str = "data") -> dict[str, CopyView]:
    found = next(v for v in view.volumes if v.service == "db" and v.volume == volume)
    return {c.node: c for c in found.copies}


def test_only_replicated_volumes_appear_by_service_then_volume() -> None:
    view = build()
    assert [(v.service, v.volume) for v in view.volumes] == [
        ("db", "data"),
        ("db", "wal"),
        ("files", "docs"),
    ]
    assert all(v.source is None and v.copies == [] for v in view.volumes)
    assert view.time == NOW


def test_one_service_only() -> None:
    assert [v.volume for v in build(service="db").volumes] == ["data", "wal"]
    assert build(service="web").volumes == []


def test_records_of_volumes_the_spec_does_not_replicate_are_left_out() -> None:
    records = [
        ("db", "tmp", source()),
        ("gone", "data", source()),
        ("db", "data", source("n2")),
    ]
    view = build_volumes_view(spec(), records, ALIVE, NOW)
    assert [(v.service, v.volume, v.source) for v in view.volumes] == [
        ("db", "data", "n2"),
        ("db", "wal", None),
        ("files", "docs", None),
    ]


def test_the_source_and_an_in_sync_copy() -> None:
    view = build(copy("n2"), source("n1"))
    volume = view.volumes[0]
    assert volume.source == "n1"
    assert [c.node for c in volume.copies] == ["n1", "n2"]  # the source first
    n1, n2 = volume.copies
    assert (n1.role, n1.state, n1.alive) == ("source", "source", True)
    assert n1.last_sync == NOW - 0.5  # the source: when its last round started
    assert (n2.role, n2.state, n2.lag_seconds, n2.bytes_behind) == ("copy", "in-sync", 0.0, 0)
    assert n2.last_sync == NOW - 0.4  # a copy: when its last transfer completed
    assert (n2.token, n2.seq, n2.sent_by) == (7, 40, "n1")
    assert n2.verified_at is None and n2.error == ""


def test_the_source_is_the_newest_record_a_source_wrote_of_its_own_copy() -> None:
    """After a failover both old and new actives have a record of their own copy."""
    old = source("n1", token=7, written_at=NOW - 30)
    new = source("n2", token=8, seq=3, written_at=NOW - 0.2)
    view = build(old, new, copy("n3", source="n2", token=8, seq=3))
    volume = view.volumes[0]
    assert volume.source == "n2"
    states = {c.node: (c.role, c.state) for c in volume.copies}
    assert states == {
        "n2": ("source", "source"),
        "n1": ("copy", "behind"),  # the old active's copy, until n2 sends it one
        "n3": ("copy", "in-sync"),
    }
    assert [c.node for c in volume.copies] == ["n2", "n1", "n3"]


def test_a_copy_behind_shows_its_lag_and_bytes() -> None:
    got = copies(build(source(), copy("n2", behind_since=NOW - 2.5, bytes_behind=4096)))["n2"]
    assert (got.state, got.lag_seconds, got.bytes_behind) == ("behind", 2.5, 4096)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"bytes_behind": 10}, "bytes not sent yet"),
        ({"completed_at": 0.0}, "never completed a transfer"),
        ({"source": "n3"}, "last sent by another source than the current one"),
    ],
)
def test_other_ways_a_copy_is_behind(fields: dict[str, Any], why: str) -> None:
    got = copies(build(source(), copy("n2", **fields)))["n2"]
    assert got.state == "behind", why


def test_a_seeding_copy_shows_its_progress() -> None:
    record = copy("n3", seeding=True, seed_done=4_500_000, seed_total=10_000_000, completed_at=0.0)
    got = copies(build(source(), record))["n3"]
    assert (got.state, got.seeding, got.seed_done, got.seed_total) == (
        "seeding",
        True,
        4_500_000,
        10_000_000,
    )
    assert got.last_sync is None  # never completed


def test_a_failing_copy_says_why() -> None:
    record = copy("n2", error="connection refused", behind_since=NOW - 9, seeding=True)
    got = copies(build(source(), record))["n2"]
    assert (got.state, got.error, got.lag_seconds) == ("failing", "connection refused", 9.0)


def test_a_copy_on_a_dead_node_is_down_whatever_its_record_says() -> None:
    view = build(source(), copy("n2"), copy("n3", error="timeout"), alive=("n1",))
    got = copies(view)
    assert (got["n2"].state, got["n2"].alive) == ("down", False)
    assert got["n3"].state == "down"


def test_a_dead_source_stays_the_source_but_is_down() -> None:
    view = build(source("n1"), copy("n2"), alive=("n2", "n3"))
    volume = view.volumes[0]
    assert volume.source == "n1"
    assert [(c.node, c.role, c.state) for c in volume.copies] == [
        ("n1", "source", "down"),
        ("n2", "copy", "in-sync"),
    ]


def test_no_source_record_yet_every_record_is_a_copy() -> None:
    view = build(copy("n2"), copy("n3", behind_since=NOW - 1))
    volume = view.volumes[0]
    assert volume.source is None
    assert [(c.node, c.role, c.state) for c in volume.copies] == [
        ("n2", "copy", "in-sync"),
        ("n3", "copy", "behind"),
    ]


def test_verification_and_divergence_are_shown() -> None:
    got = copies(build(source(), copy("n2", verified_at=NOW - 60, diverged=2)))["n2"]
    assert (got.verified_at, got.diverged, got.state) == (NOW - 60, 2, "in-sync")


def test_to_json_is_plain_data() -> None:
    data = build(source(), copy("n2")).to_json()
    assert data["time"] == NOW
    first = data["volumes"][0]
    assert set(first) == {"service", "volume", "source", "copies"}
    assert first["copies"][1]["state"] == "in-sync"


def test_copy_keys_are_read_back() -> None:
    assert copy_of_key(copy_key("db", "data", "n2")) == ("db", "data", "n2")
    assert copy_of_key(volume_copies("db", "data")) is None
    assert copy_of_key("volumes/db/n2") is None
    assert copy_of_key("status/n1/db-0") is None
