"""Where etcd's raft leadership should be: on a witness when the cluster has
one (it runs no actives and holds no VIP, ever), else on the store member whose
node runs the fewest actives and VIPs (agent/store_leadership.py says why and
moves it)."""

from __future__ import annotations

from collections.abc import Iterable

from ninefold.state.records import InstanceStatus


def raft_leader_target(
    raft_leader: str,
    members: Iterable[str],
    alive: Iterable[str],
    statuses: Iterable[InstanceStatus],
    vip_holders: Iterable[str] = (),
    witnesses: Iterable[str] = (),
) -> str | None:
    """The member raft leadership should move to, or None to leave it."""
    members = list(members)
    alive_set = set(alive)
    witness_set = set(witnesses)
    if raft_leader in witness_set:
        return None
    # A worker that runs nothing now may run an active a moment later (a
    # failover, a placement): a living witness is always the better place.
    living_witnesses = sorted(m for m in members if m in witness_set and m in alive_set)
    if living_witnesses:
        return living_witnesses[0]
    actives: dict[str, int] = {}
    for status in statuses:
        if status.role == "active":
            actives[status.node] = actives.get(status.node, 0) + 1
    for node in vip_holders:
        actives[node] = actives.get(node, 0) + 1
    here = actives.get(raft_leader, 0)
    if here == 0:
        return None
    candidates = sorted(
        (actives.get(m, 0), m) for m in members if m in alive_set and m != raft_leader
    )
    if not candidates or candidates[0][0] >= here:
        return None
    return candidates[0][1]
