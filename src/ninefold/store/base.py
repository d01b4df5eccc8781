"""The one interface every store backend implements.

Keys are str (UTF-8 in the backend), values bytes. Revisions are the store's
global, strictly increasing modification counter (etcd's revision), which is
also what fencing tokens are made of.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal


class StoreError(Exception):
    """The store could not be reached or refused a request."""


class StoreUnavailable(StoreError):
    """No store member answered in time (no quorum, network down)."""


class LeaseExpired(StoreError):
    """The lease is gone: it expired or was revoked."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes | None
    revision: int
    """The revision of this change (mod revision for a put)."""


# --- transactions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction.

    target: 'value' (bytes), 'version', 'create' (create revision) or 'mod'
    (mod revision). A missing key has version/create/mod 0.
    """

    key: str
    target: Literal["value", "version", "create", "mod"]
    op: Literal["==", "!=", "<", ">"]
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    """The store revision after the transaction."""


@dataclass(frozen=True, slots=True)
class LockHold:
    """A held lock: fencing_token is the create revision of the lock key,
    strictly greater than that of every earlier holder of the same lock."""

    name: str
    holder: str
    fencing_token: int
    lease: int


@dataclass(slots=True)
class Listing:
    items: list[KeyValue] = field(default_factory=list)
    revision: int = 0
    """Store revision the listing was read at; watch from revision + 1."""


class Store(abc.ABC):
    """Key-value store with transactions, watches, leases and locks."""

    # -- key/value
    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def list(self, prefix: str) -> Listing:
        """Every key starting with prefix, sorted by key."""

    async def get_serializable(self, key: str) -> KeyValue | None:
        """get(), answered like list_serializable()."""
        return await self.get(key)

    async def list_serializable(self, prefix: str) -> Listing:
        """list(), answered by the member the client talks to from what it has
        applied, without asking the raft leader first: a linearizable read
        costs a round of messages with the leader and, from the leader, with a
        quorum; with an embedded store this member is the node's own, so no
        network at all. The answer may miss writes of the last moment
        (never those seen by a watch through the same member, nor the
        client's own), and a member cut off from the others answers from
        what it has until it notices (about the election timeout; then it
        refuses, like every request). So only for loops that read again soon
        and whose writes are guarded (fencing token, compare-and-swap), not
        where a failover waits on the answer. Backends whose every read is
        up to date keep this default."""
        return await self.list(prefix)

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Store value; returns the new revision."""

    @abc.abstractmethod
    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete key (or every key under prefix); returns how many went."""

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run success, else failure."""

    # -- watches
    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        """Changes under prefix from start_revision (0: from now on).

        An async iterator that ends (or raises StoreError) when the watch
        breaks; callers re-list and re-watch, since every loop is
        level-triggered. Use it inside contextlib.aclosing(...) so leaving
        the loop cancels the watch at once."""

    # -- leases
    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> int:
        """A new lease id; ttl is rounded up to whole seconds."""

    @abc.abstractmethod
    async def keep_alive(self, lease: int) -> float:
        """Renew once; returns the TTL the store granted. LeaseExpired if gone."""

    @abc.abstractmethod
    async def revoke_lease(self, lease: int) -> None: ...

    # -- lifecycle
    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- locks (built on the primitives above; backends need not override)
    async def try_lock(self, name: str, holder: str, lease: int) -> LockHold | None:
        """Take lock `name` for `holder` under `lease` if nobody holds it.

        Returns the hold (with its fencing token) or None when another holder
        has it. Taking a lock already held by the same holder and lease
        returns the existing hold."""
        key = lock_key(name)
        await self.txn(
            [Compare(key, "create", "==", 0)],
            [Put(key, holder.encode(), lease)],
        )
        current = await self.get(key)
        if current is None:
            return None
        if current.value.decode() == holder and current.lease == lease:
            return LockHold(name, holder, current.create_revision, lease)
        return None

    async def lock_holder(self, name: str) -> LockHold | None:
        """Who holds lock `name` now, if anyone."""
        current = await self.get(lock_key(name))
        if current is None:
            return None
        return LockHold(name, current.value.decode(), current.create_revision, current.lease)

    async def unlock(self, hold: LockHold) -> bool:
        """Release a hold; False if it was no longer ours."""
        key = lock_key(hold.name)
        result = await self.txn(
            [Compare(key, "create", "==", hold.fencing_token)],
            [Delete(key)],
        )
        return result.succeeded


LOCK_PREFIX = "locks/"


def lock_key(name: str) -> str:
    return LOCK_PREFIX + name
