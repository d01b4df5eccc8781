"""When this node must fence itself: its lease is at risk.

The store expires a lease no earlier than its TTL after it *received* the
last renewal, which is after this agent *sent* it. Counted from the send time
of the last acknowledged renewal, the agent knows a lower bound of when
another node can see the lease gone; it fences (demotes its actives, drops
its VIPs) once `fence_after` of that has passed, with time to spare before
the bound (defaults.SELF_FENCE_AFTER). agent/membership.py keeps the clock,
agent/instance.py `fence` and agent/addresses.py do the fencing.
"""

from __future__ import annotations


def at_risk(now: float, last_ack_sent: float, fence_after: float) -> bool:
    """Whether the lease may be about to expire: fence now."""
    return now - last_ack_sent > fence_after


def remaining(now: float, last_ack_sent: float, granted: float) -> float:
    """Seconds until the store could expire the lease, at the earliest."""
    return last_ack_sent + granted - now
