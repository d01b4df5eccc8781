"""The active-passive decision (decide/failover.py): its rules case by case,
and never two actives under any interleaving of two nodes' steps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninefold.decide.failover import ApAction, ApView, LockView, Switchover, ap_step

LEASE = 7
ME = "n1/db-0"

STANDBY = ApView(
    me=ME,
    node="n1",
    role="standby",
    frozen=False,
    gave_up=False,
    standby="hot",
    has_process=True,
    process_failed=False,
    running=True,
    health="healthy",
    lease=LEASE,
    my_token=None,
    lock=None,
    lock_known=True,
    read_lease=LEASE,
    switchover=None,
)
ACTIVE = replace(STANDBY, role="active", my_token=40, lock=LockView(ME, LEASE, 40))
FROZEN = replace(ACTIVE, role="standby", frozen=True)
OTHER = LockView("n2/db-1", 9, 41)


@pytest.mark.parametrize(
    ("case", "view", "action"),
    [
        # A fenced active: back when its lease and its own token are.
        ("frozen, lease at risk", replace(FROZEN, lease=0), ApAction("wait")),
        ("frozen, lease back, lock ours", FROZEN, ApAction("resume", "lease renewed")),
        (
            "frozen, lease back, lock gone",
            replace(FROZEN, lock=None),
            ApAction("kill-fenced", "lease lost: killed"),
        ),
        (
            "frozen, new lease, another holder",
            replace(FROZEN, lease=8, read_lease=8, lock=OTHER),
            ApAction("kill-fenced", "lease lost: killed"),
        ),
        ("frozen, lock read under the old lease", replace(FROZEN, lease=8), ApAction("wait")),
        ("frozen, lock not read", replace(FROZEN, lock_known=False), ApAction("wait")),
        # Standbys.
        ("gave up", replace(STANDBY, gave_up=True), ApAction("wait")),
        (
            "fenced hot standby, lease back",
            replace(STANDBY, has_process=False, running=False),
            ApAction("restart-standby"),
        ),
        (
            "fenced hot standby, no lease",
            replace(STANDBY, has_process=False, running=False, lease=0),
            ApAction("wait"),
        ),
        ("lock free", STANDBY, ApAction("campaign")),
        (
            "lock ours from before a hiccup",
            replace(STANDBY, lock=LockView(ME, LEASE, 40)),
            ApAction("campaign"),
        ),
        ("lock held", replace(STANDBY, lock=OTHER), ApAction("stand-by", holder="n2/db-1")),
        (
            "lock ours under an old lease",
            replace(STANDBY, lock=LockView(ME, 3, 40)),
            ApAction("stand-by", holder=ME),
        ),
        ("no lease", replace(STANDBY, lease=0), ApAction("wait")),
        ("not healthy yet", replace(STANDBY, health="starting"), ApAction("wait")),
        ("unchecked and running", replace(STANDBY, health=None), ApAction("campaign")),
        ("not running", replace(STANDBY, running=False), ApAction("wait")),
        (
            "cold standby, nothing running",
            replace(STANDBY, standby="cold", has_process=False, running=False, health=None),
            ApAction("campaign"),
        ),
        ("lock not read", replace(STANDBY, lock_known=False), ApAction("wait")),
        (
            "switchover to another node",
            replace(STANDBY, switchover=Switchover("n2/db-1", "n3")),
            ApAction("wait"),
        ),
        (
            "switchover to this node",
            replace(STANDBY, switchover=Switchover("n2/db-1", "n1")),
            ApAction("campaign"),
        ),
        (
            "switchover to anyone, from us",
            replace(STANDBY, switchover=Switchover(ME, None)),
            ApAction("wait"),
        ),
        # Actives.
        ("active, all well", ACTIVE, ApAction("wait")),
        (
            "active, switchover away",
            replace(ACTIVE, switchover=Switchover(ME, "n2")),
            ApAction("demote", "switchover", release=True),
        ),
        (
            "active, switchover to its own node",
            replace(ACTIVE, switchover=Switchover(ME, "n1")),
            ApAction("wait"),
        ),
        (
            "active, lock gone",
            replace(ACTIVE, lock=None),
            ApAction("demote", "lost the active lock", release=False),
        ),
        (
            "active, another token",
            replace(ACTIVE, lock=OTHER),
            ApAction("demote", "lost the active lock", release=False),
        ),
        (
            "active, unhealthy",
            replace(ACTIVE, health="unhealthy"),
            ApAction("demote", "unhealthy", release=True),
        ),
        (
            "active, process failed",
            replace(ACTIVE, process_failed=True),
            ApAction("demote", "process failed", release=True),
        ),
        ("active since the reads", replace(ACTIVE, read_as_active=False), ApAction("wait")),
        ("active, gave up, still checked", replace(ACTIVE, gave_up=True), ApAction("wait")),
    ],
)
def test_ap_step(case: str, view: ApView, action: ApAction) -> None:
    assert ap_step(view) == action, case


# --- two nodes over one lock ------------------------------------------------------------


@dataclass
class Store:
    """The store's side: the active lock (under a lease) and the leases."""

    lock: LockView | None = None
    revision: int = 100
    leases: dict[str, int] = field(default_factory=dict)
    """Node -> its lease in the store (0: expired)."""

    def try_lock(self, holder: str, lease: int) -> int | None:
        """The store's try_lock: create if absent; the same holder and lease
        get their hold back."""
        if self.lock is None:
            self.revision += 1
            self.lock = LockView(holder, lease, self.revision)
        if (self.lock.holder, self.lock.lease) == (holder, lease):
            return self.lock.token
        return None


