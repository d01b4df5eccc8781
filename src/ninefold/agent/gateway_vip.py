"""The gateway's VIP: held by one node whose gateway answers (keepalived's job).

Every node whose own gateway passes its check (keepalived's track_script) and
that is not drained says so under its lease (`vipcand/gateway/<node>`); the
VIP follows a lock in the store, taken in order of `prefer`. The holder drops
the address before it unlocks, and the lease guards the rest: an agent whose
lease is at risk drops every address at once, and one that died loses it
through the kernel lifetime (see `ninefold.vip`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ninefold import defaults
from ninefold.agent.addresses import FloatingAddresses
from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.agent.journal import EventJournal
from ninefold.agent.membership import LeaseKeeper
from ninefold.decide.vip import vip_step
from ninefold.health import HealthMonitor, HttpProbe
from ninefold.spec import ClusterSpec, NodeSpec
from ninefold.spec.vip import VipSpec
from ninefold.state.keys import (
    GATEWAY_VIP_LOCK,
    SPEC_KEY,
    VIP_CANDIDATES,
    drain_key,
    last_segment,
    vip_candidate_key,
)
from ninefold.state.reads import read_spec
from ninefold.store.base import LockHold, Store, StoreError, lock_key

log = logging.getLogger("ninefold.vip")

OWNER = "gateway"


def effective_vip(started: ClusterSpec, stored: ClusterSpec) -> VipSpec | None:
    """The gateway VIP this agent holds: the one it started with (its gateway
    listens on that address), under the stored spec's rules (prefer, preempt,
    GARP) while the stored spec keeps the same address. A new address takes
    effect when the agent restarts, like the rest of `gateway`."""
    first = started.gateway.vip if started.gateway.enabled else None
    now = stored.gateway.vip if stored.gateway.enabled else None
    if first is not None and now is not None and now.address == first.address:
        return now
    return first


class GatewayVipKeeper:
    def __init__(
        self,
        store: Store,
        node: NodeSpec,
        lease: LeaseKeeper,
        journal: EventJournal,
        addresses: FloatingAddresses,
        spec: ClusterSpec,
    ) -> None:
        self._store = store
        self._node = node
        self._lease = lease
        self._journal = journal
        self._addresses = addresses
        self._spec = spec
        self._signal = ChangeSignal(
            store, lock_key(GATEWAY_VIP_LOCK), VIP_CANDIDATES, SPEC_KEY, drain_key(node.name)
        )
        url = f"http://{node.host_port(node.ports.gateway_http)}/"
        self.check = HealthMonitor(
            HttpProbe(url, any_status=True),
            interval=defaults.VIP_CHECK_INTERVAL,
            timeout=defaults.VIP_CHECK_TIMEOUT,
            fall=defaults.VIP_CHECK_FALL,
            rise=defaults.VIP_CHECK_RISE,
            start_grace=0.0,
            on_change=self._on_check,
        )
        self.vip: VipSpec | None = None
        self.hold: LockHold | None = None
        self._stopping = False
        self._published: tuple[bool, int] | None = None
        self._free_since: float | None = None

    @property
    def me(self) -> str:
        return self._node.name

    def _on_check(self, state: str) -> None:
        log.info("gateway check: %s", state)
        self._signal.poke()

    def poke(self) -> None:
        self._signal.poke()

    async def run(self) -> None:
        await self.check.start()
        try:
            # A timer as well as the watches: a free VIP waits for a preferred
            # node a moment, and nothing in the store marks the end of that.
            every = defaults.VIP_CHECK_INTERVAL
            await run_level_triggered(self._signal, self.step, "gateway vip", every)
        finally:
            await self.check.stop()

    async def stop(self) -> None:
        """Shutting down: hand the VIP over now rather than when the lease ends."""
        self._stopping = True
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._release("agent stopping")
                await self._publish(False, self._lease.lease)

    async def step(self) -> None:
        spec = await read_spec(self._store, self._spec)
        vip = effective_vip(self._spec, spec)
        if vip != self.vip:
            if self.vip is not None:
                await self._release("vip changed in the spec")
            self.vip = vip
        lease = self._lease.lease
        if vip is None:
            await self._publish(False, lease)
            return
        eligible = (
            bool(lease)
            and not self._stopping
            and self.check.state == "healthy"
            and await self._store.get(drain_key(self.me)) is None
            and await self._addresses.can_hold(vip)
        )
        await self._publish(eligible, lease)
        current = await self._store.lock_holder(GATEWAY_VIP_LOCK)
        ours_before = current is not None and current.holder == self.me and current.lease == lease
        if ours_before and self.hold is None:
            self.hold = current  # ours from before a store hiccup
        holder = current.holder if current is not None else None
        if (
            current is not None
            and current.holder == self.me
            and (self.hold is None or current.fencing_token != self.hold.fencing_token)
        ):
            holder = "(an earlier lease of this node)"
        if current is None:
            self._free_since = self._free_since or time.monotonic()
        else:
            self._free_since = None
        if self.hold is not None and holder != self.me:
            # The lock went (our lease was replaced): the address must go too.
            self.hold = None
            await self._addresses.drop(vip.ip, "lost the vip lock")
        candidates = {last_segment(i.key) for i in (await self._store.list(VIP_CANDIDATES)).items}
        action = vip_step(
            me=self.me,
            holder=holder,
            eligible=eligible,
            candidates=candidates,
            rank={n.name: vip.rank(n.name) for n in spec.nodes},
            preempt=vip.preempt,
            free_for=time.monotonic() - self._free_since if self._free_since else 0.0,
        )
        if action == "campaign":
            await self._campaign(vip, lease)
        elif action == "hold":
            if not self._addresses.holds(vip.ip):  # again, after a store hiccup
                await self._addresses.take(vip, OWNER)
        elif action == "release":
            why = "a preferred node is back" if eligible else "this node may not hold it"
            await self._release(why)

    async def _campaign(self, vip: VipSpec, lease: int) -> None:
        hold = await self._store.try_lock(GATEWAY_VIP_LOCK, self.me, lease)
        if hold is None:
            return
        self.hold = hold
        if not await self._addresses.take(vip, OWNER):
            await self._release("cannot add the address")

    async def _release(self, reason: str) -> None:
        if self.vip is not None:
            await self._addresses.drop(self.vip.ip, reason)
        hold, self.hold = self.hold, None
        if hold is not None:
            await self._store.unlock(hold)

    async def _publish(self, eligible: bool, lease: int) -> None:
        """Say (under our lease) whether this node may hold the VIP; only on change."""
        state = (eligible, lease)
        if state == self._published:
            return
        key = vip_candidate_key(self.me)
        if eligible and lease:
            await self._store.put(key, b"1", lease)
        else:
            await self._store.delete(key)
        self._published = state
