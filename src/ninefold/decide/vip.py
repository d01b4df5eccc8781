"""Who holds a lock-held floating address (the gateway VIP): one node's next
move, from the lock's holder, the eligible candidates and their preference;
and how long a holder that lets go keeps answering stale ARP caches."""

from __future__ import annotations

from typing import Literal

from ninefold import defaults

VipAction = Literal["campaign", "hold", "release", "wait"]


def vip_step(
    *,
    me: str,
    holder: str | None,
    eligible: bool,
    candidates: set[str],
    rank: dict[str, int],
    preempt: bool,
    free_for: float,
    grace: float = defaults.VIP_PREFER_GRACE,
) -> VipAction:
    """What this node does about one lock-held VIP now.

    `holder` is the node holding the VIP's lock (None when free); `candidates`
    the nodes currently eligible to hold it (their gateway answers), `rank`
    their preference (lower first). A free VIP goes to the most preferred
    eligible node; the others wait `grace` seconds for it before campaigning
    themselves. With `preempt`, a holder gives the VIP up as soon as a more
    preferred node is eligible; without, it keeps it until it fails."""
    mine = rank.get(me, len(rank))
    better = any(rank.get(c, len(rank)) < mine for c in candidates if c != me)
    if holder == me:
        if not eligible:
            return "release"
        if preempt and better:
            return "release"
        return "hold"
    if holder is not None or not eligible:
        return "wait"
    if better and free_for < grace:
        return "wait"
    return "campaign"


HANDOVER_CAP = 5.0
"""Seconds, beyond the announcements, the window lasts at most (enforced by
the kernel): a new holder slower than that to take the VIP (a store stalled
for seconds) finds clients as without a window."""

HANDOVER_QUIESCE = 0.5
"""Seconds the old holder keeps the address after opening its window: new
connections are then taken through the window's rule, which goes on
delivering them once the address is gone, while requests on connections
made before it (which the address's removal cuts) end. Seen: a request
in flight for 170 ms at the removal on a loaded machine, lost without it."""

HANDOVER_SETTLE = 0.5
"""Seconds, beyond its announcements, the new holder must have held the VIP
before the old one closes its window early."""


def handover_window(
    *,
    planned: bool,
    gateway_healthy: bool,
    leased: bool,
    garp_count: int,
    garp_interval: float,
) -> float:
    """Seconds at most the gateway VIP's old holder keeps accepting the VIP's
    traffic after it took the address off (0: not at all).

    Between the old holder removing the address and the new one announcing
    it (20-40 ms in the lab, a second or more on a loaded machine), clients'
    ARP caches still name the old holder: a SYN sent there was dropped and
    resent only 1 s later, failing a client with a shorter timeout. Accepting
    it instead (see `ninefold.vip.accept_stale`) leaves no failed request.

    Only when it is safe and useful: the move is planned (drain, preemption),
    this node's gateway answers, and its lease is live. Not when the agent
    stops (its gateway goes too, and a refused connection fails where a
    dropped SYN is retried), nor for a service VIP, which follows an active
    instance: no node but its holder may answer for it, ever. The gateway is a
    stateless proxy to the same backends from every node, so two gateways
    answering for a moment is harmless; the address itself stays on one node
    (only its holder answers ARP for it). The window is closed early once the
    new holder has announced the VIP (`handover_over`)."""
    if not (planned and gateway_healthy and leased):
        return 0.0
    return garp_count * garp_interval + HANDOVER_CAP


def handover_over(
    *, held_elsewhere_for: float | None, garp_count: int, garp_interval: float
) -> bool:
    """Whether an open handover window can close: another node has held the
    VIP (`held_elsewhere_for` seconds; None: no other node holds it) through
    its gratuitous ARPs and a little more, so clients that heard one of them
    have moved. One that heard none keeps the old holder's MAC until its ARP
    entry goes stale and is probed again, as without a window."""
    if held_elsewhere_for is None:
        return False
    return held_elsewhere_for >= garp_count * garp_interval + HANDOVER_SETTLE
