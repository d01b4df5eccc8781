"""The leader's backup scheduling decision: which backup, cluster backup or
repository check to start now, and on which node. Pure: the doer reads the
runs' history and locks from the store, calls `decide_runs` with the time,
takes each run's lock and starts it; every start, end and wait is an event.

One run per target at a time, cluster-wide: the store's lock of a run whose
node is alive is respected; a run whose node is no longer live died with it,
and is retried at once on the node the target runs on now. A failed run is
retried after a short backoff rather than at its next scheduled time (a
daily backup that failed should not wait a day), but never in a tight loop.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ninefold.spec.backups import Scheduled, next_cron
from ninefold.spec.models import ClusterSpec

FAILURE_BACKOFF = 300.0
"""Seconds after a failed run before it is tried again (or its schedule's
interval, when that is shorter)."""

TargetKind = Literal["volume", "cluster", "check"]


@dataclass(frozen=True, order=True)
class BackupTarget:
    """What a run is for: one volume of one service, the cluster itself, or
    `restic check` of one repository, each with the repository it goes to."""

    kind: TargetKind
    repository: str
    service: str = ""
    volume: str = ""

    def __post_init__(self) -> None:
        if self.kind == "volume" and not (self.service and self.volume):
            raise ValueError("a volume target needs a service and a volume")
        if self.kind != "volume" and (self.service or self.volume):
            raise ValueError(f"a {self.kind} target has no service or volume")

    @property
    def key(self) -> str:
        """Stable across leaders and restarts: it names the run's lock and
        history in the store (`volume/db/data/offsite`, `cluster/offsite`,
        `check/offsite`). The names it is made of hold no `/`."""
        if self.kind == "volume":
            return f"volume/{self.service}/{self.volume}/{self.repository}"
        return f"{self.kind}/{self.repository}"

    @classmethod
    def from_key(cls, key: str) -> BackupTarget:
        parts = key.split("/")
        if parts[0] == "volume" and len(parts) == 4 and all(parts):
            return cls("volume", parts[3], parts[1], parts[2])
        if parts[0] == "cluster" and len(parts) == 2 and parts[1]:
            return cls("cluster", parts[1])
        if parts[0] == "check" and len(parts) == 2 and parts[1]:
            return cls("check", parts[1])
        raise ValueError(f"{key!r} is not a backup target's key")


@dataclass(frozen=True)
class LastRun:
    """How the last finished run of a target went."""

    started_at: float
    finished_at: float
    ok: bool


@dataclass(frozen=True)
class Running:
    """A run the store holds a lock for."""

    target: BackupTarget
    run_id: str
    node: str
    started_at: float


@dataclass(frozen=True)
class Start:
    """Start a run of `target` on `node`; `retry_of`: the run it replaces,
    interrupted by its node's death (its lock is taken over)."""

    target: BackupTarget
    node: str
    why: str
    retry_of: str | None = None


@dataclass(frozen=True)
class Wait:
    """`target` is due but cannot run now; the doer says so once per reason."""

    target: BackupTarget
    reason: str


RunDecision = Start | Wait


def next_due(schedule: Scheduled, last_started: float | None, now: float) -> float:
    """When a run is due after one that started at `last_started` (it may
    be in the past: due then means due now). A target that never ran is due
    at once, cron or not: until its first run there is no backup at all.
    Missed slots are not caught up: one run, then the schedule again."""
    if last_started is None:
        return now
    if schedule.every is not None:
        return last_started + schedule.every
    if schedule.cron is None:
        raise ValueError("a schedule needs every or cron")
    return next_cron(schedule.cron, last_started)


def due_at(
    schedule: Scheduled,
    last: LastRun | None,
    now: float,
    failure_backoff: float = FAILURE_BACKOFF,
) -> float:
    """When a target not running now is due. After a failure: its interval or
    `failure_backoff`, whichever is shorter, after the failed run ended."""
    if last is None:
        return now
    scheduled = next_due(schedule, last.started_at, now)
    if last.ok:
        return scheduled
    return last.finished_at + min(scheduled - last.started_at, failure_backoff)


