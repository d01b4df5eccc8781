"""What an operator can ask of the cluster, as store-level operations.

The REST API (and the CLI, through it or directly) changes the cluster only
through these functions: each validates against the spec and the state in the
store, then writes one key the agents act upon. None of them waits for the
outcome; progress shows in the event journal.

Keys written here (all of them are in state/keys.py): `spec` (compare-and-
swapped on its mod revision), `restarts/<service>` (time_ns of the last
rolling restart asked for), `moves/<instance>`, `switchover/<service>` (under
a 15 s lease), `drain/<node>` and the users' `kv/<key>`.

Errors are typed: `NotFound`, `Conflict`, `Invalid` (with `issues` lines);
the store's own `StoreError` passes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ninefold.spec import ClusterSpec, SpecError, dump_spec, parse_spec
from ninefold.state.keys import (
    ASSIGN,
    KV,
    SPEC_KEY,
    STATUS,
    active_lock,
    drain_key,
    kv_key,
    move_key,
    node_assignments,
    node_key,
    node_statuses,
    quarantine_key,
    restart_key,
    switchover_key,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import AssignmentRecord, InstanceStatus
from ninefold.store.base import Compare, Delete, Listing, Put, Store, StoreError, WatchEvent

SWITCHOVER_TTL = 15.0
"""Seconds a switchover request lives: the active acts on it or it lapses."""
SPEC_RETRIES = 5
SPEC_FILENAME = "<spec>"


class OperationError(Exception):
    """A request the cluster refuses; `str()` is a message for people."""


class NotFound(OperationError):
    """An unknown service, instance, node or key."""


class Conflict(OperationError):
    """A compare-and-swap lost, or the cluster's state does not allow the change."""


