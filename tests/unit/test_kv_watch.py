"""`GET /v1/kv-watch` (docs/api.md): the keys under a prefix, then every change,
against a MemoryStore through the ASGI app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from ninefold import operations
from ninefold.api import create_app
from ninefold.store.base import Listing, StoreUnavailable
from ninefold.store.memory import MemoryStore
from tests.unit.test_api import cluster_spec, error_of


class KvWatch:
    """One `GET /v1/kv-watch?prefix=...` driven through the ASGI app by hand
    (httpx's ASGITransport reads a response whole, which this one never is)."""

    def __init__(self, app: FastAPI, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending: list[dict[str, Any]] = []
        self.disconnect = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.status = 0

    async def __aenter__(self) -> KvWatch:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/kv-watch",
            "raw_path": b"/v1/kv-watch",
            "root_path": "",
            "query_string": urlencode({"prefix": self.prefix}).encode(),
            "headers": [(b"host", b"test"), (b"accept", b"text/event-stream")],
            "client": ("127.0.0.1", 1234),
            "server": ("test", 80),
        }
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await self.messages.put(message)

        self.task = asyncio.create_task(self.app(scope, receive, send))
        start = await asyncio.wait_for(self.messages.get(), 5)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        return self

    async def next(self) -> dict[str, Any]:
        """The next message of the stream (the JSON of its `data:` line)."""
        while not self.pending:
            message = await asyncio.wait_for(self.messages.get(), 5)
            assert message.get("more_body", False), "the stream ended"
            for line in message.get("body", b"").decode().splitlines():
                if line.startswith("data: "):
                    self.pending.append(json.loads(line[len("data: ") :]))
        return self.pending.pop(0)

    async def __aexit__(self, *exc: object) -> None:
        self.disconnect.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


def app_on(store: MemoryStore) -> FastAPI:
    return create_app(store, cluster_spec(), "n1")


def break_watches(store: MemoryStore) -> None:
    """End every open store watch, as a lost etcd connection does."""
    for watcher in list(store._watchers):
        watcher.queue.put_nowait(None)


async def put(store: MemoryStore, key: str, value: str) -> int:
    return await store.put("kv/" + key, value.encode())


async def test_the_listing_then_puts_and_deletes_under_the_prefix(store: MemoryStore) -> None:
    await put(store, "app/b", "two")
    first = await put(store, "app/a", "one")
    await put(store, "other/x", "not watched")
    async with KvWatch(app_on(store), "app/") as watch:
        assert watch.status == 200
        listing = await watch.next()
        assert listing == {
            "type": "listing",
            "revision": listing["revision"],
            "items": [
                {"key": "app/a", "value": "one", "revision": first},
                {"key": "app/b", "value": "two", "revision": first - 1},
            ],
        }
        assert listing["revision"] >= first + 1
        changed = await put(store, "app/a", "uno")
        await put(store, "other/x", "still not watched")
        await put(store, "apple", "a different prefix")
        await store.delete("kv/app/b")
        assert await watch.next() == {
            "type": "put",
            "key": "app/a",
            "value": "uno",
            "revision": changed,
        }
        deleted = await watch.next()
        assert deleted == {"type": "delete", "key": "app/b", "revision": changed + 3}
        async with KvWatch(app_on(store), "") as everything:
            assert [i["key"] for i in (await everything.next())["items"]] == [
                "app/a",
                "apple",
                "other/x",
            ]
    assert not store._watchers  # the clients went away: their watches are gone


async def test_a_broken_store_watch_resumes_without_losing_or_repeating(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operations, "KV_WATCH_RETRY", 0.01)
    async with KvWatch(app_on(store), "q/") as watch:
        assert (await watch.next())["items"] == []
        await put(store, "q/1", "a")
        assert (await watch.next())["key"] == "q/1"
        break_watches(store)
        await put(store, "q/2", "b")  # while no store watch is open
        await store.delete("kv/q/1")
        await put(store, "q/3", "c")
        got = [await watch.next() for _ in range(3)]
        assert [(m["type"], m["key"]) for m in got] == [
            ("put", "q/2"),
            ("delete", "q/1"),
            ("put", "q/3"),
        ]
        assert got[0]["revision"] < got[1]["revision"] < got[2]["revision"]


async def test_a_compacted_resume_sends_a_reset_with_a_fresh_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(operations, "KV_WATCH_RETRY", 0.01)
    store = MemoryStore(history_limit=2)
    try:
        await put(store, "q/keep", "k")
        await put(store, "q/gone", "g")
        async with KvWatch(app_on(store), "q/") as watch:
            assert len((await watch.next())["items"]) == 2
            break_watches(store)
            for i in range(4):  # more than the store remembers
                await put(store, f"q/{i}", str(i))
            await store.delete("kv/q/gone")
            reset = await watch.next()
            assert reset["type"] == "reset"
            assert [i["key"] for i in reset["items"]] == ["q/0", "q/1", "q/2", "q/3", "q/keep"]
            after = await put(store, "q/4", "4")
            assert await watch.next() == {
                "type": "put",
                "key": "q/4",
                "value": "4",
                "revision": after,
            }
    finally:
        await store.close()


async def test_the_stream_ends_when_the_server_stops(store: MemoryStore) -> None:
    app = app_on(store)
    async with KvWatch(app, "") as watch:
        await watch.next()
        app.state.event_streams.close()
        while (await asyncio.wait_for(watch.messages.get(), 5)).get("more_body", False):
            pass


class NoQuorum(MemoryStore):
    async def list(self, prefix: str) -> Listing:
        raise StoreUnavailable("no store member answers")


async def test_a_store_without_quorum_is_503_before_the_stream_starts() -> None:
    store = NoQuorum()
    transport = httpx.ASGITransport(app=app_on(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        error_of(
            await client.get("/v1/kv-watch", params={"prefix": "x/"}), 503, "store_unavailable"
        )
    await store.close()
