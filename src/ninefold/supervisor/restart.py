"""When to restart a crashed process, and when to stop trying.

Pure decision logic, no clock and no I/O: the caller passes the times, so the
rules are tested with explicit numbers. This is the first level of ninefold's
two-level healing; giving up hands the instance to the leader, which places it
elsewhere (DESIGN.md section 2).

Rules:

- Every exit is followed by a restart (``restart: always``: a supervised
  service is meant to run forever, so exit code 0 is a crash too).
- The delay starts at ``backoff`` and doubles after each restart, capped at
  ``backoff_max``.
- A run that lasted longer than ``2 * backoff_max`` counts as healthy: the
  delay goes back to ``backoff``. (Only the delay; the restart count in the
  window is not forgiven.)
- More than ``limit`` restarts within the last ``window`` seconds: give up.
  With ``limit=5`` the sixth exit inside the window is the one that gives up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from ninefold import defaults


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff: float = defaults.RESTART_BACKOFF
    """First delay before a restart; doubles each time."""
    backoff_max: float = defaults.RESTART_BACKOFF_MAX
    limit: int = defaults.RESTART_LIMIT
    """Restarts allowed within ``window`` seconds."""
    window: float = defaults.RESTART_WINDOW

    def __post_init__(self) -> None:
        if self.backoff < 0 or self.backoff_max < self.backoff:
            raise ValueError("need 0 <= backoff <= backoff_max")
        if self.limit < 0 or self.window <= 0:
            raise ValueError("need limit >= 0 and window > 0")


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """``action == "restart"`` with ``delay``, or ``"give_up"`` with ``reason``."""

    action: Literal["restart", "give_up"]
    delay: float = 0.0
    reason: str = ""


class RestartTracker:
    """Remembers recent restarts of one process and decides about the next exit."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._restarts: deque[float] = deque()
        self._next_delay = policy.backoff

    @property
    def next_delay(self) -> float:
        return self._next_delay

    def recent_restarts(self, now: float) -> int:
        """Restarts within the window ending at ``now``."""
        self._prune(now)
        return len(self._restarts)

    def record_exit(self, now: float, started_at: float | None = None) -> RestartDecision:
        """Decide what follows an exit at ``now`` of a run started at ``started_at``.

        ``started_at`` None means the run time is unknown (the backoff is kept).
        """
        p = self.policy
        if started_at is not None and now - started_at > 2 * p.backoff_max:
            self._next_delay = p.backoff
        self._prune(now)
        if len(self._restarts) >= p.limit:
            return RestartDecision(
                "give_up",
                reason=f"{len(self._restarts)} restarts within {p.window:g}s (limit {p.limit})",
            )
        delay = self._next_delay
        self._restarts.append(now)
        self._next_delay = min(max(delay * 2, p.backoff), p.backoff_max)
        return RestartDecision("restart", delay=delay)

    def reset(self) -> None:
        """Forget everything (a deliberate restart by an operator)."""
        self._restarts.clear()
        self._next_delay = self.policy.backoff

    def _prune(self, now: float) -> None:
        horizon = now - self.policy.window
        while self._restarts and self._restarts[0] <= horizon:
            self._restarts.popleft()
