"""The copies of the replicated volumes, as `ninefold volumes`, `GET /v1/volumes`
and the dashboard show them: per volume its source, and per copy how far
behind it is, when it last synced and what it is doing.

Pure assembly from the spec, the copies' records (`CopyRecord`, under
`volumes/<service>/<volume>/<node>`), the living nodes and the time: no I/O,
so every reader builds the same picture from the same records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ninefold.spec import ClusterSpec
from ninefold.state.keys import VOLUMES
from ninefold.state.records import CopyRecord

CopyRole = Literal["source", "copy"]
CopyState = Literal["source", "in-sync", "behind", "seeding", "failing", "down"]
"""One word per copy, the first that applies:

- `down`: its node is not alive (its record is what it was when it died);
- `failing`: the last transfer to it failed (`error` says why);
- `seeding`: its first transfer is under way (its instance waits for it);
- `source`: the copy the others are made from;
- `behind`: changes at the source are not in it yet, or the source has not
  completed a transfer to it;
- `in-sync`: it holds everything the source had when it last looked."""


@dataclass(frozen=True)
class CopyView:
    node: str
    role: CopyRole
    state: CopyState
    alive: bool
    """Whether the node holding it is alive (has its lease)."""
    sent_by: str
    """The node whose active sent this copy its last transfer (itself for the source)."""
    token: int
    seq: int
    """Its generation: the fencing token of the active that sent it, that active's round."""
    lag_seconds: float
    """How long the oldest change at the source not yet in it has waited (0: none)."""
    bytes_behind: int
    """Size of the files changed at the source and not yet in it."""
    last_sync: float | None
    """When the last transfer into it completed (the source: when its last round
    started); None: never."""
    seeding: bool
    seed_done: int
    seed_total: int
    """Bytes of the first transfer done so far, out of how many (0: unknown yet)."""
    verified_at: float | None
    """When a checksum comparison with the source last completed; None: never."""
    diverged: int
    """Files that comparison found different (and repaired)."""
    error: str
    """Why the last transfer to it failed ("" when it succeeded)."""
    written_at: float
    """When its record was last written."""


@dataclass(frozen=True)
class VolumeView:
    service: str
    volume: str
    source: str | None
    """The node whose copy the others are made from, by the newest record a
    source wrote of its own copy; None before any was written."""
    copies: list[CopyView] = field(default_factory=list)
    """The source's first, then the others by node name."""


@dataclass(frozen=True)
class VolumesView:
    time: float
    """The time the lags and ages were computed at (seconds since the epoch)."""
    volumes: list[VolumeView]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def copy_of_key(key: str) -> tuple[str, str, str] | None:
    """`volumes/<service>/<volume>/<node>` as (service, volume, node); None for
    any other key."""
    if not key.startswith(VOLUMES):
        return None
    parts = key[len(VOLUMES) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def source_record(records: Iterable[CopyRecord]) -> CopyRecord | None:
    """The record a source wrote of its own copy with the highest generation
    (a later source sends with a higher token; a source writes its own record
    only when it changed, so its time says nothing)."""
    own = [r for r in records if r.node == r.source]
    return max(own, key=lambda r: (r.generation, r.written_at)) if own else None


def copy_state(
    record: CopyRecord, role: CopyRole, alive: bool, source: str | None, now: float
) -> CopyState:
    """The one word for a copy (see `CopyState`)."""
    if not alive:
        return "down"
    if record.error:
        return "failing"
    if record.seeding:
        return "seeding"
    if role == "source":
        return "source"
    stale_source = source is not None and record.source != source
    if record.lag(now) > 0 or record.bytes_behind > 0 or not record.complete or stale_source:
        return "behind"
    return "in-sync"


def copy_view(
    record: CopyRecord, role: CopyRole, alive: bool, source: str | None, now: float
) -> CopyView:
    last = record.synced_at if role == "source" else record.completed_at
    return CopyView(
        node=record.node,
        role=role,
        state=copy_state(record, role, alive, source, now),
        alive=alive,
        sent_by=record.source,
        token=record.token,
        seq=record.seq,
        lag_seconds=round(record.lag(now), 3),
        bytes_behind=record.bytes_behind,
        last_sync=last or None,
        seeding=record.seeding,
        seed_done=record.seed_done,
        seed_total=record.seed_total,
        verified_at=record.verified_at or None,
        diverged=record.diverged,
        error=record.error,
        written_at=record.written_at,
    )


def volume_view(
    service: str, volume: str, records: Iterable[CopyRecord], alive: frozenset[str], now: float
) -> VolumeView:
    mine = list(records)
    source = source_record(mine)
    source_node = source.node if source is not None else None
    copies = []
    if source is not None:
        copies.append(copy_view(source, "source", source.node in alive, source_node, now))
    for record in sorted(mine, key=lambda r: r.node):
        if record is source:
            continue
        copies.append(copy_view(record, "copy", record.node in alive, source_node, now))
    return VolumeView(service, volume, source_node, copies)


def build_volumes_view(
    spec: ClusterSpec,
    copies: Iterable[tuple[str, str, CopyRecord]],
    alive: Iterable[str],
    now: float,
    service: str | None = None,
) -> VolumesView:
    """Every replicated volume of the spec (of `service` only, if given), by
    service then volume, with the copies `copies` (service, volume, record)
    holds of it. Records of volumes the spec does not replicate are left out;
    a replicated volume without records has no source and no copies."""
    living = frozenset(alive)
    by_volume: dict[tuple[str, str], list[CopyRecord]] = {}
    for svc, vol, record in copies:
        by_volume.setdefault((svc, vol), []).append(record)
    volumes = []
    for name, svc_spec in sorted(spec.services.items()):
        if service is not None and name != service:
            continue
        for vol, vol_spec in sorted(svc_spec.volumes.items()):
            if vol_spec.replicated:
                records = by_volume.get((name, vol), [])
                volumes.append(volume_view(name, vol, records, living, now))
    return VolumesView(time=now, volumes=volumes)
