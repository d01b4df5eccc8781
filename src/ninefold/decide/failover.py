"""The active-passive decision: what one instance of an active-passive service
does now, from a snapshot of what it knows.

`InstanceRunner` (agent/instance.py) reads the store (the lock's holder, a
pending switchover) before it takes its role lock, so a fence never waits
behind a store that stopped answering; then, under the role lock, it builds an
`ApView` and carries out the `ApAction` this module returns. The rules:

- A frozen (fenced) active resumes only when its lease is back and the lock
  still carries its own fencing token; with a lease but another token (or no
  lock) the fenced process is killed. Without a lease it waits.
- An instance whose process gave up waits for the leader to place it
  elsewhere; a hot standby fenced earlier restarts its process once the lease
  is back.
- An active gives up the role when a switchover names it as the old active
  (and not as the target), when the lock is no longer its own (lease
  replaced), and when its process failed or its health check says unhealthy.
- A standby whose copy of a replicated volume is older than another living
  standby's leaves a free lock to that one for `fresher_grace` seconds, then
  campaigns all the same (the fresher one may not be able to).
- A standby campaigns only with a lease, when eligible (cold standbys always
  are; hot ones when running and healthy or unchecked), when a switchover does
  not exclude it, and when the lock is free or still its own (same holder and
  same lease: a store hiccup made it fence, and nobody else can have held the
  lock since). The lock is taken by compare-and-set; losing that race is
  harmless.

Never two actives: only the lock's holder is active, a holder that may lose
its lease fences first (`fence` is the membership's job, before the lease can
expire), and a resume checks the token. `tests/unit/test_decide_failover.py`
tries every interleaving of two nodes' steps over a shared lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LockView:
    """The active lock as read from the store."""

    holder: str
    lease: int
    token: int


@dataclass(frozen=True)
class Switchover:
    """A pending switchover: from the current active (`node/instance`), to a node or anyone."""

    source: str | None
    target: str | None


@dataclass(frozen=True)
class ApView:
    me: str
    """This instance as the lock's holder: `node/instance`."""
    node: str
    role: Literal["active", "standby"]
    frozen: bool
    """Fenced: the process group is stopped (SIGSTOP) and waits for the verdict."""
    gave_up: bool
    """The process failed past its restart limit on this node."""
    standby: Literal["hot", "cold"]
    has_process: bool
    process_failed: bool
    running: bool
    health: str | None
    """`healthy`, `unhealthy`, `starting`; None without a health check."""
    lease: int
    """This node's lease, 0 while it is at risk or lost."""
    my_token: int | None
    """The fencing token of the lock this instance holds, if it does."""
    lock: LockView | None
    """The lock's holder as read for this step (None: free)."""
    lock_known: bool
    """The lock was read for this step (the runner reads it only when it may
    matter); a decision that needs it and lacks it waits for the next step."""
    read_lease: int
    """This node's lease when the lock was read. The read counts only under
    the same lease: the lock lives under a lease, so it cannot have changed
    hands while that lease lasted, but a read from before the lease was
    lost and replaced says nothing about now."""
    switchover: Switchover | None
    read_as_active: bool = True
    """The store was read while this instance was active (an active that was
    promoted after the reads is checked at the next step)."""
    fresher_copy_elsewhere: bool = False
    """A living standby holds a fresher copy of a replicated volume."""
    free_for: float = 0.0
    """Seconds since this instance first saw the lock free."""
    fresher_grace: float = 1.0
    """How long a standby with an older copy leaves a free lock to the fresher one."""


ApActionKind = Literal[
    "wait", "resume", "kill-fenced", "restart-standby", "demote", "campaign", "stand-by"
]


@dataclass(frozen=True)
class ApAction:
    kind: ApActionKind
    reason: str = ""
    release: bool = False
    """demote: also release the lock (others may take it at once)."""
    holder: str | None = None
    """stand-by: who holds the lock (for the failover event's `old_active`)."""


WAIT = ApAction("wait")


def eligible(view: ApView) -> bool:
    """May this instance become active now?"""
    if view.standby == "cold":
        return True
    if not view.has_process or not view.running:
        return False
    return view.health is None or view.health == "healthy"


def may_take_over(view: ApView) -> bool:
    """Does a pending switchover let this standby take over?"""
    request = view.switchover
    if request is None:
        return True
    if request.target:
        return request.target == view.node
    return request.source != view.me


def needs_lock(view: ApView) -> bool:
    """Whether `ap_step` may need the lock's holder for this view: the runner
    reads it from the store only then (one request less per step otherwise)."""
    if not view.lease:
        return False
    if view.frozen or view.role == "active":
        return True
    if view.gave_up or (not view.has_process and view.standby == "hot"):
        return False
    return eligible(view) and may_take_over(view)


def lock_current(view: ApView) -> bool:
    """Whether the lock as read still tells the truth: read under this lease."""
    return view.lock_known and view.lease != 0 and view.read_lease == view.lease


def ap_step(view: ApView) -> ApAction:
    """What this instance does now; see the module's rules."""
    if view.frozen:
        if not lock_current(view):
            return WAIT
        still_mine = view.lock is not None and view.lock.token == view.my_token
        if view.my_token is not None and still_mine:
            return ApAction("resume", "lease renewed")
        return ApAction("kill-fenced", "lease lost: killed")
    if view.gave_up and view.role != "active":
        return WAIT  # the leader places it elsewhere
    if view.role == "standby" and not view.has_process and view.standby == "hot":
        return ApAction("restart-standby") if view.lease else WAIT
    if view.role == "active":
        return _as_active(view)
    if not view.lease or not eligible(view) or not may_take_over(view):
        return WAIT
    if not lock_current(view):
        return WAIT
    lock = view.lock
    if lock is not None and (lock.holder, lock.lease) != (view.me, view.lease):
        return ApAction("stand-by", holder=lock.holder)
    if lock is None and view.fresher_copy_elsewhere and view.free_for < view.fresher_grace:
        return WAIT  # the standby with the freshest data goes first; if it cannot, we do
    return ApAction("campaign")


def _as_active(view: ApView) -> ApAction:
    if not view.read_as_active or not lock_current(view):
        return WAIT  # became active after this step's reads: the next step checks
    request = view.switchover
    if request is not None and request.source == view.me and request.target != view.node:
        return ApAction("demote", "switchover", release=True)
    if view.lock is None or view.lock.token != view.my_token:
        return ApAction("demote", "lost the active lock", release=False)
    unhealthy = view.health == "unhealthy"
    if view.has_process and (view.process_failed or unhealthy):
        return ApAction("demote", "unhealthy" if unhealthy else "process failed", release=True)
    return WAIT
