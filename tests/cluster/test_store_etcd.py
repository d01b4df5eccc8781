"""EtcdStore against a real etcd: the shared contract plus what only a
network backend has (namespaces, dead members, broken streams)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import aetcd
import pytest

from ninefold.store import Compare, EtcdStore, Put, StoreError, StoreUnavailable, request_stats
from ninefold.store.etcd import channel_target, parse_endpoint, synced_endpoints
from tests.helpers import EtcdServer, free_port
from tests.store_contract import (
    CHECKS,
    WAIT,
    Check,
    StoreUnderTest,
    first_event_from_now,
    next_event,
)


def namespace() -> str:
    return f"/ninefold/test-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[EtcdStore]:
    store = EtcdStore([etcd_server.endpoint], namespace())
    yield store
    await store.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_contract(store: EtcdStore, check: Check) -> None:
    async def expire(lease: int) -> None:
        """Nothing to do: without keep_alive the lease runs out; checks poll."""

    await check(StoreUnderTest(store, expire))


async def test_namespaces_are_isolated(etcd_server: EtcdServer) -> None:
    base = namespace()
    a = EtcdStore([etcd_server.endpoint], base + "a")
    b = EtcdStore([etcd_server.endpoint], base + "ab")
    try:
        await a.put("k", b"from a")
        await b.put("k", b"from b")
        got_a, got_b = await a.get("k"), await b.get("k")
        assert got_a is not None and got_a.value == b"from a"
        assert got_b is not None and got_b.value == b"from b"
        assert [kv.key for kv in (await a.list("")).items] == ["k"]
        async with aclosing(b.watch("")) as events:
            await first_event_from_now(b, events, "probe")
            await a.put("only-a", b"1")
            rev = await b.put("only-b", b"1")
            event = await next_event(events, skip="probe")
            assert (event.key, event.revision) == ("only-b", rev)
        assert await a.delete("", prefix=True) == 2
        assert [kv.key for kv in (await b.list("")).items] == ["k", "only-b", "probe"]
    finally:
        await a.close()
        await b.close()


async def test_unavailable_when_no_member_answers() -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = EtcdStore([dead], namespace(), timeout=0.5)
    try:
        for attempt in (store.get("k"), store.put("k", b"v"), store.keep_alive(1)):
            with pytest.raises(StoreUnavailable) as caught:
                await attempt
            message = str(caught.value)
            assert "\n" not in message and dead in message, message
            assert caught.value.__cause__ is None and caught.value.__suppress_context__
        with pytest.raises(StoreUnavailable):
            await anext(store.watch(""))
    finally:
        await store.close()


async def test_a_dead_first_member_is_skipped(etcd_server: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = EtcdStore([dead, etcd_server.endpoint], namespace(), timeout=2.0)
    try:
        rev = await store.put("k", b"v")
        kv = await store.get("k")
        assert kv is not None and kv.mod_revision == rev
        async with aclosing(store.watch("")) as events:
            await first_event_from_now(store, events, "probe")
    finally:
        await store.close()


async def test_endpoints_follow_the_store_members(etcd_server: EtcdServer) -> None:
    gone = f"127.0.0.1:{free_port()}"  # a member that left: not listed by etcd
    store = EtcdStore([gone, etcd_server.endpoint], namespace(), timeout=2.0)
    try:
        (member,) = await store.members()
        assert not member.learner and member.client_urls
        assert await store.sync_endpoints()
        assert store.endpoints == [etcd_server.endpoint]
        assert not await store.sync_endpoints()  # nothing changed
        rev = await store.put("after/sync", b"v")
        assert (await store.get("after/sync")).mod_revision == rev  # type: ignore[union-attr]
    finally:
        await store.close()


def test_synced_endpoints_keep_the_own_member_first() -> None:
    own, other, new = "10.0.0.1:2379", "10.0.0.2:2379", "https://10.0.0.3:2379"
    voters = ["https://10.0.0.2:2379", "https://10.0.0.1:2379", new]
    assert synced_endpoints([own, other], voters) == [own, other, "10.0.0.3:2379"]
    assert synced_endpoints([own, other], ["http://10.0.0.2:2379"]) == [other]
    assert synced_endpoints([own], []) == [own]  # no voter listed: keep what we have
    assert synced_endpoints(["[fd00::1]:2379"], ["https://[fd00::2]:2379"]) == ["[fd00::2]:2379"]


async def test_watch_from_a_compacted_revision_fails(
    store: EtcdStore, etcd_server: EtcdServer
) -> None:
    first = await store.put("k", b"0")
    last = 0
    for i in range(3):
        last = await store.put("k", str(i).encode())
    host, port = parse_endpoint(etcd_server.endpoint)
    async with aetcd.Client(host, port) as client:
        await client.compact(last)
    with pytest.raises(StoreError, match="compacted"):
        await anext(store.watch("", first))


async def test_watch_breaks_when_the_member_dies(store: EtcdStore, etcd_server: EtcdServer) -> None:
    async with aclosing(store.watch("")) as events:
        await first_event_from_now(store, events, "probe")
        etcd_server.kill()

        async def drain() -> None:
            async for event in events:
                assert event.key == "probe"

        with contextlib.suppress(StoreError):  # ending and raising are both allowed
            await asyncio.wait_for(drain(), WAIT)


async def test_watch_ends_when_the_store_closes(etcd_server: EtcdServer) -> None:
    store = EtcdStore([etcd_server.endpoint], namespace())
    events = store.watch("")
    await first_event_from_now(store, events, "probe")
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    await store.close()
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT)
    with pytest.raises(StoreError, match="closed"):
        await store.get("k")


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("127.0.0.1:2379", ("127.0.0.1", 2379)),
        ("http://10.0.0.5:4001/", ("10.0.0.5", 4001)),
        ("[::1]:2379", ("::1", 2379)),
        ("::1", ("::1", 2379)),
        ("etcd.example.org", ("etcd.example.org", 2379)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


def test_parse_endpoint_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="bad port"):
        parse_endpoint("127.0.0.1:http")


def test_channel_target_names_every_member() -> None:
    v4 = [("127.0.0.1", 2379), ("127.0.0.2", 2379)]
    assert channel_target(v4) == "ipv4:127.0.0.1:2379,127.0.0.2:2379"
    assert channel_target([("::1", 2379), ("fd00::2", 2380)]) == "ipv6:[::1]:2379,[fd00::2]:2380"
    assert channel_target([("::1", 1), ("127.0.0.1", 2)]) == "ipv6:[::1]:1,[::ffff:127.0.0.1]:2"


def written_counts(directory: Path) -> dict[str, list[int]]:
    """The one process's counts, written now."""
    stats = request_stats.from_env()
    assert stats is not None
    stats.write()
    (path,) = directory.glob("*.json")
    counts: dict[str, list[int]] = json.loads(path.read_text())
    return counts


