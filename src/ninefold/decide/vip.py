"""Who holds a lock-held floating address (the gateway VIP): one node's next
move, from the lock's holder, the eligible candidates and their preference."""

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
