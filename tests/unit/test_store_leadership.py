"""Where etcd's raft leader should be: away from the nodes running actives."""

from __future__ import annotations

from ninefold.decide.store_leader import raft_leader_target
from ninefold.state.records import InstanceStatus


def active(node: str, instance: str = "q-0") -> InstanceStatus:
    return InstanceStatus(
        service="q", instance=instance, node=node, address="127.0.0.1", role="active"
    )


MEMBERS = ["n1", "n2", "n3"]


def test_moves_off_a_node_with_an_active_to_one_without() -> None:
    assert raft_leader_target("n1", MEMBERS, MEMBERS, [active("n1")]) == "n2"
    assert raft_leader_target("n1", MEMBERS, MEMBERS, [active("n1"), active("n2", "r-0")]) == "n3"


def test_stays_where_no_active_runs() -> None:
    assert raft_leader_target("n3", MEMBERS, MEMBERS, [active("n1")]) is None


def test_never_moves_to_a_dead_node_or_a_busier_one() -> None:
    statuses = [active("n1"), active("n2", "r-0"), active("n3", "s-0")]
    assert raft_leader_target("n1", MEMBERS, MEMBERS, statuses) is None
    assert (
        raft_leader_target("n1", MEMBERS, ["n1", "n2"], [active("n1"), active("n2", "r-0")]) is None
    )


def test_standbys_do_not_count() -> None:
    standby = active("n2").model_copy(update={"role": "standby"})
    assert raft_leader_target("n1", MEMBERS, MEMBERS, [active("n1"), standby]) == "n2"


def test_a_living_witness_takes_raft_leadership_from_any_worker() -> None:
    # even from a worker that runs nothing now: it may run an active next
    assert raft_leader_target("n1", MEMBERS, MEMBERS, [], witnesses=["n3"]) == "n3"
    assert raft_leader_target("n1", MEMBERS, MEMBERS, [active("n1")], witnesses=["n3"]) == "n3"


def test_a_witness_keeps_it_and_a_dead_witness_is_no_target() -> None:
    assert raft_leader_target("n3", MEMBERS, MEMBERS, [active("n1")], witnesses=["n3"]) is None
    alive = ["n1", "n2"]
    assert raft_leader_target("n1", MEMBERS, alive, [active("n1")], witnesses=["n3"]) == "n2"
    assert raft_leader_target("n2", MEMBERS, alive, [active("n1")], witnesses=["n3"]) is None