async def test_requests_are_counted_when_asked(
    etcd_server: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NINEFOLD_STORE_STATS: what bench/control_traffic.py reads, by kind and
    key group, with the messages' bytes."""
    monkeypatch.setenv(request_stats.ENV, str(tmp_path))
    monkeypatch.setattr(request_stats, "_shared", {})
    store = EtcdStore([etcd_server.endpoint], namespace())
    try:
        await store.put("status/n1/a", b"x")
        await store.get("spec")
        await store.list_serializable("status/")
        await store.txn([Compare("locks/leader", "version", "==", 0)], [Put("locks/leader", b"n1")])
        async with aclosing(store.watch("status/")) as events:
            await first_event_from_now(store, events, "status/probe")
    finally:
        await store.close()
    counts = await asyncio.to_thread(written_counts, tmp_path)
    once = {k: v[0] for k, v in counts.items() if not k.startswith(("put", "watch-events"))}
    assert once == {
        "get spec": 1,
        "list-serializable status/": 1,
        "txn locks/": 1,
        "watch-create status/": 1,
    }
    assert counts["put status/"][0] >= 2  # the first and the probe(s)
    assert counts["watch-events status/"][0] >= 1
    assert all(sent > 0 for kind, (_, sent, _) in counts.items() if not kind.startswith("watch-ev"))
