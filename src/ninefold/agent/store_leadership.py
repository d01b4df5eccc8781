"""Keeping etcd's raft leader off the nodes that run actives or hold a VIP.

When the node holding etcd's raft leadership dies, the survivors first elect a
new raft leader, and the new leader extends every lease by its election
timeout: the dead node's lease, and with it the active lock of every service
active there, outlives the node by two seconds or more than usual (measured:
failover 4.3 s instead of 2.2 s; a partitioned VIP holder 5.8 s). So the
leader agent moves raft leadership to the store member whose node runs the
fewest actives and VIPs: losing the node with an active then costs a failover,
not a failover plus a store election. A witness (`role: witness`) runs no
actives and holds no VIP, ever: when the cluster has one, raft leadership goes
there, and losing any worker costs no store election at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from ninefold.agent.journal import EventJournal
from ninefold.decide.store_leader import raft_leader_target
from ninefold.state.records import InstanceStatus
from ninefold.store.base import Store, StoreError

log = logging.getLogger("ninefold.leader")

CHECK_EVERY = 10.0
"""How often the leader looks where the raft leader is (2 small requests),
besides right after the set of nodes running actives changed."""
MOVE_AT_MOST_EVERY = 2.0


class RaftLeaderPlacement:
    def __init__(self, store: Store, journal: EventJournal) -> None:
        self._store = store
        self._journal = journal
        self._last_check = 0.0
        self._last_move = 0.0
        self._actives: tuple[str, ...] = ()

    async def step(
        self,
        alive: Iterable[str],
        statuses: Iterable[InstanceStatus],
        vip_holders: Iterable[str] = (),
        witnesses: Iterable[str] = (),
    ) -> None:
        """Called from the leader loop; does nothing most of the time."""
        now = time.monotonic()
        probe = getattr(self._store, "raft_leader", None)
        statuses = list(statuses)
        vip_holders = tuple(vip_holders)
        actives = tuple(sorted(s.node for s in statuses if s.role == "active")) + vip_holders
        changed = actives != self._actives
        if probe is None or (not changed and now - self._last_check < CHECK_EVERY):
            return
        if now - self._last_move < MOVE_AT_MOST_EVERY:
            return
        self._last_check = now
        self._actives = actives
        try:
            found: tuple[str, Mapping[str, str]] | None = await probe()
            if found is None:
                return
            leader, endpoints = found
            witnesses = tuple(witnesses)
            target = raft_leader_target(leader, endpoints, alive, statuses, vip_holders, witnesses)
            if target is None or leader not in endpoints:
                return
            self._last_move = now
            await self._store.move_raft_leader(endpoints[leader], target)  # type: ignore[attr-defined]
        except StoreError as exc:
            log.info("could not move the store's raft leader: %s", exc)
            return
        why = "a witness" if target in witnesses else "it runs actives or holds a VIP"
        await self._journal.record(
            "store-leader",
            target,
            f"moved from {leader}: {why}",
            from_node=leader,
        )
