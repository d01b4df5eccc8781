"""decide/dead_node.py: when a refused API port proves a node's agent dead."""

from __future__ import annotations

import pytest

from ninefold.decide.dead_node import VIP_CHECK_SLACK, judge

LIFETIME = 1.0


def test_a_refusal_under_the_lease_that_was_accepted_proves_it_dead() -> None:
    verdict = judge("refused", True, None, now=10.0, holds_vip=False, vip_lifetime=LIFETIME)
    assert verdict.revoke
    assert "agent is gone" in verdict.why


@pytest.mark.parametrize("probe", ["accepted", "no-answer"])
def test_a_frozen_or_unreachable_node_is_never_dead(probe: str) -> None:
    # frozen: its kernel still accepts; partitioned or powered off: no answer
    verdict = judge(probe, True, 5.0, now=60.0, holds_vip=False, vip_lifetime=LIFETIME)  # type: ignore[arg-type]
    assert not verdict.revoke
    assert verdict.retry_at is None


def test_a_refusal_without_an_earlier_acceptance_proves_nothing() -> None:
    verdict = judge("refused", False, 1.0, now=60.0, holds_vip=False, vip_lifetime=LIFETIME)
    assert not verdict.revoke
    assert "never answered" in verdict.why


def test_a_vip_holder_waits_out_the_address_lifetime_from_the_first_refusal() -> None:
    first = judge("refused", True, None, now=10.0, holds_vip=True, vip_lifetime=LIFETIME)
    assert not first.revoke
    assert first.retry_at == pytest.approx(10.0 + LIFETIME + VIP_CHECK_SLACK)
    early = judge("refused", True, 10.0, now=11.5, holds_vip=True, vip_lifetime=LIFETIME)
    assert not early.revoke
    assert early.retry_at == first.retry_at
    late = judge("refused", True, 10.0, now=12.0, holds_vip=True, vip_lifetime=LIFETIME)
    assert late.revoke
