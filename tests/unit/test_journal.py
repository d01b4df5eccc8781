"""The event journal: appending, reading back in order, pruning, and never raising."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ninefold.agent.journal import EventJournal, prune_events
from ninefold.state.keys import EVENTS
from ninefold.state.reads import read_events
from ninefold.store.base import StoreUnavailable
from ninefold.store.memory import MemoryStore


class PutFails(MemoryStore):
    """A store that reads fine but cannot write (no quorum)."""

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        raise StoreUnavailable("no quorum")


async def fill(journal: EventJournal, count: int) -> None:
    for i in range(count):
        await journal.record("placed", f"web-{i}", "scheduled", to_node="n1", n=i)


async def test_record_then_read_back() -> None:
    store = MemoryStore()
    journal = EventJournal(store, "n1")
    event = await journal.record("moved", "web-0", "n2 unavailable", from_node="n2", to_node="n1")
    assert (event.kind, event.subject, event.node) == ("moved", "web-0", "n1")
    (read,) = await read_events(store)
    assert read == event
    assert read.data == {"from_node": "n2", "to_node": "n1"}
    assert "moved" in read.line() and "from_node=n2" in read.line()


async def test_read_events_gives_the_newest_oldest_first() -> None:
    store = MemoryStore()
    await fill(EventJournal(store, "n1"), 30)
    events = await read_events(store)
    assert [e.data["n"] for e in events] == list(range(30))  # none lost, oldest first
    newest = await read_events(store, limit=5)
    assert [e.data["n"] for e in newest] == [25, 26, 27, 28, 29]
    assert [e.time for e in newest] == sorted(e.time for e in newest)


async def test_events_of_several_nodes_interleave_by_time() -> None:
    store = MemoryStore()
    a, b = EventJournal(store, "n1"), EventJournal(store, "n2")
    await a.record("x", "1")
    await b.record("x", "2")
    await a.record("x", "3")
    assert [(e.subject, e.node) for e in await read_events(store)] == [
        ("1", "n1"),
        ("2", "n2"),
        ("3", "n1"),
    ]


async def test_undecodable_entries_are_skipped() -> None:
    store = MemoryStore()
    journal = EventJournal(store, "n1")
    await journal.record("x", "good")
    await store.put(f"{EVENTS}99999999999999999999-zz", b"not json")
    assert [e.subject for e in await read_events(store)] == ["good"]


async def test_prune_keeps_the_newest() -> None:
    store = MemoryStore()
    await fill(EventJournal(store, "n1"), 12)
    assert await prune_events(store, keep=5) == 7
    assert [e.data["n"] for e in await read_events(store)] == [7, 8, 9, 10, 11]
    assert await prune_events(store, keep=5) == 0
    assert await prune_events(store, keep=100) == 0
    assert len(await read_events(store)) == 5


async def test_a_failed_append_is_swallowed_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    store = PutFails()
    journal = EventJournal(store, "n1")
    with caplog.at_level(logging.DEBUG, logger="ninefold.events"):
        event = await journal.record("failover", "db", "n1/db-0 -> n2/db-0", token=7)
    assert (event.kind, event.subject, event.data) == ("failover", "db", {"token": 7})
    assert await read_events(store) == []
    assert any("journal failover db later" in r.getMessage() for r in caplog.records)


class PutFailsFirst(MemoryStore):
    """A store without quorum for its first `failures` writes."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("no quorum")
        return await super().put(key, value, lease)


async def test_an_event_lost_to_a_store_hiccup_lands_later() -> None:
    store = PutFailsFirst(failures=2)
    journal = EventJournal(store, "n1")
    event = await journal.record("demoted", "db-0", "lease at risk")
    deadline = asyncio.get_running_loop().time() + 5
    while not await read_events(store):
        assert asyncio.get_running_loop().time() < deadline, "the event never landed"
        await asyncio.sleep(0.05)
    assert await read_events(store) == [event]


class PutHangs(MemoryStore):
    """A store whose writes wait until `release` is set, then succeed or fail."""

    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.fail = fail

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        if not self.release.is_set():
            await self.release.wait()
            if self.fail:
                raise StoreUnavailable("no answer")
        return await super().put(key, value, lease)


async def landed(store: MemoryStore) -> list[object]:
    deadline = asyncio.get_running_loop().time() + 5
    while not (events := await read_events(store)):
        assert asyncio.get_running_loop().time() < deadline, "the event never landed"
        await asyncio.sleep(0.05)
    return list(events)


@pytest.mark.parametrize("fail", [False, True], ids=["late write lands", "late write retried"])
async def test_a_hanging_store_does_not_hold_up_the_caller(fail: bool) -> None:
    store = PutHangs(fail)
    journal = EventJournal(store, "n1")
    # The store answers only once released: record() must return before that.
    event = await asyncio.wait_for(journal.record("promoted", "db", "n2/db-0 is active"), 5)
    assert await read_events(store) == []
    store.release.set()
    assert await landed(store) == [event]