@dataclass
class Node:
    """One agent's side, as InstanceRunner keeps it."""

    name: str
    lease: int
    role: str = "standby"
    frozen: bool = False
    has_process: bool = True
    my_token: int | None = None
    read: tuple[LockView | None, int, bool] | None = None
    """What the last read saw: (lock, lease then, active then)."""

    @property
    def me(self) -> str:
        return f"{self.name}/db"

    def view(self) -> ApView:
        lock, read_lease, read_as_active = self.read or (None, 0, False)
        return ApView(
            me=self.me, node=self.name, role=self.role,  # type: ignore[arg-type]
            frozen=self.frozen, gave_up=False, standby="hot",
            has_process=self.has_process, process_failed=False,
            running=self.has_process, health="healthy" if self.has_process else None,
            lease=self.lease, my_token=self.my_token, lock=lock,
            lock_known=self.read is not None, read_lease=read_lease,
            switchover=None, read_as_active=read_as_active,
        )  # fmt: skip


def apply(node: Node, store: Store, action: ApAction) -> None:
    """What InstanceRunner does for each action (the store part included)."""
    if action.kind == "resume":
        node.frozen, node.role = False, "active"
    elif action.kind == "kill-fenced":
        node.frozen, node.has_process, node.my_token = False, False, None
    elif action.kind == "restart-standby":
        node.has_process = True
    elif action.kind == "demote":
        if action.release and store.lock is not None and store.lock.token == node.my_token:
            store.lock = None
        node.role, node.has_process, node.my_token = "standby", False, None
    elif action.kind == "campaign":
        token = store.try_lock(node.me, node.lease)
        if token is not None:
            node.role, node.my_token = "active", token


OPS = ("read", "decide", "at-risk", "renewed", "expire", "new-lease")


def step(store: Store, nodes: dict[str, Node], name: str, op: str) -> None:
    node = nodes[name]
    if op == "read":  # before the role lock: the store as it is now
        node.read = (store.lock, node.lease, node.role == "active" and not node.frozen)
    elif op == "decide":  # under the role lock, with what was read
        apply(node, store, ap_step(node.view()))
        node.read = None
    elif op == "at-risk" and node.lease:
        # LeaseKeeper's on_at_risk: fence (freeze an active) before the lease can expire.
        node.lease = 0
        if node.role == "active":
            node.frozen, node.role = True, "standby"
    elif op == "renewed" and not node.lease and store.leases[name]:
        node.lease = store.leases[name]  # the same lease survived
    elif op == "expire" and not node.lease and store.leases[name]:
        # Only a lease the agent stopped renewing expires, and it fenced first.
        if store.lock is not None and store.lock.lease == store.leases[name]:
            store.lock = None
        store.leases[name] = 0
    elif op == "new-lease" and not node.lease and not store.leases[name]:
        store.revision += 1
        store.leases[name] = node.lease = store.revision


def check(store: Store, nodes: dict[str, Node]) -> None:
    actives = [n for n in nodes.values() if n.role == "active" and not n.frozen]
    assert len(actives) <= 1, [n.name for n in actives]
    for node in actives:  # an active's lock is its own, in the store, now
        assert store.lock is not None
        assert (store.lock.holder, store.lock.token) == (node.me, node.my_token)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from(OPS)), max_size=80))
def test_no_interleaving_of_two_nodes_yields_two_actives(
    schedule: list[tuple[str, str]],
) -> None:
    store = Store(leases={"n1": 1, "n2": 2})
    nodes = {"n1": Node("n1", 1), "n2": Node("n2", 2)}
    for name, op in schedule:
        step(store, nodes, name, op)
        check(store, nodes)


