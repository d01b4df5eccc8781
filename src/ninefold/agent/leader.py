"""The elected agent: campaigns for the leader lock, then keeps assignments
true to the spec and the living nodes.

Every write of the leader is a transaction guarded by its lock's fencing
token, so a deposed leader that has not noticed yet cannot write anything.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.agent.death_confirmation import DeathConfirmation
from ninefold.agent.journal import EventJournal, prune_events
from ninefold.agent.membership import LeaseKeeper
from ninefold.agent.store_leadership import RaftLeaderPlacement
from ninefold.decide.plan import Decision, plan
from ninefold.spec import ClusterSpec
from ninefold.state.keys import (
    ASSIGN,
    DRAIN,
    GATEWAY_VIP_LOCK,
    LEADER_LOCK,
    MOVES,
    NODES,
    RESTARTS,
    SPEC_KEY,
    STATUS,
    assign_key,
    move_key,
)
from ninefold.state.reads import read_spec, read_state
from ninefold.state.snapshot import ClusterState
from ninefold.store.base import Compare, Delete, LockHold, Put, Store, StoreError, lock_key

log = logging.getLogger("ninefold.leader")

PRUNE_EVERY = 30.0
ACTIONS = ("placed", "moved", "rolling", "removed")
"""The kinds of assignment changes the leader applies (and journals)."""


class LeaderLoop:
    def __init__(
        self,
        store: Store,
        node: str,
        lease: LeaseKeeper,
        journal: EventJournal,
        bootstrap_spec: ClusterSpec,
    ) -> None:
        self._store = store
        self._node = node
        self._lease = lease
        self._journal = journal
        self._spec = bootstrap_spec
        self.hold: LockHold | None = None
        self._known_alive: frozenset[str] | None = None
        self._last_prune = 0.0
        self._unplaced: tuple[str, ...] = ()
        self.actions: Counter[str] = Counter(dict.fromkeys(ACTIONS, 0))
        """Assignment changes applied while leading, by kind (for /metrics)."""
        self._raft = RaftLeaderPlacement(store, journal)
        self._deaths = DeathConfirmation(store, node, journal, self.poke)
        lease.on_store_back.append(self._deaths.suspect)
        self._signal = ChangeSignal(
            store,
            NODES,
            DRAIN,
            ASSIGN,
            STATUS,
            RESTARTS,
            MOVES,
            SPEC_KEY,
            lock_key(LEADER_LOCK),
            lock_key(GATEWAY_VIP_LOCK),
        )

    @property
    def is_leader(self) -> bool:
        return self.hold is not None

    @property
    def spec(self) -> ClusterSpec:
        """The stored spec as of the last step (kept fresh: the spec's key wakes it)."""
        return self._spec

    def poke(self) -> None:
        self._signal.poke()

    async def run(self) -> None:
        try:
            await run_level_triggered(self._signal, self._step, "leader step")
        finally:
            await self._deaths.stop()
            await self._resign()

    async def _step(self) -> None:
        lease = self._lease.lease
        if not lease:
            self._depose("lease at risk")
            return
        if self.hold is None or self.hold.lease != lease:
            self.hold = None
            previous = await self._store.lock_holder(LEADER_LOCK)
            hold = await self._store.try_lock(LEADER_LOCK, self._node, lease)
            if hold is None:
                if previous is not None:  # a dead leader's lease may go early
                    self._deaths.follow(self._spec, previous)
                return
            self.hold = hold
            self._known_alive = await self._previously_alive(previous.holder if previous else None)
            await self._journal.record(
                "leader",
                self._node,
                "elected",
                previous=previous.holder if previous else None,
                token=hold.fencing_token,
            )
        else:
            current = await self._store.lock_holder(LEADER_LOCK)
            if current is None or current.fencing_token != self.hold.fencing_token:
                self._depose("lost the leader lock")
                return
        self._spec = await read_spec(self._store, self._spec)
        state = await read_state(self._store, self._spec)
        self._deaths.step(state, self.hold.fencing_token)  # early revocation, in the background
        await self._note_membership(state)
        decision = plan(state)
        if not decision.empty:
            await self._apply(decision, state)
        for instance in state.moves:  # done, or impossible: a request is acted on once
            await self._store.delete(move_key(instance))
        if decision.unplaced != self._unplaced:
            for instance in sorted(set(decision.unplaced) - set(self._unplaced)):
                await self._journal.record("unplaced", instance, "no eligible node")
            self._unplaced = decision.unplaced
        vip = None  # a store read per round only for a cluster with a gateway VIP
        if self._spec.gateway.vip is not None:
            vip = await self._store.lock_holder(GATEWAY_VIP_LOCK)
        witnesses = [n.name for n in self._spec.nodes if n.witness]
        await self._raft.step(state.alive, state.statuses, [vip.holder] if vip else [], witnesses)
        if time.monotonic() - self._last_prune > PRUNE_EVERY:
            self._last_prune = time.monotonic()
            await prune_events(self._store)

    def _depose(self, why: str) -> None:
        if self.hold is not None:
            log.warning("no longer leader: %s", why)
        self.hold = None

    async def _resign(self) -> None:
        if self.hold is not None:
            with contextlib.suppress(StoreError):
                await self._store.unlock(self.hold)
            self.hold = None

    async def _previously_alive(self, previous_leader: str | None) -> frozenset[str]:
        """Nodes a new leader takes as alive until now: the living, those still
        holding assignments, and the leader before it, so that the loss of any
        of them (the old leader included) is journaled."""
        state = await read_state(self._store, self._spec)
        known = set(state.alive) | {a.node for a in state.assignments}
        if previous_leader:
            known.add(previous_leader)
        return frozenset(known)

    async def _note_membership(self, state: ClusterState) -> None:
        alive = state.alive
        if self._known_alive is not None:
            for node in sorted(self._known_alive - alive):
                revoked = self._deaths.revoked.pop(node, None) is not None
                reason = "lease revoked: agent gone" if revoked else "lease expired"
                await self._journal.record("node-lost", node, reason)
            for node in sorted(alive - self._known_alive):
                await self._journal.record("node-joined", node, "lease granted")
        self._known_alive = alive

    async def _apply(self, decision: Decision, state: ClusterState) -> None:
        assert self.hold is not None
        ops: list[Put | Delete] = [Delete(assign_key(r.node, r.instance)) for r in decision.remove]
        ops += [Put(assign_key(r.node, r.instance), r.encode()) for r in decision.write]
        guard = Compare(lock_key(LEADER_LOCK), "create", "==", self.hold.fencing_token)
        result = await self._store.txn([guard], ops)
        if not result.succeeded:
            self._depose("fencing token no longer current")
            return
        removed = {r.instance: r for r in decision.remove}
        for record in decision.write:
            if record.instance in decision.moved:
                old, new = decision.moved[record.instance]
                if record.instance in decision.failed_on:
                    reason = f"restart limit reached on {old}"
                elif state.moves.get(record.instance) == new:
                    reason = "asked to move"
                elif old in state.drained:
                    reason = f"{old} drained"
                else:
                    reason = f"{old} unavailable"
                self.actions["moved"] += 1
                await self._journal.record(
                    "moved", record.instance, reason, from_node=old, to_node=new
                )
            elif record.instance in decision.rolled:
                self.actions["rolling"] += 1
                await self._journal.record(
                    "rolling", record.instance, "new generation", generation=record.generation
                )
            elif record.instance not in removed:
                self.actions["placed"] += 1
                await self._journal.record(
                    "placed", record.instance, "scheduled", to_node=record.node
                )
        written = {r.instance for r in decision.write}
        for instance, record in removed.items():
            if instance not in written:
                self.actions["removed"] += 1
                await self._journal.record("removed", instance, "not wanted", from_node=record.node)
