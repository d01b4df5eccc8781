"""This node's store member as it says of itself (raft leader or not, database
size), asked every few seconds in the background for /metrics: a scrape reads
the last answer and never waits for the store, which may be down."""

from __future__ import annotations

import asyncio
import logging
import time

from ninefold.store.base import StoreError
from ninefold.store.etcd import EtcdStore, MemberStatus

log = logging.getLogger("ninefold.agent")

SAMPLE_EVERY = 5.0
"""Seconds between two status requests (one small gRPC call to the local member)."""
ANSWER_WITHIN = 1.0


class StoreMemberStatus:
    def __init__(self, store: EtcdStore, every: float = SAMPLE_EVERY) -> None:
        self._store = store
        self._every = every
        self.last: MemberStatus | None = None
        """The member's last answer; None before the first and after a request
        it did not answer (a stale answer would say it leads when it may not)."""
        self.sampled_at = 0.0
        """time.time() of the last request, answered or not."""

    async def sample(self) -> MemberStatus | None:
        try:
            self.last = await self._store.member_status(ANSWER_WITHIN)
        except StoreError as exc:
            if self.last is not None:
                log.debug("store member status: %s", exc)
            self.last = None
        self.sampled_at = time.time()
        return self.last

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self._every)
