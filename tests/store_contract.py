"""The behaviour every Store backend shares, as checks run against each one.

A check is an async function taking a `StoreUnderTest`; the backend's test
module runs every check in CHECKS on a fresh store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import pytest

from ninefold.store import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Put,
    Store,
    WatchEvent,
)
from tests.helpers import eventually

WAIT = 10.0
"""Longest a check waits for something asynchronous (a watch event, an expiry)."""


@dataclass
class StoreUnderTest:
    store: Store
    expire: Callable[[int], Awaitable[None]]
    """Makes a lease expire: at once (memory) or by leaving its TTL run out
    (etcd: does nothing, the check polls)."""


Check = Callable[[StoreUnderTest], Awaitable[None]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


async def next_event(events: AsyncIterator[WatchEvent], skip: str = "") -> WatchEvent:
    """The next event whose key is not `skip`, or fail after WAIT."""
    while True:
        event = await asyncio.wait_for(anext(events), WAIT)
        if event.key != skip:
            return event


async def first_event_from_now(store: Store, events: AsyncIterator[WatchEvent], probe: str) -> None:
    """Wait until a watch from now is live: etcd registers it only on the
    first iteration, so keep writing `probe` until the watch sees it."""
    first = asyncio.ensure_future(anext(events))
    deadline = time.monotonic() + WAIT
    try:
        while not first.done():
            assert time.monotonic() < deadline, "a watch from now never saw a change"
            await store.put(probe, b"probe")
            await asyncio.wait({first}, timeout=0.1)
        event = first.result()
    finally:
        first.cancel()
    assert (event.kind, event.key, event.value) == ("put", probe, b"probe")


def fields(kv: KeyValue | None) -> tuple[bytes, int, int, int] | None:
    if kv is None:
        return None
    return kv.value, kv.create_revision, kv.mod_revision, kv.version


# -- key/value ------------------------------------------------------------------


@check
async def get_put_delete(s: StoreUnderTest) -> None:
    store = s.store
    assert await store.get("a") is None
    r1 = await store.put("a", b"1")
    assert await store.get("a") == KeyValue("a", b"1", r1, r1, 1, 0)
    r2 = await store.put("a", b"2")
    assert r2 > r1
    assert fields(await store.get("a")) == (b"2", r1, r2, 2)
    assert await store.delete("a") == 1
    assert await store.get("a") is None
    assert await store.delete("a") == 0
    r3 = await store.put("a", b"3")
    assert fields(await store.get("a")) == (b"3", r3, r3, 1), "a new key starts over"
    assert r3 > r2


@check
async def prefix_delete(s: StoreUnderTest) -> None:
    store = s.store
    for key in ("app/1", "app/2", "app/sub/3", "apple", "b"):
        await store.put(key, b"x")
    assert await store.delete("app/", prefix=True) == 3
    assert [kv.key for kv in (await store.list("")).items] == ["apple", "b"]
    assert await store.delete("", prefix=True) == 2
    assert (await store.list("")).items == []


@check
async def list_sorted_with_revision(s: StoreUnderTest) -> None:
    store = s.store
    last = 0
    for key in ("n/c", "n/a", "m/x", "n/ü", "n/b"):
        last = await store.put(key, key.encode())
    listing = await store.list("n/")
    assert [kv.key for kv in listing.items] == ["n/a", "n/b", "n/c", "n/ü"]
    assert [kv.value for kv in listing.items] == [b"n/a", b"n/b", b"n/c", "n/ü".encode()]
    assert listing.revision == last
    empty = await store.list("zzz/")
    assert (empty.items, empty.revision) == ([], last)


@check
async def serializable_reads_see_own_writes(s: StoreUnderTest) -> None:
    """A serializable read answers like a linearizable one for the client's
    own writes (the member that took a write has applied it)."""
    store = s.store
    assert await store.get_serializable("s/a") is None
    r1 = await store.put("s/b", b"2")
    r2 = await store.put("s/a", b"1")
    assert fields(await store.get_serializable("s/a")) == (b"1", r2, r2, 1)
    listing = await store.list_serializable("s/")
    assert [(kv.key, kv.value) for kv in listing.items] == [("s/a", b"1"), ("s/b", b"2")]
    assert listing.revision == r2 > r1
    assert listing == await store.list("s/")
    await store.delete("s/a")
    assert await store.get_serializable("s/a") is None


# -- transactions ---------------------------------------------------------------


@check
async def txn_compares_each_target(s: StoreUnderTest) -> None:
    store = s.store
    r1 = await store.put("k", b"m")
    r2 = await store.put("k", b"m")  # version 2, create r1, mod r2
    cases = [
        (Compare("k", "value", "==", b"m"), True),
        (Compare("k", "value", "!=", b"m"), False),
        (Compare("k", "value", "<", b"n"), True),
        (Compare("k", "value", ">", b"n"), False),
        (Compare("k", "version", "==", 2), True),
        (Compare("k", "version", "!=", 2), False),
        (Compare("k", "version", "<", 2), False),
        (Compare("k", "version", ">", 1), True),
        (Compare("k", "create", "==", r1), True),
        (Compare("k", "create", "!=", r1), False),
        (Compare("k", "create", "<", r2), True),
        (Compare("k", "create", ">", r1), False),
        (Compare("k", "mod", "==", r2), True),
        (Compare("k", "mod", "!=", r2), False),
        (Compare("k", "mod", "<", r2), False),
        (Compare("k", "mod", ">", r1), True),
    ]
    for i, (compare, expected) in enumerate(cases):
        marker = str(i).encode()
        result = await store.txn([compare], [Put("ok", marker)], [Put("failed", marker)])
        assert result.succeeded is expected, compare
        written = await store.get("ok" if expected else "failed")
        assert written is not None and written.value == marker, compare
        assert result.revision == written.mod_revision, compare


@check
async def txn_compares_on_missing_key(s: StoreUnderTest) -> None:
    store = s.store
    cases = [
        (Compare("gone", "version", "==", 0), True),
        (Compare("gone", "create", "==", 0), True),
        (Compare("gone", "mod", "==", 0), True),
        (Compare("gone", "version", ">", 0), False),
        (Compare("gone", "value", "==", b""), False),
        (Compare("gone", "value", "!=", b"x"), False),
    ]
    for compare, expected in cases:
        result = await store.txn([compare])
        assert result.succeeded is expected, compare


@check
async def txn_runs_a_branch_in_one_revision(s: StoreUnderTest) -> None:
    store = s.store
    for key in ("d/1", "d/2", "x"):
        await store.put(key, key.encode())
    ok = await store.txn(
        [Compare("x", "value", "==", b"x"), Compare("x", "version", "==", 1)],
        [Put("a", b"1"), Put("b", b"2"), Delete("d/", prefix=True)],
        [Put("never", b"!")],
    )
    assert ok.succeeded
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and b is not None
    assert a.mod_revision == b.mod_revision == ok.revision
    assert (await store.list("d/")).items == []
    assert await store.get("never") is None

    failed = await store.txn(
        [Compare("x", "value", "==", b"x"), Compare("x", "version", "==", 5)],
        [Put("never", b"!")],
        [Delete("a"), Put("c", b"3")],
    )
    assert not failed.succeeded
    assert failed.revision == ok.revision + 1
    assert await store.get("a") is None
    assert await store.get("never") is None
    c = await store.get("c")
    assert c is not None and c.mod_revision == failed.revision

    unchanged = await store.txn([Compare("x", "version", "==", 99)])
    assert not unchanged.succeeded
    assert unchanged.revision == failed.revision, "a txn that writes nothing keeps the revision"


# -- watches --------------------------------------------------------------------


@check
async def watch_from_now(s: StoreUnderTest) -> None:
    store = s.store
    await store.put("w/before", b"0")
    async with aclosing(store.watch("w/")) as events:
        await first_event_from_now(store, events, "w/probe")
        await store.put("x/outside", b"1")
        put_rev = await store.put("w/a", b"1")
        await store.delete("w/a")
        put = await next_event(events, skip="w/probe")
        assert (put.kind, put.key, put.value, put.revision) == ("put", "w/a", b"1", put_rev)
        gone = await next_event(events, skip="w/probe")
        assert (gone.kind, gone.key, gone.value) == ("delete", "w/a", None)
        assert gone.revision == (await store.list("")).revision


@check
async def watch_replays_from_old_revision(s: StoreUnderTest) -> None:
    store = s.store
    r1 = await store.put("h/a", b"1")
    r2 = await store.put("h/b", b"2")
    await store.put("other", b"x")
    await store.delete("h/a")
    r3 = (await store.list("")).revision
    async with aclosing(store.watch("h/", r1)) as events:
        got = [await next_event(events) for _ in range(3)]
        assert [(e.kind, e.key, e.value, e.revision) for e in got] == [
            ("put", "h/a", b"1", r1),
            ("put", "h/b", b"2", r2),
            ("delete", "h/a", None, r3),
        ]
        r4 = await store.put("h/c", b"3")
        live = await next_event(events)
        assert (live.kind, live.key, live.revision) == ("put", "h/c", r4)
    async with aclosing(store.watch("h/", r2)) as events:
        assert (await next_event(events)).revision == r2


@check
async def watch_sees_lease_expiry(s: StoreUnderTest) -> None:
    store = s.store
    lease = await store.grant_lease(1)
    rev = await store.put("live/n1", b"up", lease)
    kv = await store.get("live/n1")
    assert kv is not None and kv.lease == lease
    async with aclosing(store.watch("live/", rev + 1)) as events:
        await s.expire(lease)
        event = await next_event(events)
    assert (event.kind, event.key, event.value) == ("delete", "live/n1", None)
    assert event.revision > rev
    assert await store.get("live/n1") is None
    with pytest.raises(LeaseExpired):
        await store.keep_alive(lease)


# -- leases ---------------------------------------------------------------------


@check
async def lease_keep_alive_and_revoke(s: StoreUnderTest) -> None:
    store = s.store
    short = await store.grant_lease(0.2)
    assert await store.keep_alive(short) >= 1.0, "TTLs round up to whole seconds"
    lease = await store.grant_lease(5)
    assert await store.keep_alive(lease) == 5.0
    await store.put("l/a", b"a", lease)
    await store.put("l/b", b"b", lease)
    await store.put("l/c", b"c")
    await store.put("l/d", b"d", lease)
    await store.put("l/d", b"d")  # a put without lease detaches the key
    await store.revoke_lease(lease)
    assert [kv.key for kv in (await store.list("l/")).items] == ["l/c", "l/d"]
    with pytest.raises(LeaseExpired):
        await store.keep_alive(lease)
    with pytest.raises(LeaseExpired):
        await store.put("l/e", b"e", lease)
    await store.revoke_lease(lease)  # revoking a gone lease is fine
    with pytest.raises(LeaseExpired):
        await store.keep_alive(987654321)
    await store.revoke_lease(short)


# -- locks ----------------------------------------------------------------------


@check
async def locks_fence_and_free_on_expiry(s: StoreUnderTest) -> None:
    store = s.store
    lease_a = await store.grant_lease(30)
    lease_b = await store.grant_lease(1)
    hold_a = await store.try_lock("web", "n1", lease_a)
    assert hold_a is not None
    assert (hold_a.name, hold_a.holder, hold_a.lease) == ("web", "n1", lease_a)
    assert await store.try_lock("web", "n1", lease_a) == hold_a, "taking it again is idempotent"
    assert await store.try_lock("web", "n2", lease_b) is None
    assert await store.lock_holder("web") == hold_a
    assert await store.unlock(hold_a)
    assert not await store.unlock(hold_a)
    assert await store.lock_holder("web") is None

    await store.keep_alive(lease_b)
    hold_b = await store.try_lock("web", "n2", lease_b)
    assert hold_b is not None and hold_b.fencing_token > hold_a.fencing_token
    assert not await store.unlock(hold_a), "a stale hold cannot release the new holder"
    assert await store.lock_holder("web") == hold_b
    assert await store.try_lock("web", "n1", lease_a) is None

    await s.expire(lease_b)

    async def freed() -> bool:
        return await store.lock_holder("web") is None

    await eventually(freed, WAIT, "the lock to free when its holder's lease expired")
    hold_c = await store.try_lock("web", "n1", lease_a)
    assert hold_c is not None and hold_c.fencing_token > hold_b.fencing_token
    await store.revoke_lease(lease_a)
    assert await store.lock_holder("web") is None
