"""The event journal: every decision, with time and reason, kept in the store."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ninefold import defaults
from ninefold.state.keys import EVENTS, event_key
from ninefold.state.records import Event
from ninefold.store.base import Store, StoreError

log = logging.getLogger("ninefold.events")


class EventJournal:
    """Appends events for one node. A failed append never raises (losing a
    journal line must not stop a failover): it is retried in the background
    for a while, since the store is most often unavailable for a moment only
    (a store leader election), and events keep their own time."""

    def __init__(self, store: Store, node: str) -> None:
        self._store = store
        self._node = node
        self._retries: set[asyncio.Future[Any]] = set()

    async def record(self, kind: str, subject: str, reason: str = "", **data: Any) -> Event:
        event = Event(kind=kind, subject=subject, reason=reason, node=self._node, data=data)
        log.info("event %s", event.line())
        # Bounded: a journal line must not hold up a failover behind a store
        # that stopped answering; a late write goes on by itself.
        write = asyncio.ensure_future(
            self._store.put(event_key(event.time, self._node), event.encode())
        )
        try:
            await asyncio.wait_for(asyncio.shield(write), defaults.EVENTS_WRITE_WAIT)
        except TimeoutError:
            self._keep(write)
            write.add_done_callback(lambda done: self._failed(done, event))
        except StoreError as exc:
            log.debug("journal %s %s later: %s", kind, subject, exc)
            self._keep(asyncio.create_task(self._retry(event)))
        return event

    def _failed(self, write: asyncio.Future[int], event: Event) -> None:
        if write.cancelled() or write.exception() is not None:
            self._keep(asyncio.create_task(self._retry(event)))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a reference until it is done (the loop keeps only weak ones)."""
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, event: Event) -> None:
        deadline = time.monotonic() + defaults.EVENTS_RETRY_FOR
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                await self._store.put(event_key(event.time, self._node), event.encode())
                return
            except StoreError:
                continue
        log.warning("could not journal %s %s", event.kind, event.subject)


async def prune_events(store: Store, keep: int = defaults.EVENTS_KEEP) -> int:
    """Delete all but the newest `keep` events; returns how many went."""
    listing = await store.list(EVENTS)
    excess = listing.items[: max(0, len(listing.items) - keep)]
    for item in excess:
        await store.delete(item.key)
    return len(excess)
