"""A local copy of the registry's keys, fed by the agent's key watch, that
serves the reads (`get`, `list`) without a call to the store.

A thread follows `GET /v1/kv-watch?prefix=registry/` (a listing, then every
put and delete) and hands each message to the event loop, which applies it;
only the loop touches the copy. Until the first listing arrives, and once
the watch has been down for more than STALE_AFTER seconds, reads go through
to the store as without a cache. The thread reconnects with a backoff
(0.1 s doubling up to 2 s); each new connection starts from a fresh listing.

Writes go to the store through Kv, compare-and-swap as before. What a write
returns (its revision) goes into the copy at once, so a client that writes
then reads through the same process sees its write; a compare-and-swap that
loses re-reads that key from the store into the copy, so the retry works
from the value that won. Before a request that wrote is answered, `settle`
waits (at most SETTLE_FOR seconds) until the watch has delivered the
revisions written: every replica's watch follows the same store, so by then
the other replicas' copies hold the write too, as a client switching
replicas between a write and a read expects. Closely, not strictly: their
watches may be a few milliseconds behind on a busy machine, so what consumes
what it reads (GET /registry/updated) lists through to the store.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import contextvars
import json
import threading
import time
from typing import Any

from registry_kv import Conflict, Item, Kv, StoreUnavailable, Stream

STALE_AFTER = 2.0
"""Seconds without the watch after which reads go through to the store again."""
SETTLE_FOR = 1.0
"""The longest a request that wrote waits for the watch to deliver its writes."""
SILENCE = 40.0
"""A watch that sends nothing (not even its 15 s ping) for this long is reopened."""

_WRITTEN: contextvars.ContextVar[list[int]] = contextvars.ContextVar("written")
"""The highest revision the request being served wrote (see `CachedKv.track`)."""


class CachedKv:
    """Kv's routes, reads served from the watched copy of the keys under prefix."""

    def __init__(self, kv: Kv, prefix: str) -> None:
        self.kv = kv
        self.prefix = prefix
        self._items: dict[str, tuple[str | None, int]] = {}
        """key -> (value, revision); a value None is a deleted key (so a late
        message about it is known to be older)."""
        self._keys: list[str] = []
        """The keys of _items, sorted, for listing a prefix."""
        self.synced = False
        """Whether a listing has arrived."""
        self._lost_at: float | None = 0.0
        """When the watch went down (None: up, since its listing arrived)."""
        self.revision = 0
        """The last revision the watch delivered."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Follow the watch from a daemon thread (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._follow, name="kv-watch", daemon=True).start()

    @property
    def usable(self) -> bool:
        """Whether reads may come from the copy."""
        if not self.synced:
            return False
        return self._lost_at is None or time.monotonic() - self._lost_at < STALE_AFTER

    # --- Kv's routes ---------------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        if not self.usable:
            return await self.kv.get(key)
        value, revision = self._items.get(key, (None, 0))
        return None if value is None else Item(key, value, revision)

    async def list(self, prefix: str) -> list[Item]:
        """Every key starting with prefix, sorted by key."""
        if not self.usable:
            return await self.kv.list(prefix)
        found = []
        for key in self._keys[bisect.bisect_left(self._keys, prefix) :]:
            if not key.startswith(prefix):
                break
            value, revision = self._items[key]
            if value is not None:
                found.append(Item(key, value, revision))
        return found

    async def list_through(self, prefix: str) -> builtins.list[Item]:
        """As `list`, but from the store, for what must not be missed even
        for the milliseconds another replica's write takes to arrive here
        (GET /registry/updated, which consumes what it lists)."""
        found = await self.kv.list(prefix)
        for item in found:
            self._set(item.key, item.value, item.revision)
        return found

    async def put(self, key: str, value: str, cas: int | None = None) -> int:
        try:
            revision = await self.kv.put(key, value, cas)
        except Conflict:
            await self._refresh(key)
            raise
        self._note(key, value, revision)
        return revision

    async def delete(self, key: str, cas: int | None = None) -> int | None:
        try:
            revision = await self.kv.delete(key, cas)
        except Conflict:
            await self._refresh(key)
            raise
        if revision is not None:
            self._note(key, None, revision)
        return revision

    @staticmethod
    def track() -> builtins.list[int]:
        """Note the revisions written from here on in this request (this
        task, and the tasks it starts): for `settle`."""
        written = [0]
        _WRITTEN.set(written)
        return written

    async def settle(self, written: builtins.list[int]) -> None:
        """Wait (at most SETTLE_FOR s) until the watch has delivered what a
        request wrote (`track`'s list); at once without a watch."""
        if written[0] <= self.revision or self._lost_at is not None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((written[0], waiter))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, SETTLE_FOR)

    # --- the copy (on the event loop) ------------------------------------------------------

    async def _refresh(self, key: str) -> None:
        """After a lost compare-and-swap: the key as the store has it now."""
        item = await self.kv.get(key)
        if item is not None:
            self._set(key, item.value, item.revision)
        elif key in self._items:  # deleted since: newer than what we hold
            self._set(key, None, self._items[key][1] + 1)

    def _note(self, key: str, value: str | None, revision: int) -> None:
        written = _WRITTEN.get(None)
        if written is not None:
            written[0] = max(written[0], revision)
        self._set(key, value, revision)

    def _set(self, key: str, value: str | None, revision: int) -> None:
        held = self._items.get(key)
        if held is None:
            bisect.insort(self._keys, key)
        elif held[1] >= revision:
            return  # what we hold is as new or newer
        self._items[key] = (value, revision)

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        revision = int(message["revision"])
        if kind in ("listing", "reset"):
            fresh = {i["key"]: (i["value"], int(i["revision"])) for i in message["items"]}
            # writes of ours newer than the listing: the watch brings them next
            fresh |= {k: v for k, v in self._items.items() if v[1] > revision}
            self._items = fresh
            self._keys = sorted(fresh)
            self.synced = True
            self._lost_at = None
        elif kind == "put":
            self._set(message["key"], message["value"], revision)
        elif kind == "delete":
            self._set(message["key"], None, revision)
        self.revision = max(self.revision, revision)
        if self._waiters:
            due = [w for r, w in self._waiters if r <= self.revision]
            self._waiters = [(r, w) for r, w in self._waiters if r > self.revision]
            for waiter in due:
                if not waiter.done():
                    waiter.set_result(None)

    def _down(self, _: object = None) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    # --- the watch (in its thread) ---------------------------------------------------------

    def _follow(self) -> None:
        """Until the event loop closes (the process is ending)."""
        delay = 0.1
        while True:
            try:
                stream = self.kv.stream(self.prefix, SILENCE)
            except StoreUnavailable as exc:
                print(f"kv watch: {exc}; again in {delay:.1f}s", flush=True)
            else:
                try:
                    if not self._read(stream):
                        return
                    delay = 0.1
                except (OSError, ValueError) as exc:
                    print(f"kv watch broke: {type(exc).__name__}: {exc}", flush=True)
                finally:
                    stream.close()
            if not self._to_loop(self._down, None):
                return
            time.sleep(delay)
            delay = min(2 * delay, 2.0)

    def _read(self, stream: Stream) -> bool:
        """Hand every `data:` line of the stream to the loop until the stream
        ends (True) or the loop has closed (False)."""
        while line := stream.readline():
            if not line.startswith(b"data: "):
                continue  # the blank line after each message, `: ping` comments
            if not self._to_loop(self._apply, json.loads(line[len(b"data: ") :])):
                return False
        return True

    def _to_loop(self, call: Any, arg: Any) -> bool:
        """Run call(arg) on the event loop; False if it has closed."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(call, arg)
        except RuntimeError:
            return False
        return True
