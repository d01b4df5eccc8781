"""Restart decisions with explicit times."""

from __future__ import annotations

import pytest

from ninefold.supervisor.restart import RestartDecision, RestartPolicy, RestartTracker


def policy(**kw: float) -> RestartPolicy:
    values = {"backoff": 1.0, "backoff_max": 8.0, "limit": 10, "window": 100.0, **kw}
    return RestartPolicy(**values)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_max() -> None:
    tracker = RestartTracker(policy())
    delays = [tracker.record_exit(float(t)).delay for t in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_gives_up_after_limit_restarts_within_window() -> None:
    tracker = RestartTracker(policy(limit=3, window=10.0))
    for t in (0.0, 1.0, 2.0):
        assert tracker.record_exit(t).action == "restart"
    decision = tracker.record_exit(3.0)
    assert decision.action == "give_up"
    assert "3 restarts within 10s" in decision.reason


def test_window_slides() -> None:
    tracker = RestartTracker(policy(limit=2, window=10.0))
    assert tracker.record_exit(0.0).action == "restart"
    assert tracker.record_exit(5.0).action == "restart"
    # the exit at 0 has left the window by 10.5: one restart in it, one more allowed
    assert tracker.record_exit(10.5).action == "restart"
    assert tracker.recent_restarts(10.5) == 2
    assert tracker.record_exit(11.0).action == "give_up"


def test_long_run_resets_backoff_but_not_the_count() -> None:
    tracker = RestartTracker(policy(backoff_max=4.0, limit=5))
    assert tracker.record_exit(1.0, started_at=0.0).delay == 1.0
    assert tracker.record_exit(3.0, started_at=2.0).delay == 2.0
    assert tracker.record_exit(6.0, started_at=5.5).delay == 4.0
    # ran exactly 2 * backoff_max: not yet long enough
    assert tracker.record_exit(18.0, started_at=10.0).delay == 4.0
    # ran longer than 2 * backoff_max: back to the first delay
    assert tracker.record_exit(40.0, started_at=31.0) == RestartDecision("restart", delay=1.0)
    assert tracker.recent_restarts(40.0) == 5


def test_zero_limit_never_restarts() -> None:
    assert RestartTracker(policy(limit=0)).record_exit(0.0).action == "give_up"


def test_reset_forgets() -> None:
    tracker = RestartTracker(policy(limit=1))
    tracker.record_exit(0.0)
    tracker.reset()
    assert tracker.record_exit(1.0) == RestartDecision("restart", delay=1.0)


@pytest.mark.parametrize(
    "kw", [{"backoff": -1.0}, {"backoff": 5.0, "backoff_max": 1.0}, {"window": 0.0}]
)
def test_invalid_policy(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        policy(**kw)
