"""When a node fences itself (decide/lease.py)."""

from __future__ import annotations

from ninefold import defaults
from ninefold.decide.lease import at_risk, remaining


def test_at_risk_only_past_fence_after_since_the_last_acknowledged_send() -> None:
    fence = defaults.SELF_FENCE_AFTER
    assert not at_risk(now=fence, last_ack_sent=0.0, fence_after=fence)
    assert at_risk(now=fence + 0.01, last_ack_sent=0.0, fence_after=fence)


def test_the_fence_comes_before_anyone_else_can_see_the_lease_gone() -> None:
    """At the moment of fencing, the store still keeps the lease for a while:
    the gap is what the demotion (hooks, VIP drop) has to work in."""
    sent, ttl = 100.0, defaults.LEASE_TTL
    fence_at = sent + defaults.SELF_FENCE_AFTER
    assert remaining(fence_at, sent, ttl) >= 0.5
    assert remaining(sent + ttl, sent, ttl) == 0
