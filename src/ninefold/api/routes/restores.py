"""Restoring a service's volume from a snapshot: `POST /v1/restores` (with
`dry_run`, only what it would do) and `GET /v1/restores`. The work is done by
the agents holding the volume's copies (agent/restores.py); docs/backups.md."""

from __future__ import annotations

import secrets
import time
from typing import Annotated

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter
from ninefold.backup.repository import RepositoryConfigError
from ninefold.backup.restic import Restic, ResticError, Snapshot
from ninefold.backup.targets import TAG, repository_of
from ninefold.decide.backup import BackupTarget
from ninefold.spec import ClusterSpec
from ninefold.state.keys import (
    ASSIGN,
    NODES,
    RESTORES,
    active_lock,
    last_segment,
    restore_key,
    volume_copies,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import AssignmentRecord, RestoreRecord
from ninefold.store.base import Compare, Put, Store

router = ResourceRouter()

SNAPSHOTS_TIMEOUT = 60.0


class RestoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str
    volume: str
    snapshot: str = Field(description="a snapshot id (or its first characters), or `latest`")
    repository: str | None = Field(None, description="default: the volume's backup repository")
    dry_run: bool = False


class RestoreOut(BaseModel):
    service: str
    volume: str
    repository: str
    snapshot: str = Field(description="the snapshot's full id")
    snapshot_time: str
    nodes: list[str] = Field(description="the nodes whose copies are restored")
    plan: list[str] = Field(description="what happens, in order")
    run_id: str = ""
    asked: bool = Field(description="false for a dry run")


async def _snapshot(spec: ClusterSpec, repository: str, target: str, wanted: str) -> Snapshot:
    restic = Restic(repository_of(spec.backups.repositories[repository]), timeout=SNAPSHOTS_TIMEOUT)
    try:
        found = await restic.snapshots(
            tags=[TAG, f"cluster={spec.cluster}", f"target={target}"], no_lock=True
        )
    except (ResticError, RepositoryConfigError) as exc:
        raise operations.Conflict(f"repository {repository}: {exc}") from None
    if not found:
        raise operations.NotFound(f"repository {repository} has no snapshot of {target}")
    if wanted == "latest":
        return found[-1]
    matches = [s for s in found if s.id.startswith(wanted)]
    if len(matches) != 1:
        known = ", ".join(s.short_id for s in found[-5:])
        why = "no" if not matches else "more than one"
        raise operations.NotFound(
            f"{why} snapshot {wanted!r} of {target} in {repository} (latest: {known})"
        )
    return matches[0]


async def _copy_nodes(store: Store, spec: ClusterSpec, service: str, volume: str) -> list[str]:
    """Nodes holding a copy: those with a copy record (replicated), and the
    node of the active copy (the active lock's holder, else instance 0's)."""
    nodes = {last_segment(i.key) for i in (await store.list(volume_copies(service, volume))).items}
    if spec.services[service].mode == "active-passive":
        holder = await store.lock_holder(active_lock(service))
        if holder is not None:
            nodes.add(holder.holder.split("/", 1)[0])
    for item in (await store.list(ASSIGN)).items:
        record = AssignmentRecord.decode(item.value)
        if record.instance == f"{service}-0":
            nodes.add(record.node)
    return sorted(nodes)


@router.operation(
    "POST",
    "/v1/restores",
    role="admin",
    tag="backups",
    model=RestoreOut,
    status_code=202,
    errors=[404, 409, 503],
)
async def restore(ctx: Context, body: Annotated[RestoreIn, Body()]) -> RestoreOut:
    """Stop the service, restore the volume's copies from the snapshot, start it again."""
    spec = await read_spec(ctx.store, ctx.spec)
    service = spec.services.get(body.service)
    if service is None:
        known = ", ".join(sorted(spec.services)) or "none"
        raise operations.NotFound(f"no service named {body.service!r} (services: {known})")
    volume = service.volumes.get(body.volume)
    if volume is None:
        known = ", ".join(sorted(service.volumes)) or "none"
        raise operations.NotFound(
            f"{body.service} has no volume {body.volume!r} (volumes: {known})"
        )
    repository = body.repository or (volume.backup.repository if volume.backup else None)
    if repository is None:
        raise operations.Conflict(
            f"{body.service}/{body.volume} has no backup: name the repository to restore from"
        )
    if repository not in spec.backups.repositories:
        known = ", ".join(sorted(spec.backups.repositories)) or "none"
        raise operations.NotFound(f"no repository named {repository!r} (repositories: {known})")
    existing = await ctx.store.get(restore_key(body.service))
    if existing is not None and RestoreRecord.decode(existing.value).in_progress:
        raise operations.Conflict(f"a restore of {body.service} is in progress")
    target = BackupTarget("volume", repository, body.service, body.volume).key
    snapshot = await _snapshot(spec, repository, target, body.snapshot)
    alive = {last_segment(i.key) for i in (await ctx.store.list(NODES)).items}
    copies = await _copy_nodes(ctx.store, spec, body.service, body.volume)
    nodes = [n for n in copies if n in alive]
    if not nodes:
        raise operations.Conflict(
            f"no live node holds a copy of {body.service}/{body.volume} "
            f"(copies: {', '.join(copies) or 'none'})"
        )
    what = f"{body.service}/{body.volume}"
    plan = [
        f"stop every instance of {body.service} (none is placed until the restore ends)",
        f"restore snapshot {snapshot.short_id} of {snapshot.time:%Y-%m-%d %H:%M:%S} from "
        f"{repository} into the copy of {what} on {', '.join(nodes)} (the current data "
        "is replaced)",
        f"start {body.service} again",
    ]
    down = [n for n in copies if n not in alive]
    if down:
        plan.insert(2, f"not restored: the copies on {', '.join(down)} (down)")
    out = RestoreOut(
        service=body.service, volume=body.volume, repository=repository, snapshot=snapshot.id,
        snapshot_time=snapshot.time.isoformat(), nodes=nodes, plan=plan, asked=False,
    )  # fmt: skip
    if body.dry_run:
        return out
    record = RestoreRecord(
        service=body.service, volume=body.volume, repository=repository, snapshot=snapshot.id,
        nodes=nodes, asked_at=time.time(), run_id=secrets.token_hex(4),
    )  # fmt: skip
    guard = (
        Compare(restore_key(body.service), "mod", "==", existing.mod_revision)
        if existing is not None
        else Compare(restore_key(body.service), "create", "==", 0)
    )
    result = await ctx.store.txn([guard], [Put(restore_key(body.service), record.encode())])
    if not result.succeeded:
        raise operations.Conflict(f"a restore of {body.service} was asked meanwhile")
    return out.model_copy(update={"asked": True, "run_id": record.run_id})


@router.operation(
    "GET", "/v1/restores", role="read", tag="backups", model=list[RestoreRecord], errors=[503]
)
async def restores(ctx: Context) -> list[RestoreRecord]:
    """Each service's last restore, in progress or ended."""
    return [RestoreRecord.decode(i.value) for i in (await ctx.store.list(RESTORES)).items]


@router.operation(
    "DELETE",
    "/v1/restores/{service}",
    role="admin",
    tag="backups",
    model=RestoreRecord,
    errors=[404, 409, 503],
)
async def cancel(ctx: Context, service: str) -> RestoreRecord:
    """Let a service whose restore failed (or hangs) run again, on whatever its
    copies hold now; a restore already replacing a copy finishes that copy."""
    item = await ctx.store.get(restore_key(service))
    record = RestoreRecord.decode(item.value) if item is not None else None
    if item is None or record is None or not record.holds:
        raise operations.NotFound(f"no restore of {service!r} holds it")
    record.state, record.finished_at = "cancelled", time.time()
    guard = Compare(restore_key(service), "mod", "==", item.mod_revision)
    if not (await ctx.store.txn([guard], [Put(restore_key(service), record.encode())])).succeeded:
        raise operations.Conflict(f"the restore of {service} changed meanwhile: try again")
    return record
