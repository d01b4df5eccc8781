"""The gateway's VIP: held by one node whose gateway answers (keepalived's job).

Every node whose own gateway passes its check (keepalived's track_script) and
that is not drained says so under its lease (`vipcand/gateway/<node>`); the
VIP follows a lock in the store, taken in order of `prefer`. The holder drops
the address before it unlocks, and the lease guards the rest: an agent whose
lease is at risk drops every address at once, and one that died loses it
through the kernel lifetime (see `ninefold.vip`).

A planned move (drain, preemption) is a handover. The holder first has the
kernel deliver to its own gateway the new connections to the VIP that reach
it (`ninefold.vip.accept_stale`), waits 0.5 s for requests on older
connections to end, then takes the address off and unlocks. Its gateway
still takes what clients with a stale ARP cache send to its MAC until the new
holder has announced the VIP (1.5 s after it took it; at most 6 s, a limit
the kernel enforces: `decide.vip.handover_window`). The address itself is
never on two nodes, and only its holder answers ARP for it. The new holder,
for as long, passes packets of connections it does not know on to the old
one (`ninefold.vip.bounce_unknown`) rather than resetting them. Without this, a
SYN that reached the old holder in the 20-40 ms before the new one announced
the address was dropped and resent 1 s later. Service VIPs never do this.
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
from ninefold.decide.vip import HANDOVER_QUIESCE, handover_over, handover_window, vip_step
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
from ninefold.vip import HandoverRules, VipError

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
        handover: HandoverRules | None = None,
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
        self._handover = handover or HandoverRules(node.name)
        self._handover_until = 0.0
        """When the last handover window ends (monotonic); 0: none installed."""
        self._elsewhere_since: float | None = None
        """Since when another node holds the VIP, while a window is open."""
        self._seen_holder: tuple[str, str] | None = None
        """The last other node seen holding the VIP, and its address."""

    @property
    def me(self) -> str:
        return self._node.name

    def _on_check(self, state: str) -> None:
        log.info("gateway check: %s", state)
        self._signal.poke()

    def poke(self) -> None:
        self._signal.poke()

    async def run(self) -> None:
        await self._end_handover()  # a window left by an agent that died in it
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
                await self._end_handover()

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
        healthy = bool(lease) and not self._stopping and self.check.state == "healthy"
        drained = healthy and await self._store.get(drain_key(self.me)) is not None
        eligible = healthy and not drained and await self._addresses.can_hold(vip)
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
        if current is not None and current.holder != self.me:
            node = next((n for n in spec.nodes if n.name == current.holder), None)
            self._seen_holder = (node.name, node.address) if node is not None else None
        if self._handover_until:
            await self._close_handover(vip, holder)
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
            if eligible:
                why = "a preferred node is back"
            else:
                why = "drained" if drained else "this node may not hold it"
            await self._release(why, planned=eligible or drained)

    async def _campaign(self, vip: VipSpec, lease: int) -> None:
        hold = await self._store.try_lock(GATEWAY_VIP_LOCK, self.me, lease)
        if hold is None:
            return
        self.hold = hold
        if self._handover_until:
            await self._end_handover()  # ours again: no window of our own needed
        if self._seen_holder is not None:
            # Before the address: clients move here with its announcement.
            await self._bounce(vip, *self._seen_holder)
        if not await self._addresses.take(vip, OWNER):
            await self._release("cannot add the address")

    async def _bounce(self, vip: VipSpec, previous: str, address: str) -> None:
        """Just took the VIP from `previous`: if that was a planned move (it is
        drained), pass packets of its connections back to it for the length
        of its window (`ninefold.vip.bounce_unknown`); not after a failure,
        where a reset tells clients at once what a dead node would not."""
        try:
            if await self._store.get(drain_key(previous)) is None:
                return
            window = handover_window(
                planned=True,
                gateway_healthy=True,
                leased=True,
                garp_count=vip.garp_count,
                garp_interval=vip.garp_interval,
            )
            await self._handover.bounce(vip.address, vip.interface, address, window)
        except (VipError, ValueError, StoreError) as exc:
            log.warning(
                "vip %s: packets of %s's connections not passed back: %s", vip.ip, previous, exc
            )

    async def _release(self, reason: str, planned: bool = False) -> None:
        if self.vip is not None and self._addresses.holds(self.vip.ip):
            reason = await self._hand_over(self.vip, reason, planned)
        if self.vip is not None:
            await self._addresses.drop(self.vip.ip, reason)
        hold, self.hold = self.hold, None
        if hold is not None:
            await self._store.unlock(hold)

    async def _hand_over(self, vip: VipSpec, reason: str, planned: bool) -> str:
        """Open the handover window, when it is called for, before the address
        goes; the drop's reason, saying so. A window that cannot be opened
        (no nftables, say) leaves a plain move: the address goes anyway."""
        window = handover_window(
            planned=planned,
            gateway_healthy=self.check.state == "healthy" and not self._stopping,
            leased=bool(self._lease.lease),
            garp_count=vip.garp_count,
            garp_interval=vip.garp_interval,
        )
        if window <= 0:
            return reason
        try:
            await self._handover.open(vip.ip, self._node.address, window)
        except (VipError, ValueError) as exc:
            log.warning("vip %s: no handover window: %s", vip.ip, exc)
            return reason
        self._handover_until = time.monotonic() + window
        self._elsewhere_since = None
        await asyncio.sleep(HANDOVER_QUIESCE)  # see there
        return f"{reason}; stale ARP caches answered here until the new holder announces it"

    async def _close_handover(self, vip: VipSpec, holder: str | None) -> None:
        """End the open window once the new holder has announced the VIP
        (or its time is up: the kernel has dropped it already)."""
        now = time.monotonic()
        if holder is None or holder == self.me:
            self._elsewhere_since = None
        elif self._elsewhere_since is None:
            self._elsewhere_since = now
        elsewhere = now - self._elsewhere_since if self._elsewhere_since is not None else None
        over = handover_over(
            held_elsewhere_for=elsewhere, garp_count=vip.garp_count, garp_interval=vip.garp_interval
        )
        if over or now >= self._handover_until:
            await self._end_handover()

    async def _end_handover(self) -> None:
        """Remove the handover table, if there may be one. Its element expires
        in the kernel by itself; this only tidies (and ends a window early
        when this node takes the VIP back)."""
        try:
            await self._handover.close()
        except VipError as exc:
            if self._handover_until:
                log.warning("vip: could not remove the handover rules: %s", exc)
        self._handover_until = 0.0
        self._elsewhere_since = None

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
