"""The node's lease: being alive in the cluster, and knowing when we may not be.

The store expires a lease no earlier than TTL after it *received* the last
renewal, which is after we *sent* it. So measured from the send time of the
last acknowledged renewal, we know a lower bound of when another node can see
our lease gone. `LeaseKeeper` raises the alarm (``on_at_risk``) well before
that bound so actives are demoted before anyone else can take over.

At risk is not lost: a store that is electing a new leader answers nothing for
a second or so, and then renews the very same lease. So an at-risk keeper goes
on renewing; if a renewal is acknowledged the lease never lapsed and nobody
else can have taken what it held, and ``on_recovered`` lets the node resume.
Only a lease the store says is gone is replaced by a new one.

``on_store_back`` tells the leader the store is back after an outage, so that
it looks for dead nodes (agent/death_confirmation.py): the first renewal
acknowledged after failed ones, or after a stall (no answer for STALL_AFTER),
since an etcd member whose raft leader died holds a renewal until a new
leader is elected and then answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ninefold import defaults
from ninefold.decide.lease import at_risk, remaining
from ninefold.latency import LatencyHistogram
from ninefold.store.base import LeaseExpired, Store, StoreError
from ninefold.tasks import cancel_and_wait

log = logging.getLogger("ninefold.membership")

STALL_AFTER = 2 * defaults.KEEPALIVE_INTERVAL
"""Seconds without an acknowledged renewal after which the next one counts as
the store coming back."""

Callback = Callable[[], Awaitable[None]]
Listener = Callable[[], None]


class LeaseKeeper:
    """Holds one lease for this agent; renews it; replaces it when lost.

    on_acquired runs after each new lease (register, republish status);
    on_at_risk once when renewals have failed for too long (self-fencing);
    on_recovered when a renewal gets through again after that;
    on_renewed (plain functions, which must not block) after every
    acknowledged renewal of a lease we trust; on_store_back (plain functions)
    after the first acknowledged renewal that follows failed ones or a stall."""

    def __init__(
        self,
        store: Store,
        ttl: float = defaults.LEASE_TTL,
        interval: float = defaults.KEEPALIVE_INTERVAL,
        fence_after: float = defaults.SELF_FENCE_AFTER,
        stall_after: float = STALL_AFTER,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._interval = interval
        self._fence_after = fence_after
        self._stall_after = stall_after
        self._lease = 0
        self._last_ack_sent = 0.0
        self._granted = ttl
        self._valid = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.on_acquired: list[Callback] = []
        self.on_at_risk: list[Callback] = []
        self.on_recovered: list[Callback] = []
        self.on_renewed: list[Listener] = []
        self.on_store_back: list[Listener] = []
        self._failing = False
        self._answered = 0.0
        self.renewal_latency = LatencyHistogram()
        """Send to answer of each acknowledged renewal (for /metrics)."""
        self.renewal_failures = 0
        """Renewals that failed: no answer in time, an error, the lease gone."""

    @property
    def lease(self) -> int:
        """The current lease id, 0 while we hold none we trust."""
        return self._lease if self._valid.is_set() else 0

    @property
    def valid(self) -> bool:
        return self._valid.is_set()

    def remaining(self) -> float:
        """Seconds until the store could expire our lease, at the earliest."""
        if not self._lease:
            return 0.0
        return remaining(time.monotonic(), self._last_ack_sent, self._granted)

    async def start(self) -> None:
        await self._acquire()
        self._tasks = [
            asyncio.create_task(self._renew_loop(), name="lease-renew"),
            asyncio.create_task(self._watch_deadline(), name="lease-watchdog"),
        ]

    async def stop(self, revoke: bool = True) -> None:
        await cancel_and_wait(*self._tasks)
        self._valid.clear()
        if revoke and self._lease:
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(self._store.revoke_lease(self._lease), self._interval * 2)
        self._lease = 0

    async def _acquire(self) -> None:
        delay = 0.1
        while True:
            sent = time.monotonic()
            try:
                lease = await self._store.grant_lease(self._ttl)
            except StoreError as exc:
                log.warning("cannot get a lease: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._lease, self._last_ack_sent, self._granted = lease, sent, self._ttl
            self._valid.set()
            log.info("holding lease %x", lease)
            await self._run(self.on_acquired, "after a new lease")
            return

    async def _renew_loop(self) -> None:
        """Send a renewal every interval without waiting for the previous one,
        so one slow answer (an fsync stall) does not delay the next renewal."""
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self._interval)
                if not self._lease:
                    await self._acquire()
                    continue
                task = asyncio.create_task(self._renew_once(self._lease, time.monotonic()))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _renew_once(self, lease: int, sent: float) -> None:
        try:
            granted = await asyncio.wait_for(self._store.keep_alive(lease), self._fence_after)
        except LeaseExpired:
            self.renewal_failures += 1
            if lease == self._lease:
                log.warning("lease %x expired", lease)
                await self._at_risk()
                self._lease = 0  # the renew loop takes a new one
            return
        except (StoreError, TimeoutError) as exc:
            self.renewal_failures += 1
            self._failing = True
            log.debug("renewal failed: %s", exc)
            return
        now = time.monotonic()
        self.renewal_latency.observe(now - sent)
        stalled = bool(self._answered) and now - self._answered > self._stall_after
        self._answered = now
        if self._failing or stalled:
            self._failing = False
            self._notify(self.on_store_back)
        if lease != self._lease or sent <= self._last_ack_sent:
            return
        self._last_ack_sent = sent
        self._granted = min(granted, self._ttl) if granted > 0 else self._ttl
        if not self._valid.is_set():
            log.warning("lease %x renewed again: resuming", lease)
            self._valid.set()
            await self._run(self.on_recovered, "on recovery")
            return
        self._notify(self.on_renewed)

    @staticmethod
    def _notify(listeners: list[Listener]) -> None:
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("renewal listener failed")

    async def _watch_deadline(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if self._valid.is_set() and at_risk(now, self._last_ack_sent, self._fence_after):
                log.warning(
                    "lease %x not renewed for %.1fs: demoting before it can expire",
                    self._lease,
                    now - self._last_ack_sent,
                )
                await self._at_risk()

    async def _at_risk(self) -> None:
        if not self._valid.is_set():
            return
        self._valid.clear()
        await self._run(self.on_at_risk, "demotion")

    @staticmethod
    async def _run(callbacks: list[Callback], what: str) -> None:
        for callback in callbacks:
            try:
                await callback()
            except Exception:  # one failing step must not stop the others
                log.exception("%s failed", what)
