"""Backups: `GET /v1/backups` (each target, its schedule, its run in progress
and how its last run went), `POST /v1/backups/run` and `POST
/v1/backups/check` (runs asked for now; the leader starts them), and `GET
/v1/backups/snapshots` (a repository's snapshots, read by this agent with
restic). docs/backups.md."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Body, Query
from pydantic import BaseModel, ConfigDict, Field

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter
from ninefold.backup.repository import RepositoryConfigError
from ninefold.backup.restic import Restic, ResticError
from ninefold.backup.targets import TAG, repository_of
from ninefold.decide.backup import BackupTarget, LastRun, backup_targets, due_at
from ninefold.spec import ClusterSpec
from ninefold.state.keys import (
    BACKUP_ASKED,
    BACKUP_LAST,
    BACKUP_RUNS,
    BACKUPS,
    backup_asked_key,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import BackupResultRecord, BackupRun

router = ResourceRouter()

SNAPSHOTS_TIMEOUT = 60.0


class BackupTargetOut(BaseModel):
    target: str = Field(description="its key: volume/SERVICE/VOLUME/REPO, cluster/REPO, check/REPO")
    kind: str
    repository: str
    service: str = ""
    volume: str = ""
    schedule: str = Field(description="`every 1h` or `cron 0 3 * * *`")
    keep: dict[str, int] = {}
    next_due: float | None = Field(description="unix time; None while it runs")
    asked: bool = Field(description="a run was asked for and has not started yet")
    running: dict[str, Any] | None = Field(description="the run in progress (BackupRun)")
    last: dict[str, Any] | None = Field(description="how the last run ended (BackupResultRecord)")


class BackupsOut(BaseModel):
    time: float
    targets: list[BackupTargetOut]


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(
        None,
        description="a target's key, SERVICE/VOLUME, SERVICE (its volumes), or `cluster`; "
        "none: every backup target",
    )
    dry_run: bool = Field(False, description="only say which targets it would ask for")


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: str | None = Field(None, description="none: every repository")
    dry_run: bool = Field(False, description="only say which checks it would ask for")


class AskedOut(BaseModel):
    asked: list[str] = Field(description="the targets asked for (with dry_run: would be)")
    dry_run: bool = False
    time: float = Field(description="when they were asked for: a run started later is theirs")


class SnapshotOut(BaseModel):
    id: str
    short_id: str
    time: str
    target: str
    host: str
    paths: list[str]
    tags: list[str]


def _next_due(
    schedule: Any, history: LastRun | None, now: float, running: bool, asked: bool
) -> float | None:
    if running:
        return None
    if asked:
        return now
    return due_at(schedule, history, now) if schedule is not None else None


def _schedule(every: float | None, cron: str | None) -> str:
    return f"cron {cron}" if cron else f"every {every:g}s"


@router.operation("GET", "/v1/backups", role="read", tag="backups", model=BackupsOut, errors=[503])
async def backups(ctx: Context) -> BackupsOut:
    spec = await read_spec(ctx.store, ctx.spec)
    listing = (await ctx.store.list(BACKUPS)).items
    runs = {i.key[len(BACKUP_RUNS) :]: i for i in listing if i.key.startswith(BACKUP_RUNS)}
    lasts = {i.key[len(BACKUP_LAST) :]: i for i in listing if i.key.startswith(BACKUP_LAST)}
    asked = {i.key[len(BACKUP_ASKED) :] for i in listing if i.key.startswith(BACKUP_ASKED)}
    now = time.time()
    out = []
    scheduled: dict[BackupTarget, Any] = dict(backup_targets(spec))
    for key in {*runs, *lasts, *asked}:  # checks asked for by hand, without a schedule
        try:
            target = BackupTarget.from_key(key)
        except ValueError:
            continue
        if target.kind == "check" and target.repository in spec.backups.repositories:
            scheduled.setdefault(target, None)
    for target, schedule in sorted(scheduled.items()):
        key = target.key
        run = BackupRun.decode(runs[key].value) if key in runs else None
        last = BackupResultRecord.decode(lasts[key].value) if key in lasts else None
        history = LastRun(last.started_at, last.finished_at, last.ok) if last else None
        keep = getattr(schedule, "keep", None)
        out.append(
            BackupTargetOut(
                target=key,
                kind=target.kind,
                repository=target.repository,
                service=target.service,
                volume=target.volume,
                schedule=_schedule(schedule.every, schedule.cron) if schedule else "when asked",
                keep=keep.rules() if keep is not None else {},
                next_due=_next_due(schedule, history, now, bool(run), key in asked),
                asked=key in asked,
                running=run.model_dump() if run else None,
                last=last.model_dump() if last else None,
            )
        )
    return BackupsOut(time=now, targets=out)


def _chosen(spec: ClusterSpec, wanted: str | None) -> list[str]:
    targets = [t for t in backup_targets(spec) if t.kind != "check"]
    if not targets:
        raise operations.Conflict("the spec has no backup (a volume's backup:, backups.cluster)")
    if wanted is None:
        return sorted(t.key for t in targets)

    def matches(t: BackupTarget) -> bool:
        if wanted in (t.key, t.kind):
            return True
        if t.kind == "volume":
            return wanted in (t.service, f"{t.service}/{t.volume}")
        return False

    chosen = sorted(t.key for t in targets if matches(t))
    if not chosen:
        known = ", ".join(sorted(t.key for t in targets))
        raise operations.NotFound(f"no backup target {wanted!r} (targets: {known})")
    return chosen


@router.operation(
    "POST",
    "/v1/backups/run",
    role="operate",
    tag="backups",
    model=AskedOut,
    status_code=202,
    errors=[404, 409, 503],
)
async def run_now(ctx: Context, body: Annotated[RunIn | None, Body()] = None) -> AskedOut:
    """Ask for backups now: the leader starts them (one run per target at a time)."""
    spec = await read_spec(ctx.store, ctx.spec)
    chosen = _chosen(spec, body.target if body else None)
    return await _ask(ctx, chosen, body is not None and body.dry_run)


@router.operation(
    "POST",
    "/v1/backups/check",
    role="operate",
    tag="backups",
    model=AskedOut,
    status_code=202,
    errors=[404, 409, 503],
)
async def check_now(ctx: Context, body: Annotated[CheckIn | None, Body()] = None) -> AskedOut:
    """Ask for `restic check` of a repository (or each) now."""
    spec = await read_spec(ctx.store, ctx.spec)
    repositories = sorted(spec.backups.repositories)
    if not repositories:
        raise operations.Conflict("the spec has no backup repository (backups.repositories)")
    wanted = body.repository if body else None
    if wanted is not None and wanted not in repositories:
        known = ", ".join(repositories)
        raise operations.NotFound(f"no repository named {wanted!r} (repositories: {known})")
    chosen = [BackupTarget("check", r).key for r in ([wanted] if wanted else repositories)]
    return await _ask(ctx, chosen, body is not None and body.dry_run)


async def _ask(ctx: Context, targets: list[str], dry_run: bool) -> AskedOut:
    """Mark the targets asked for now (the leader starts them within a second)."""
    now = time.time()
    if not dry_run:
        for key in targets:
            await ctx.store.put(backup_asked_key(key), str(now).encode())
    return AskedOut(asked=targets, time=now, dry_run=dry_run)


@router.operation(
    "GET",
    "/v1/backups/snapshots",
    role="read",
    tag="backups",
    model=list[SnapshotOut],
    errors=[404, 409, 503],
)
async def snapshots(
    ctx: Context,
    repository: Annotated[str, Query(description="the repository's name in the spec")],
    target: Annotated[str | None, Query(description="only this target's snapshots")] = None,
) -> list[SnapshotOut]:
    """A repository's snapshots taken by this cluster, oldest first, read by
    the agent answering (it needs the repository's password file or variable)."""
    spec = await read_spec(ctx.store, ctx.spec)
    if repository not in spec.backups.repositories:
        known = ", ".join(sorted(spec.backups.repositories)) or "none"
        raise operations.NotFound(f"no repository named {repository!r} (repositories: {known})")
    restic = Restic(repository_of(spec.backups.repositories[repository]), timeout=SNAPSHOTS_TIMEOUT)
    tags = [TAG, f"cluster={spec.cluster}"] + ([f"target={target}"] if target else [])
    try:
        found = await restic.snapshots(tags=tags, no_lock=True)
    except (ResticError, RepositoryConfigError) as exc:
        raise operations.Conflict(f"repository {repository}: {exc}") from None
    except ValueError as exc:  # a target restic cannot take as a tag
        raise operations.Invalid(f"target: {exc}") from None
    out = []
    for snap in found:
        of = next((t[len("target=") :] for t in snap.tags if t.startswith("target=")), "")
        item = SnapshotOut(
            id=snap.id, short_id=snap.short_id, time=snap.time.isoformat(), target=of,
            host=snap.hostname, paths=list(snap.paths), tags=list(snap.tags),
        )  # fmt: skip
        out.append(item)
    return out