def test_the_model_does_fail_over() -> None:
    """The interleaving test is not vacuous: n1 becomes active, loses its
    lease, and n2 takes over with a higher token."""
    store = Store(leases={"n1": 1, "n2": 2})
    nodes = {"n1": Node("n1", 1), "n2": Node("n2", 2)}
    for name, op in [("n1", "read"), ("n1", "decide"), ("n1", "at-risk"), ("n1", "expire"),
                     ("n2", "read"), ("n2", "decide")]:  # fmt: skip
        step(store, nodes, name, op)
        check(store, nodes)
    assert nodes["n2"].role == "active" and nodes["n1"].frozen
    assert store.lock == LockView("n2/db", 2, 102)


def test_a_read_from_before_a_lost_lease_does_not_resume() -> None:
    """n1 reads its own lock, is fenced, its lease expires, n2 takes over, n1
    gets a new lease: the old read must not bring n1 back as active."""
    store = Store(leases={"n1": 1, "n2": 2})
    nodes = {"n1": Node("n1", 1), "n2": Node("n2", 2)}
    for name, op in [("n1", "read"), ("n1", "decide"), ("n1", "read"), ("n1", "at-risk"),
                     ("n1", "expire"), ("n2", "read"), ("n2", "decide"), ("n1", "new-lease"),
                     ("n1", "decide")]:  # fmt: skip
        step(store, nodes, name, op)
        check(store, nodes)
    assert nodes["n1"].role == "standby"


def _key(store: Store, nodes: dict[str, Node]) -> tuple[object, ...]:
    return (
        store.lock, store.revision, tuple(sorted(store.leases.items())),
        *((n.lease, n.role, n.frozen, n.has_process, n.my_token, n.read) for n in nodes.values()),
    )  # fmt: skip


def test_every_interleaving_up_to_depth_14_keeps_one_active() -> None:
    """All schedules of two nodes' operations, 14 deep, explored breadth-first
    (states seen once): the random test above samples, this one does not miss."""
    import copy

    start = (Store(leases={"n1": 1, "n2": 2}), {"n1": Node("n1", 1), "n2": Node("n2", 2)})
    frontier = [start]
    seen = {_key(*start)}
    took_over = False
    for _depth in range(14):
        following = []
        for store, nodes in frontier:
            for name in nodes:
                for op in OPS:
                    store2, nodes2 = copy.deepcopy((store, nodes))
                    step(store2, nodes2, name, op)
                    check(store2, nodes2)
                    key = _key(store2, nodes2)
                    if key not in seen:
                        seen.add(key)
                        following.append((store2, nodes2))
                        took_over |= (
                            store2.lock is not None
                            and store2.lock.token > 101
                            and any(n.role == "active" for n in nodes2.values())
                        )
        frontier = following
    assert took_over, "no failover was explored"
    assert len(seen) > 1000


VIEWS = st.builds(
    ApView,
    me=st.just(ME),
    node=st.just("n1"),
    role=st.sampled_from(["active", "standby"]),
    frozen=st.booleans(),
    gave_up=st.booleans(),
    standby=st.sampled_from(["hot", "cold"]),
    has_process=st.booleans(),
    process_failed=st.booleans(),
    running=st.booleans(),
    health=st.sampled_from([None, "healthy", "unhealthy", "starting"]),
    lease=st.sampled_from([0, LEASE]),
    my_token=st.sampled_from([None, 40]),
    lock=st.sampled_from([None, LockView(ME, LEASE, 40), OTHER]),
    lock_known=st.just(True),
    read_lease=st.just(LEASE),
    switchover=st.sampled_from([None, Switchover(ME, None), Switchover("n2/db-1", "n1")]),
    read_as_active=st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(VIEWS, st.sampled_from([None, LockView(ME, LEASE, 40), OTHER]))
def test_when_the_lock_is_not_needed_it_changes_nothing(
    view: ApView, other: LockView | None
) -> None:
    """The runner skips the store read when needs_lock says so: then no lock
    value (and not knowing it) may change the decision."""
    from ninefold.decide.failover import needs_lock

    if needs_lock(view):
        return
    decided = ap_step(view)
    assert ap_step(replace(view, lock=other)) == decided
    assert ap_step(replace(view, lock=None, lock_known=False)) == decided


def test_a_standby_with_an_older_copy_leaves_the_lock_to_the_fresher_one_for_a_while() -> None:
    older = replace(STANDBY, fresher_copy_elsewhere=True, free_for=0.2, fresher_grace=1.0)
    assert ap_step(older) == ApAction("wait")
    assert ap_step(replace(older, free_for=1.5)) == ApAction("campaign")
    assert ap_step(replace(older, fresher_copy_elsewhere=False)) == ApAction("campaign")
