"""The open event streams (`GET /v1/events/stream`): each follows the journal
in the store, and a stopping server ends them all (a stream never ends on its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ninefold.state.keys import EVENTS
from ninefold.state.records import Event
from ninefold.store.base import Store, StoreError

log = logging.getLogger("ninefold.api")

WATCH_RETRY = 1.0
"""Seconds between attempts to resume an event stream whose watch broke."""


class EventStreams:
    """The open /v1/events/stream responses, so a stopping server can end them
    (an event stream never ends on its own)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event | None]] = set()
        self.closed = False

    def open(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._queues.add(queue)
        return queue

    def discard(self, queue: asyncio.Queue[Event | None]) -> None:
        self._queues.discard(queue)

    def close(self) -> None:
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(None)


async def follow_events(store: Store, revision: int, queue: asyncio.Queue[Event | None]) -> None:
    """Feed queue with every event written after `revision`. A broken watch is
    resumed from the last revision seen, from a fresh listing when the store
    has forgotten that far back."""

    def offer(raw: bytes) -> None:
        with contextlib.suppress(ValueError):
            queue.put_nowait(Event.decode(raw))

    while True:
        try:
            async with contextlib.aclosing(store.watch(EVENTS, revision + 1)) as changes:
                async for change in changes:
                    revision = max(revision, change.revision)
                    if change.kind == "put" and change.value:
                        offer(change.value)
        except StoreError as exc:
            log.debug("event stream: watch broke: %s", exc)
        await asyncio.sleep(WATCH_RETRY)
        try:
            listing = await store.list(EVENTS)
        except StoreError:
            continue
        for item in listing.items:
            if item.mod_revision > revision:
                offer(item.value)
        revision = max(revision, listing.revision)
