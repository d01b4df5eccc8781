"""An in-process store with etcd's semantics, for unit tests of the agent logic.

It mirrors what the agent relies on: one global revision (starting at 1, bumped
once per write that changes something), create/mod revision and version per
key, atomic transactions with etcd's compare rules, watches that replay a
bounded history, and leases that expire on a clock. Tests drive time through
`clock` or end a lease at once with `expire_lease`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from ninefold.store.base import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Listing,
    Put,
    Store,
    StoreError,
    TxnResult,
    WatchEvent,
)

REAP_POLL = 0.05
"""Longest sleep of the background lease reaper: an injected clock may jump."""


@dataclass(slots=True)
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _Watcher:
    prefix: str
    queue: asyncio.Queue[WatchEvent | None]


def _holds(compare: Compare, kv: KeyValue | None) -> bool:
    """etcd's rule: a missing key has version/create/mod 0, and any value
    compare against it fails (gRPC cannot tell a missing value from b"")."""
    if compare.target == "value":
        if kv is None:
            return False
        actual: bytes | int = kv.value
        if not isinstance(compare.operand, bytes):
            raise StoreError(f"value compare on {compare.key!r} needs a bytes operand")
    else:
        if isinstance(compare.operand, bytes) or not isinstance(compare.operand, int):
            raise StoreError(f"{compare.target} compare on {compare.key!r} needs an int operand")
        if kv is None:
            actual = 0
        elif compare.target == "version":
            actual = kv.version
        elif compare.target == "create":
            actual = kv.create_revision
        else:
            actual = kv.mod_revision
    operand = compare.operand
    match compare.op:
        case "==":
            return actual == operand
        case "!=":
            return actual != operand
        case "<":
            return actual < operand  # type: ignore[operator]
        case ">":
            return actual > operand  # type: ignore[operator]
    raise StoreError(f"unknown compare operator {compare.op!r}")


class MemoryStore(Store):
    """Store kept in this process; one instance is one isolated cluster."""

    def __init__(
        self,
        namespace: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        history_limit: int = 10_000,
    ) -> None:
        # The namespace only labels the store: an instance shares nothing.
        self.namespace = namespace
        self._clock = clock
        self._history_limit = history_limit
        self._revision = 1
        self._data: dict[str, KeyValue] = {}
        self._history: deque[WatchEvent] = deque()
        self._compacted = 0
        """Highest revision whose events may be missing from the history."""
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(1)
        self._watchers: set[_Watcher] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- key/value
    async def get(self, key: str) -> KeyValue | None:
        self._check()
        return self._data.get(key)

    async def list(self, prefix: str) -> Listing:
        self._check()
        items = [self._data[k] for k in sorted(self._data) if k.startswith(prefix)]
        return Listing(items, self._revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check()
        self._write([Put(key, value, lease)])
        return self._revision

    async def delete(self, key: str, prefix: bool = False) -> int:
        self._check()
        return self._write([Delete(key, prefix)])

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        self._check()
        succeeded = all(_holds(c, self._data.get(c.key)) for c in compares)
        self._write(success if succeeded else failure)
        return TxnResult(succeeded, self._revision)

    # -- watches
    def watch(self, prefix: str, start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        """From start_revision, or (0) from the revision after the current one
        at the time of this call, so nothing written after it is missed."""
        start = start_revision if start_revision > 0 else self._revision + 1
        return self._watch(prefix, start)

    async def _watch(self, prefix: str, start: int) -> AsyncGenerator[WatchEvent, None]:
        self._check()
        if start <= self._compacted:
            raise StoreError(f"watch from revision {start}: compacted up to {self._compacted}")
        # Snapshot the backlog and register in one step: no event falls between.
        backlog = [e for e in self._history if e.revision >= start and e.key.startswith(prefix)]
        watcher = _Watcher(prefix, asyncio.Queue())
        self._watchers.add(watcher)
        try:
            for event in backlog:
                yield event
            while True:
                queued = await watcher.queue.get()
                if queued is None:
                    return
                if queued.revision >= start:
                    yield queued
        finally:
            self._watchers.discard(watcher)

    # -- leases
    async def grant_lease(self, ttl: float) -> int:
        self._check()
        lease_id = next(self._lease_ids)
        seconds = max(1, math.ceil(ttl))
        self._leases[lease_id] = _Lease(seconds, self._clock() + seconds)
        self._ensure_reaper()
        return lease_id

    async def keep_alive(self, lease: int) -> float:
        self._check()
        held = self._leases.get(lease)
        if held is None:
            raise LeaseExpired(f"lease {lease} not found")
        held.deadline = self._clock() + held.ttl
        return float(held.ttl)

    async def revoke_lease(self, lease: int) -> None:
        """Revoke; a lease that is already gone is not an error."""
        self._check()
        self._drop_lease(lease)

    def expire_lease(self, lease_id: int) -> None:
        """Test hook: expire a lease now, deleting its keys."""
        if lease_id not in self._leases:
            raise LeaseExpired(f"lease {lease_id} not found")
        self._drop_lease(lease_id)

    # -- lifecycle
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        reaper, self._reaper = self._reaper, None
        if reaper is not None and not reaper.done():
            reaper.cancel()
            if reaper.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper

    # -- internals
    def _check(self) -> None:
        """Run before every operation: refuse when closed, expire due leases."""
        if self._closed:
            raise StoreError("store is closed")
        self._expire_due()

    def _expire_due(self) -> None:
        now = self._clock()
        for lease_id in [i for i, lease in self._leases.items() if lease.deadline <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None and lease.keys:
            # Like etcd: every key of the lease goes in one revision.
            self._write([Delete(k) for k in sorted(lease.keys)])

    def _ensure_reaper(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._reaper
        if task is None or task.done() or task.get_loop() is not loop:
            self._reaper = loop.create_task(self._reap(), name="memory-store-lease-reaper")

    async def _reap(self) -> None:
        """Expire leases in the background, so watchers see the deletes even
        when nobody calls the store. Ends when no lease is left."""
        while self._leases and not self._closed:
            nearest = min(lease.deadline for lease in self._leases.values())
            await asyncio.sleep(min(max(nearest - self._clock(), 0.0), REAP_POLL))
            self._expire_due()

    def _write(self, ops: Sequence[Put | Delete]) -> int:
        """Apply ops atomically as one revision; returns how many keys went."""
        self._validate(ops)
        revision = self._revision + 1
        events: builtins.list[WatchEvent] = []
        deleted = 0
        for op in ops:
            if isinstance(op, Put):
                events.append(self._apply_put(op, revision))
            else:
                for key in self._matching(op):
                    kv = self._data.pop(key)
                    self._detach(kv)
                    events.append(WatchEvent("delete", key, None, revision))
                    deleted += 1
        if events:
            self._revision = revision
            self._publish(events)
        return deleted

    def _validate(self, ops: Sequence[Put | Delete]) -> None:
        put_keys = [op.key for op in ops if isinstance(op, Put)]
        if len(set(put_keys)) != len(put_keys):
            raise StoreError("duplicate key given in txn request")
        for op in ops:
            if isinstance(op, Delete) and any(_covers(op, key) for key in put_keys):
                raise StoreError("duplicate key given in txn request")
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseExpired(f"lease {op.lease} not found")

    def _apply_put(self, op: Put, revision: int) -> WatchEvent:
        previous = self._data.get(op.key)
        if previous is not None:
            self._detach(previous)
        self._data[op.key] = KeyValue(
            key=op.key,
            value=op.value,
            create_revision=previous.create_revision if previous else revision,
            mod_revision=revision,
            version=previous.version + 1 if previous else 1,
            lease=op.lease,
        )
        if op.lease:
            self._leases[op.lease].keys.add(op.key)
        return WatchEvent("put", op.key, op.value, revision)

    def _detach(self, kv: KeyValue) -> None:
        lease = self._leases.get(kv.lease)
        if lease is not None:
            lease.keys.discard(kv.key)

    def _matching(self, op: Delete) -> builtins.list[str]:
        return sorted(k for k in self._data if _covers(op, k))

    def _publish(self, events: builtins.list[WatchEvent]) -> None:
        self._history.extend(events)
        while len(self._history) > self._history_limit:
            self._compacted = self._history.popleft().revision
        for watcher in self._watchers:
            for event in events:
                if event.key.startswith(watcher.prefix):
                    watcher.queue.put_nowait(event)


def _covers(op: Delete, key: str) -> bool:
    return key.startswith(op.key) if op.prefix else key == op.key