class Invalid(OperationError):
    """A malformed request or spec; `issues` holds one line per problem."""

    def __init__(self, message: str, issues: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.issues = list(issues)


def _known(names: Any) -> str:
    return ", ".join(sorted(names)) or "none"


def _service(spec: ClusterSpec, service: str) -> None:
    if service not in spec.services:
        raise NotFound(f"no service named {service!r} (services: {_known(spec.services)})")


def _node(spec: ClusterSpec, node: str) -> None:
    if not any(n.name == node for n in spec.nodes):
        raise NotFound(f"no node named {node!r} (nodes: {_known(n.name for n in spec.nodes)})")


def _parse(text: str) -> ClusterSpec:
    try:
        return parse_spec(text, SPEC_FILENAME)
    except SpecError as exc:
        raise _spec_invalid(exc) from None


def _spec_invalid(exc: SpecError) -> Invalid:
    issues = [str(issue) for issue in exc.issues]
    first = issues[0] if issues else "invalid spec"
    more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
    return Invalid(f"invalid spec: {first}{more}", issues)


# --- the spec ----------------------------------------------------------------------


async def update_service(
    store: Store, fallback_spec: ClusterSpec, service: str, change: dict[str, Any]
) -> int:
    """Change fields of one service in the store's spec, atomically; the new
    store revision. The result must validate as a whole (e.g. replicas that
    the nodes can hold), else Invalid and nothing is written."""
    for _ in range(SPEC_RETRIES):
        current = await store.get(SPEC_KEY)
        cluster = await read_spec(store, fallback_spec)
        _service(cluster, service)
        services = dict(cluster.services)
        services[service] = services[service].model_copy(update=change)
        updated = cluster.model_copy(update={"services": services})
        text = dump_spec(updated)
        _parse(text)
        guard = Compare(SPEC_KEY, "mod", "==", current.mod_revision if current else 0)
        result = await store.txn([guard], [Put(SPEC_KEY, text.encode())])
        if result.succeeded:
            return result.revision
    raise Conflict("the spec kept changing during the update; try again")


@dataclass(frozen=True, slots=True)
class SpecChange:
    diff: list[str]
    applied: bool
    revision: int
    """The spec's revision: the new one when applied, else the stored one (0: none)."""


async def apply_spec(store: Store, text: str, dry_run: bool) -> SpecChange:
    """Validate spec YAML and, unless dry_run, make it the desired state.

    The diff is between the stored spec and the new one, both normalised by
    dump_spec. An unchanged spec is not written (applied is then false). The
    write is a compare-and-swap against the spec that was diffed: if it
    changed meanwhile, Conflict."""
    new = _parse(text)
    current = await store.get(SPEC_KEY)
    old_text = ""
    if current is not None:
        try:
            old = parse_spec(current.value.decode(), "<store>")
        except (SpecError, UnicodeDecodeError):
            old_text = current.value.decode(errors="replace")
        else:
            old_text = dump_spec(old)
            if old.cluster != new.cluster:
                issue = (
                    f"{SPEC_FILENAME} cluster: cannot change from {old.cluster!r} to "
                    f"{new.cluster!r} (the cluster's name is its namespace in the store)"
                )
                raise Invalid(f"invalid spec: {issue}", [issue])
    new_text = dump_spec(new)
    diff = list(
        difflib.unified_diff(
            old_text.splitlines(), new_text.splitlines(), "stored", "new", lineterm=""
        )
    )
    revision = current.mod_revision if current else 0
    if dry_run or not diff:
        return SpecChange(diff, False, revision)
    result = await store.txn(
        [Compare(SPEC_KEY, "mod", "==", revision)], [Put(SPEC_KEY, new_text.encode())]
    )
    if not result.succeeded:
        raise Conflict("the spec changed since it was read; look at the diff again")
    return SpecChange(diff, True, result.revision)


# --- asking the agents -------------------------------------------------------------


async def request_restart(store: Store, spec: ClusterSpec, service: str) -> int:
    """Ask for a rolling restart of a service; the token written."""
    current = await read_spec(store, spec)
    _service(current, service)
    if current.services[service].is_external:
        raise Conflict(f"{service} is external: ninefold runs no instance of it to restart")
    token = time.time_ns()
    await store.put(restart_key(service), str(token).encode())
    return token


async def _assignment(store: Store, instance: str) -> AssignmentRecord:
    for item in (await store.list(ASSIGN)).items:
        if item.key.rsplit("/", 1)[-1] == instance:
            return AssignmentRecord.decode(item.value)
    raise NotFound(f"no instance named {instance!r}")


async def request_move(store: Store, spec: ClusterSpec, instance: str, node: str) -> str:
    """Ask the leader to move an instance to a node; the node it is on now.

    Refused (Conflict) when the node is a witness, down, drained, excluded by
    the service's placement constraints, or already runs the service (unless
    the service allows colocation)."""
    cluster = await read_spec(store, spec)
    current = await _assignment(store, instance)
    _node(cluster, node)
    target = cluster.node(node)
    if current.node == node:
        raise Conflict(f"{instance} already runs on {node}")
    if target.witness:
        raise Conflict(f"node {node} is a witness: it runs no instances")
    if await store.get(node_key(node)) is None:
        raise Conflict(f"node {node} is down")
    if await store.get(drain_key(node)) is not None:
        raise Conflict(f"node {node} is drained")
    service = cluster.services.get(current.service)
    if service is None:
        raise Conflict(f"{instance}'s service {current.service!r} is no longer in the spec")
    constraints = service.placement.constraints
    if not target.matches(constraints):
        wanted = ", ".join(f"{k}={v}" for k, v in constraints.items())
        raise Conflict(f"node {node} does not satisfy {current.service}'s constraints ({wanted})")
    if not service.placement.allow_colocate:
        for item in (await store.list(node_assignments(node))).items:
            other = AssignmentRecord.decode(item.value)
            if other.service == current.service:
                raise Conflict(f"node {node} already runs {other.instance} of {current.service}")
    await store.put(move_key(instance), node.encode())
    return current.node


def _can_take_over(status: InstanceStatus, service: str) -> bool:
    return (
        status.service == service
        and status.role == "standby"
        and status.state in ("running", "standby")
    )


async def request_switchover(store: Store, spec: ClusterSpec, service: str, to: str | None) -> str:
    """Ask the active of an active-passive service to step down for a standby
    (the one on node `to`, or the best the agents find); the current holder."""
    cluster = await read_spec(store, spec)
    _service(cluster, service)
    if cluster.services[service].mode != "active-passive":
        raise Conflict(f"{service} is not active-passive: it has no active to switch over")
    active = await store.lock_holder(active_lock(service))
    if active is None:
        raise Conflict(f"{service} has no active now")
    active_node = active.holder.split("/", 1)[0]
    if to is not None:
        _node(cluster, to)
        if to == active_node:
            raise Conflict(f"the active of {service} already runs on {to}")
        statuses = [
            InstanceStatus.decode(i.value) for i in (await store.list(node_statuses(to))).items
        ]
        if not any(_can_take_over(s, service) for s in statuses):
            raise Conflict(f"node {to} has no running standby of {service}")
    else:
        statuses = [InstanceStatus.decode(i.value) for i in (await store.list(STATUS)).items]
        if not any(_can_take_over(s, service) and s.node != active_node for s in statuses):
            raise Conflict(f"{service} has no running standby to switch over to")
    lease = await store.grant_lease(SWITCHOVER_TTL)
    request = {"to": to, "from": active.holder}
    await store.put(switchover_key(service), json.dumps(request).encode(), lease)
    return active.holder


async def drain(store: Store, spec: ClusterSpec, node: str) -> None:
    """Move every instance off a node and place nothing new there."""
    _node(await read_spec(store, spec), node)
    await store.put(drain_key(node), b"")


async def undrain(store: Store, spec: ClusterSpec, node: str) -> None:
    """Let a drained node take instances again (never a quarantined one)."""
    _node(await read_spec(store, spec), node)
    if await store.get(quarantine_key(node)) is not None:
        raise Conflict(f"{node} is quarantined: it stays drained")
    await store.delete(drain_key(node))


async def instance_node(store: Store, instance: str) -> str:
    """The node an instance is assigned to; NotFound if none."""
    return (await _assignment(store, instance)).node


# --- users' keys -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvItem:
    key: str
    value: str
    revision: int


def _kv_key(key: str) -> str:
    if not key:
        raise Invalid("a key must not be empty", ["key: must not be empty"])
    return kv_key(key)


def _decode(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


async def kv_get(store: Store, key: str) -> KvItem:
    item = await store.get(_kv_key(key))
    if item is None:
        raise NotFound(f"no key named {key!r}")
    return KvItem(key, _decode(item.value), item.mod_revision)


async def kv_list(store: Store, prefix: str = "") -> list[KvItem]:
    """Every key starting with prefix, sorted by key."""
    listing = await store.list(kv_key(prefix))
    return [KvItem(i.key[len(KV) :], _decode(i.value), i.mod_revision) for i in listing.items]


async def kv_put(store: Store, key: str, value: str, cas: int | None = None) -> int:
    """Set a key; with cas, only if its revision is cas (0: only if absent),
    else Conflict. The key's new revision."""
    full = _kv_key(key)
    if cas is None:
        return await store.put(full, value.encode())
    result = await store.txn([Compare(full, "mod", "==", cas)], [Put(full, value.encode())])
    if not result.succeeded:
        raise Conflict(_cas_lost(key, await store.get(full), cas))
    return result.revision


async def kv_delete(store: Store, key: str, cas: int | None = None) -> int:
    """Delete a key (NotFound if absent); with cas as for kv_put. The store
    revision after the delete."""
    full = _kv_key(key)
    if cas is None:
        result = await store.txn([Compare(full, "version", ">", 0)], [Delete(full)])
        if not result.succeeded:
            raise NotFound(f"no key named {key!r}")
        return result.revision
    result = await store.txn(
        [Compare(full, "version", ">", 0), Compare(full, "mod", "==", cas)], [Delete(full)]
    )
    if result.succeeded:
        return result.revision
    current = await store.get(full)
    if current is None:
        raise NotFound(f"no key named {key!r}")
    raise Conflict(_cas_lost(key, current, cas))


KV_WATCH_RETRY = 1.0
"""Seconds between attempts to resume a key watch whose store watch broke."""


@dataclass(frozen=True, slots=True)
class KvChange:
    """One message of a key watch: `listing` (every key under the prefix at
    `revision`, the first message), `put`, `delete`, or `reset` (a fresh
    listing, after the store forgot the revisions the watch had to resume
    from: what the watcher holds must be replaced by it)."""

    kind: Literal["listing", "reset", "put", "delete"]
    revision: int
    key: str = ""
    value: str | None = None
    items: tuple[KvItem, ...] = ()


async def kv_listing(store: Store, prefix: str = "") -> KvChange:
    """The first message of a key watch: what is under prefix now."""
    return _listed("listing", await store.list(kv_key(prefix)))


async def kv_follow(store: Store, prefix: str, revision: int) -> AsyncIterator[KvChange]:
    """Every put and delete under prefix after `revision`, in order, forever.

    A broken store watch is resumed from the last revision seen (every
    KV_WATCH_RETRY seconds while the store does not answer); when the store
    has compacted that revision away, a `reset` with a fresh listing, and the
    changes after it."""
    full = kv_key(prefix)
    while True:
        try:
            async with contextlib.aclosing(store.watch(full, revision + 1)) as changes:
                async for change in changes:
                    revision = max(revision, change.revision)
                    yield _changed(change)
        except StoreError as exc:
            if _compacted(exc):
                with contextlib.suppress(StoreError):
                    reset = _listed("reset", await store.list(full))
                    revision = reset.revision
                    yield reset
                    continue
        await asyncio.sleep(KV_WATCH_RETRY)


def _compacted(exc: StoreError) -> bool:
    """Whether a watch failed because its start revision was compacted: both
    backends (etcd's compact_revision, the memory store's bounded history)
    say "compacted up to N"."""
    return "compacted" in str(exc)


def _listed(kind: Literal["listing", "reset"], listing: Listing) -> KvChange:
    items = tuple(KvItem(i.key[len(KV) :], _decode(i.value), i.mod_revision) for i in listing.items)
    return KvChange(kind, listing.revision, items=items)


def _changed(change: WatchEvent) -> KvChange:
    key = change.key[len(KV) :]
    if change.kind == "delete" or change.value is None:
        return KvChange("delete", change.revision, key)
    return KvChange("put", change.revision, key, _decode(change.value))


def _cas_lost(key: str, current: Any, cas: int) -> str:
    now = f"revision {current.mod_revision}" if current is not None else "absent"
    return f"{key!r} is {now}, not {'absent' if cas == 0 else f'revision {cas}'}"
