"""MemoryStore: the shared store contract, plus its clock and test hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from ninefold.store import LeaseExpired, MemoryStore, Put, StoreError
from tests.store_contract import CHECKS, WAIT, Check, StoreUnderTest


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[MemoryStore]:
    store = MemoryStore("/ninefold/test/", clock=clock)
    yield store
    await store.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_contract(store: MemoryStore, check: Check) -> None:
    async def expire(lease: int) -> None:
        store.expire_lease(lease)

    await check(StoreUnderTest(store, expire))


async def test_revision_starts_at_one(store: MemoryStore) -> None:
    assert (await store.list("")).revision == 1
    assert await store.put("a", b"1") == 2


async def test_lease_expires_by_the_clock(store: MemoryStore, clock: FakeClock) -> None:
    lease = await store.grant_lease(1.2)
    assert await store.keep_alive(lease) == 2.0, "rounded up to whole seconds"
    await store.put("k", b"v", lease)
    clock.advance(1.9)
    assert await store.get("k") is not None
    await store.keep_alive(lease)
    clock.advance(1.9)
    assert await store.get("k") is not None, "keep_alive restarted the TTL"
    clock.advance(0.2)
    assert await store.get("k") is None
    with pytest.raises(LeaseExpired):
        await store.keep_alive(lease)


async def test_ttl_is_at_least_one_second(store: MemoryStore) -> None:
    assert await store.keep_alive(await store.grant_lease(0)) == 1.0


async def test_reaper_expires_leases_without_calls(store: MemoryStore, clock: FakeClock) -> None:
    lease = await store.grant_lease(2)
    rev = await store.put("k", b"v", lease)
    async with aclosing(store.watch("", rev + 1)) as events:
        clock.advance(2.5)
        event = await asyncio.wait_for(anext(events), WAIT)
    assert (event.kind, event.key) == ("delete", "k")


async def test_expire_lease_of_unknown_lease(store: MemoryStore) -> None:
    with pytest.raises(LeaseExpired):
        store.expire_lease(42)


async def test_watch_from_compacted_revision_fails(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, history_limit=3)
    for i in range(5):
        await store.put(f"k{i}", b"v")
    with pytest.raises(StoreError, match="compacted"):
        await anext(store.watch("", 2))
    async with aclosing(store.watch("", 4)) as events:
        assert (await anext(events)).key == "k2"
    await store.close()


async def test_duplicate_keys_in_one_txn_are_refused(store: MemoryStore) -> None:
    with pytest.raises(StoreError, match="duplicate"):
        await store.txn([], [Put("a", b"1"), Put("a", b"2")])
    assert (await store.list("")).revision == 1


async def test_close_ends_watches_and_the_reaper(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    await store.grant_lease(10)
    events = store.watch("")
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    await store.close()
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT)
    reapers = [t for t in asyncio.all_tasks() if t.get_name() == "memory-store-lease-reaper"]
    assert all(t.done() for t in reapers)
    with pytest.raises(StoreError, match="closed"):
        await store.get("a")