def decide_runs(
    targets: Mapping[BackupTarget, Scheduled],
    history: Mapping[str, LastRun],
    running: Iterable[Running],
    live_nodes: Collection[str],
    active_node_of: Mapping[str, str],
    now: float,
    *,
    leader_node: str | None,
    failure_backoff: float = FAILURE_BACKOFF,
) -> list[RunDecision]:
    """The runs to start now, at most one decision per target.

    `history`: target key -> its last finished run. `running`: the runs
    holding a lock. `active_node_of`: service -> the node holding its active
    copy (the active instance's node; instance 0's for a replicated service),
    where its volumes are backed up; absent while unknown. `leader_node`:
    where cluster backups and checks run (they need the store and no volume).

    One run per repository at a time: restic 0.14 does not wait for a lock,
    and a run's `forget --prune` (and `check`) locks the repository
    exclusively; two first runs would both `restic init` it. Backups go
    before checks.
    """
    live = set(live_nodes)
    locks: dict[str, list[Running]] = {}
    for run in running:
        locks.setdefault(run.target.key, []).append(run)
    in_use: dict[str, set[TargetKind]] = {}  # repository -> kinds of live runs on it
    for runs in locks.values():
        for run in runs:
            if run.node in live:
                in_use.setdefault(run.target.repository, set()).add(run.target.kind)
    out: list[RunDecision] = []
    for target in sorted(targets, key=lambda t: (t.kind == "check", t.key)):
        runs = locks.get(target.key, [])
        if any(run.node in live for run in runs):
            continue  # one at a time: its run goes on
        interrupted = max(runs, key=lambda run: run.started_at, default=None)
        if interrupted is not None:
            why = f"run {interrupted.run_id} was interrupted ({interrupted.node} is not live)"
        else:
            last = history.get(target.key)
            if due_at(targets[target], last, now, failure_backoff) > now:
                continue
            why = "first run" if last is None else "due" if last.ok else "retry after a failure"
        node, reason = _node_for(target, live, active_node_of, leader_node)
        if node is None:
            out.append(Wait(target, reason))
            continue
        kinds = in_use.get(target.repository, set())
        if "check" in kinds:
            out.append(Wait(target, f"repository {target.repository} is being checked"))
            continue
        if kinds:
            out.append(Wait(target, f"repository {target.repository} is in use by another run"))
            continue
        in_use.setdefault(target.repository, set()).add(target.kind)
        retry_of = interrupted.run_id if interrupted is not None else None
        out.append(Start(target, node, why, retry_of))
    return out


def _node_for(
    target: BackupTarget,
    live: set[str],
    active_node_of: Mapping[str, str],
    leader_node: str | None,
) -> tuple[str | None, str]:
    """(node, "") where `target` runs now, or (None, why it cannot)."""
    if target.kind == "volume":
        node = active_node_of.get(target.service)
        what = f"the node holding the active copy of {target.service}"
    else:
        node = leader_node
        what = "the leader's node"
    if node is None:
        return None, f"{what} is not known yet"
    if node not in live:
        return None, f"{what} ({node}) is not live"
    return node, ""


def earliest_due(
    targets: Mapping[BackupTarget, Scheduled],
    history: Mapping[str, LastRun],
    now: float,
    failure_backoff: float = FAILURE_BACKOFF,
) -> float | None:
    """When the next target falls due (None without targets): how long the
    doer may sleep, unless a node dies or the spec changes first."""
    return min(
        (due_at(s, history.get(t.key), now, failure_backoff) for t, s in targets.items()),
        default=None,
    )


def backup_targets(spec: ClusterSpec) -> dict[BackupTarget, Scheduled]:
    """Every target the spec asks for, with its schedule: each volume with a
    `backup`, the cluster's own backup, and each repository's `check`."""
    out: dict[BackupTarget, Scheduled] = {}
    for name, service in spec.services.items():
        for volume, volume_spec in service.volumes.items():
            if volume_spec.backup is not None:
                target = BackupTarget("volume", volume_spec.backup.repository, name, volume)
                out[target] = volume_spec.backup
    if spec.backups.cluster is not None:
        out[BackupTarget("cluster", spec.backups.cluster.repository)] = spec.backups.cluster
    for name, repository in spec.backups.repositories.items():
        if repository.check is not None:
            out[BackupTarget("check", name)] = repository.check
    return out
