"""LeaseKeeper: holding the node's lease, and raising the alarm before it can expire.

The store is a MemoryStore behind a wrapper that can cut this agent off (every
call fails, or hangs until a client-side timeout) and logs every keep_alive
with its send time and outcome, so the safety bound can be checked: the keeper
must give up (``on_at_risk``) before TTL has passed since the send of the last
renewal the store acknowledged, which is the earliest the store may expire it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from ninefold.agent.membership import LeaseKeeper
from ninefold.state.keys import node_key
from ninefold.store.base import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Listing,
    Put,
    Store,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
)
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually

TTL = 1.0  # MemoryStore rounds to whole seconds
INTERVAL = 0.1
FENCE_AFTER = 0.5
HANG_LIMIT = 1.0  # a hung request fails after this (the client's own timeout)
NODE = node_key("n1")


@dataclass
class Renewal:
    sent: float
    outcome: str = "pending"  # ok | expired | unavailable | cancelled
    answered: float | None = None


class Partitionable(Store):
    """Delegates to `inner` unless cut off: mode "fail" raises at once, mode
    "hang" waits until healed (then goes through) or HANG_LIMIT (then fails)."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.mode: str | None = None
        self._healed = asyncio.Event()
        self._healed.set()
        self.renewals: list[Renewal] = []
        self.granted_ttl = 0.0
        """The TTL the store said it granted on the last renewal."""
        self.delays: list[float] = []
        """Extra latency of the next keep_alive calls, one entry per call."""

    def cut(self, mode: str) -> None:
        self.mode = mode
        self._healed.clear()

    def heal(self) -> None:
        self.mode = None
        self._healed.set()

    async def _gate(self) -> None:
        if self.mode == "fail":
            raise StoreUnavailable("partitioned")
        if self.mode == "hang":
            try:
                await asyncio.wait_for(self._healed.wait(), HANG_LIMIT)
            except TimeoutError:
                raise StoreUnavailable("request timed out") from None

    async def get(self, key: str) -> KeyValue | None:
        await self._gate()
        return await self.inner.get(key)

    async def list(self, prefix: str) -> Listing:
        await self._gate()
        return await self.inner.list(prefix)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._gate()
        return await self.inner.put(key, value, lease)

    async def delete(self, key: str, prefix: bool = False) -> int:
        await self._gate()
        return await self.inner.delete(key, prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        await self._gate()
        return await self.inner.txn(compares, success, failure)

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:  # type: ignore[override]
        return self.inner.watch(prefix, start_revision)

    async def grant_lease(self, ttl: float) -> int:
        await self._gate()
        return await self.inner.grant_lease(ttl)

    async def keep_alive(self, lease: int) -> float:
        renewal = Renewal(time.monotonic())
        self.renewals.append(renewal)
        try:
            if self.delays:
                await asyncio.sleep(self.delays.pop(0))
            await self._gate()
            granted = await self.inner.keep_alive(lease)
        except LeaseExpired:
            renewal.outcome = "expired"
            raise
        except StoreUnavailable:
            renewal.outcome = "unavailable"
            raise
        except asyncio.CancelledError:
            renewal.outcome = "cancelled"
            raise
        finally:
            renewal.answered = time.monotonic()
        renewal.outcome = "ok"
        self.granted_ttl = granted
        return granted

    async def revoke_lease(self, lease: int) -> None:
        await self._gate()
        await self.inner.revoke_lease(lease)

    async def close(self) -> None:
        await self.inner.close()

    def last_acknowledged_send(self) -> float:
        return max(r.sent for r in self.renewals if r.outcome == "ok")


@dataclass
class Probe:
    """What the callbacks saw."""

    store: Partitionable
    keeper: LeaseKeeper
    acquired: list[tuple[float, int]] = field(default_factory=list)
    at_risk: list[float] = field(default_factory=list)
    recovered: list[tuple[float, int]] = field(default_factory=list)
    node_key_at_risk: list[KeyValue | None] = field(default_factory=list)
    last_ack_at_risk: list[float] = field(default_factory=list)
    remaining_at_risk: list[float] = field(default_factory=list)

    def count_ok(self) -> int:
        return sum(r.outcome == "ok" for r in self.store.renewals)


Factory = Callable[..., Probe]


@pytest.fixture
async def make_probe() -> AsyncIterator[Factory]:
    probes: list[Probe] = []

    def make(ttl: float = TTL) -> Probe:
        store = Partitionable(MemoryStore())
        keeper = LeaseKeeper(store, ttl=ttl, interval=INTERVAL, fence_after=FENCE_AFTER)
        p = Probe(store, keeper)

        async def acquired() -> None:
            assert keeper.valid and keeper.lease
            p.acquired.append((time.monotonic(), keeper.lease))
            await store.put(NODE, b"n1", keeper.lease)

        async def at_risk() -> None:
            p.at_risk.append(time.monotonic())
            p.remaining_at_risk.append(keeper.remaining())
            oks = [r.sent for r in store.renewals if r.outcome == "ok"]
            p.last_ack_at_risk.append(max(oks) if oks else 0.0)
            # Behind the partition, as any other node would see the store now.
            p.node_key_at_risk.append(await store.inner.get(NODE))

        async def recovered() -> None:
            p.recovered.append((time.monotonic(), keeper.lease))

        keeper.on_acquired.append(acquired)
        keeper.on_at_risk.append(at_risk)
        keeper.on_recovered.append(recovered)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.store.heal()
        await p.keeper.stop()
        await p.store.close()


async def cut_until_at_risk(probe: Probe, mode: str) -> float:
    """Let a few renewals through, cut the store off, wait for on_at_risk;
    checks the safety bound and returns the send time of the last ack."""

    async def renewed() -> bool:
        return probe.count_ok() >= 1

    await eventually(renewed, 2.0, "a renewal")
    probe.store.cut(mode)

    async def at_risk() -> bool:
        return bool(probe.at_risk)

    await eventually(at_risk, 3.0, "on_at_risk after the partition")
    (fenced,) = probe.at_risk
    last_ack = probe.store.last_acknowledged_send()
    assert probe.last_ack_at_risk == [last_ack]
    # The store cannot expire the lease before last_ack + TTL (its clock starts
    # when it receives the renewal, which is after we sent it).
    ttl = probe.store.granted_ttl
    assert fenced < last_ack + ttl, f"fenced {fenced - last_ack:.3f}s after the last ack"
    assert fenced >= last_ack + FENCE_AFTER * 0.9  # and not for nothing
    assert probe.node_key_at_risk[0] is not None, "the lease expired before we fenced"
    # What is left is the demotion's time budget.
    (budget,) = probe.remaining_at_risk
    assert 0 < budget <= ttl - FENCE_AFTER
    keeper = probe.keeper
    assert not keeper.valid and keeper.lease == 0
    return last_ack


async def test_start_acquires_a_lease_the_node_key_can_use(make_probe: Factory) -> None:
    probe = make_probe()
    keeper, inner = probe.keeper, probe.store.inner
    await keeper.start()
    assert keeper.valid
    assert [lease for _, lease in probe.acquired] == [keeper.lease]
    assert (await inner.get(NODE)).lease == keeper.lease  # type: ignore[union-attr]
    assert 0 < keeper.remaining() <= TTL


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_short_partition_fences_in_time_then_resumes_the_same_lease(
    make_probe: Factory, mode: str
) -> None:
    # A longer TTL leaves room to heal before the store could expire the lease.
    probe = make_probe(ttl=2.0)
    keeper = probe.keeper
    await keeper.start()
    first = keeper.lease
    await cut_until_at_risk(probe, mode)
    probe.store.heal()

    async def resumed() -> bool:
        return bool(probe.recovered) and keeper.valid

    await eventually(resumed, 2.0, "on_recovered after the partition heals")
    assert keeper.lease == first and probe.recovered[0][1] == first
    assert len(probe.acquired) == 1 and len(probe.at_risk) == 1
    assert (await probe.store.inner.get(NODE)).lease == first  # type: ignore[union-attr]


async def test_long_partition_ends_with_a_new_lease(make_probe: Factory) -> None:
    probe = make_probe()
    keeper, inner = probe.keeper, probe.store.inner
    await keeper.start()
    first = keeper.lease
    await cut_until_at_risk(probe, "hang")

    async def expired_in_store() -> bool:
        return await inner.get(NODE) is None

    await eventually(expired_in_store, 2 * TTL, "the store to expire the lease")
    assert not keeper.valid and keeper.lease == 0
    probe.store.heal()

    async def reacquired() -> bool:
        return len(probe.acquired) == 2 and keeper.valid

    await eventually(reacquired, 3.0, "a new lease after the partition heals")
    assert keeper.lease != first and probe.acquired[1][1] == keeper.lease
    assert (await inner.get(NODE)).lease == keeper.lease  # type: ignore[union-attr]
    assert len(probe.at_risk) == 1 and probe.recovered == []


async def test_renewals_keep_the_lease_and_one_slow_answer_is_no_risk(
    make_probe: Factory,
) -> None:
    probe = make_probe()
    keeper, store = probe.keeper, probe.store
    started = time.monotonic()
    await keeper.start()
    lease = keeper.lease

    async def some_renewals() -> bool:
        return probe.count_ok() >= 2

    await eventually(some_renewals, 2.0, "renewals")
    # The next answer stalls (an fsync, say) for longer than the keeper waits for
    # it: a keeper that waited for each renewal before sending the next would
    # see no ack for FENCE_AFTER and fence.
    store.delays.append(FENCE_AFTER + INTERVAL)
    stalled_from = len(store.renewals)

    async def stall_over() -> bool:
        renewals = store.renewals
        return len(renewals) > stalled_from and renewals[stalled_from].answered is not None

    await eventually(stall_over, 3.0, "the slow renewal to end")
    slow = store.renewals[stalled_from]
    assert slow.answered is not None and slow.answered - slow.sent > FENCE_AFTER * 0.9
    # Renewals went on being sent, and acknowledged, during the stall.
    during = [r for r in store.renewals if slow.sent < r.sent < slow.answered and r.outcome == "ok"]
    assert len(during) >= 2
    # Healthy all along, and the node key outlives the TTL: the lease is renewed.
    while time.monotonic() < started + 1.2 * TTL:
        assert keeper.valid, "lease dropped"
        assert await store.inner.get(NODE) is not None, "node key gone"
        await asyncio.sleep(0.05)
    assert probe.at_risk == [] and len(probe.acquired) == 1 and keeper.lease == lease


async def test_expired_lease_is_at_risk_then_replaced(make_probe: Factory) -> None:
    probe = make_probe()
    keeper, store = probe.keeper, probe.store
    await keeper.start()
    first = keeper.lease
    store.inner.expire_lease(first)
    assert await store.inner.get(NODE) is None

    async def replaced() -> bool:
        return len(probe.acquired) == 2 and keeper.valid

    await eventually(replaced, 2.0, "a new lease after expiry")
    assert len(probe.at_risk) == 1
    assert probe.at_risk[0] < probe.acquired[1][0]
    assert any(r.outcome == "expired" for r in store.renewals)
    assert keeper.lease != first
    assert (await store.inner.get(NODE)).lease == keeper.lease  # type: ignore[union-attr]


async def test_stop_revokes_the_lease(make_probe: Factory) -> None:
    probe = make_probe()
    keeper, store = probe.keeper, probe.store
    await keeper.start()
    await keeper.stop()
    assert not keeper.valid and keeper.lease == 0
    assert await store.inner.get(NODE) is None
    assert probe.at_risk == []


async def test_the_first_renewal_after_failed_ones_tells_the_store_is_back() -> None:
    # A store electing its raft leader answers "no leader" at once: renewals
    # fail; the first one acknowledged afterwards tells it, once.
    store = Partitionable(MemoryStore())
    keeper = LeaseKeeper(store, ttl=10.0, interval=0.1, fence_after=5.0)
    back: list[float] = []
    keeper.on_store_back.append(lambda: back.append(time.monotonic()))
    await keeper.start()
    try:
        await eventually(lambda: any(r.outcome == "ok" for r in store.renewals), 3, "a renewal")
        store.cut("fail")
        await eventually(
            lambda: sum(r.outcome == "unavailable" for r in store.renewals) >= 2, 3, "2 failures"
        )
        assert back == []
        store.heal()
        await eventually(lambda: back, 2, "on_store_back")
        healed_at = len(store.renewals)
        await eventually(lambda: len(store.renewals) >= healed_at + 3, 3, "3 more renewals")
        assert len(back) == 1
    finally:
        store.heal()
        await keeper.stop()
        await store.close()


async def test_a_stall_answered_late_also_tells_the_store_is_back() -> None:
    # A member whose raft leader died holds a renewal until a new leader is
    # elected, then answers it: no renewal failed, yet leases were extended
    # and a dead node may be waiting to be found.
    store = Partitionable(MemoryStore())
    stall = 0.4  # below HANG_LIMIT: the held renewals are answered, not failed
    keeper = LeaseKeeper(store, ttl=10.0, interval=0.1, fence_after=5.0, stall_after=stall)
    back: list[float] = []
    keeper.on_store_back.append(lambda: back.append(time.monotonic()))
    await keeper.start()
    try:
        await eventually(
            lambda: sum(r.outcome == "ok" for r in store.renewals) >= 2, 3, "two renewals"
        )
        assert back == []  # renewals every interval are no stall
        store.cut("hang")
        cut = time.monotonic()
        await eventually(lambda: time.monotonic() - cut > stall * 1.5, 2, "an outage > the limit")
        store.heal()
        await eventually(lambda: back, 2, "on_store_back after the stall")
        assert not any(r.outcome == "unavailable" for r in store.renewals)
    finally:
        store.heal()
        await keeper.stop()
        await store.close()
