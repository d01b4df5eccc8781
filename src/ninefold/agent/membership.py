"""The node's lease: being alive in the cluster, and knowing when we may not be.

The store expires a lease no earlier than TTL after it *received* the last
renewal, which is after we *sent* it. So measured from the send time of the
last acknowledged renewal, we know a lower bound of when another node can see
our lease gone. `LeaseKeeper` raises the alarm (``at_risk``) well before that
bound so actives are demoted before anyone else can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ninefold import defaults
from ninefold.store.base import LeaseExpired, Store, StoreError

log = logging.getLogger("ninefold.membership")

Callback = Callable[[], Awaitable[None]]


class LeaseKeeper:
    """Holds one lease for this agent; renews it; replaces it when lost.

    on_acquired runs after each new lease (re-register, republish status);
    on_at_risk runs once when renewal has failed for too long (self-fencing)."""

    def __init__(
        self,
        store: Store,
        ttl: float = defaults.LEASE_TTL,
        interval: float = defaults.KEEPALIVE_INTERVAL,
        fence_after: float = defaults.SELF_FENCE_AFTER,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._interval = interval
        self._fence_after = fence_after
        self._lease = 0
        self._last_ack_sent = 0.0
        self._granted = ttl
        self._valid = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.on_acquired: list[Callback] = []
        self.on_at_risk: list[Callback] = []

    @property
    def lease(self) -> int:
        """The current lease id, 0 while we hold none we trust."""
        return self._lease if self._valid.is_set() else 0

    @property
    def valid(self) -> bool:
        return self._valid.is_set()

    def remaining(self) -> float:
        """Seconds until the store could expire our lease, at the earliest."""
        if not self._valid.is_set():
            return 0.0
        return self._last_ack_sent + self._granted - time.monotonic()

    async def wait_valid(self) -> int:
        await self._valid.wait()
        return self._lease

    async def start(self) -> None:
        await self._acquire()
        self._task = asyncio.create_task(self._renew_loop(), name="lease-renew")
        self._watchdog = asyncio.create_task(self._watch_deadline(), name="lease-watchdog")

    async def stop(self, revoke: bool = True) -> None:
        for task in (self._task, self._watchdog):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if revoke and self._lease:
            with contextlib.suppress(StoreError):
                await self._store.revoke_lease(self._lease)
        self._valid.clear()

    async def _acquire(self) -> None:
        old = self._lease
        if old:
            # Our actives are already demoted: freeing the old lease's locks
            # now only shortens the failover.
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(self._store.revoke_lease(old), timeout=self._interval)
        delay = 0.1
        while True:
            sent = time.monotonic()
            try:
                self._lease = await self._store.grant_lease(self._ttl)
            except StoreError as exc:
                log.warning("cannot get a lease: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._last_ack_sent = sent
            self._granted = self._ttl
            self._valid.set()
            log.info("holding lease %x", self._lease)
            for callback in self.on_acquired:
                try:
                    await callback()
                except StoreError as exc:
                    log.warning("after lease: %s", exc)
            return

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._valid.is_set():
                await self._acquire()
                continue
            sent = time.monotonic()
            try:
                granted = await asyncio.wait_for(
                    self._store.keep_alive(self._lease), timeout=self._interval * 2
                )
            except LeaseExpired:
                log.warning("lease %x expired", self._lease)
                await self._lost()
                await self._acquire()
                continue
            except (StoreError, TimeoutError) as exc:
                log.debug("renewal failed: %s", exc)
                continue
            if self._valid.is_set():
                self._last_ack_sent = sent
                self._granted = min(granted, self._ttl) if granted > 0 else self._ttl

    async def _watch_deadline(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if self._valid.is_set() and time.monotonic() - self._last_ack_sent > self._fence_after:
                log.warning(
                    "lease %x not renewed for %.1fs: demoting before it can expire",
                    self._lease,
                    time.monotonic() - self._last_ack_sent,
                )
                await self._lost()

    async def _lost(self) -> None:
        if not self._valid.is_set():
            return
        self._valid.clear()
        for callback in self.on_at_risk:
            try:
                await callback()
            except Exception:  # a failing demotion must not stop the others
                log.exception("demotion step failed")
