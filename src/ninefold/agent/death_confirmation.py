"""The leader's side of early lease revocation (decide/dead_node.py says what
proves a node dead and why that is safe).

The leader remembers, per node, the lease under which the node's API server
last answered on its port (one connection and request line per node and
lease: when it joins, or when this agent becomes leader; an answer, not just
a connection the kernel completed, shows the server was serving). When the store comes back after
this agent's renewals failed (the raft leader died: an election, and every
lease extended), it suspects every node for a few seconds and probes their
API ports; a node whose port now refuses, under the lease it accepted with,
gets its lease revoked at once, which frees its locks (its actives' and the
gateway VIP's) and deletes its keys. Each revocation is preceded by a look
at the leader lock: only the current leader revokes.

Except when the dead node *is* the leader: its lock lives as long as its
lease, so no other agent can lead, and revoke, before the lease expires.
Every other agent therefore watches the leader's node alone (`follow`), and
revokes its lease under the same proof while the leader lock is still held by
that node under that lease; the lock is then free and the next leader is
elected at once. Two agents revoking the same dead lease do no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ninefold import defaults
from ninefold.agent.journal import EventJournal
from ninefold.decide.dead_node import Probe, judge
from ninefold.spec import ClusterSpec
from ninefold.state.keys import (
    GATEWAY_VIP_LOCK,
    LEADER_LOCK,
    NODES,
    STATUS,
    last_segment,
    node_key,
)
from ninefold.state.records import InstanceStatus, NodeRecord
from ninefold.state.snapshot import ClusterState
from ninefold.store.base import LockHold, Store, StoreError

log = logging.getLogger("ninefold.leader")

CONNECT_TIMEOUT = 0.3
"""Seconds a probe waits for a connection; no answer is not a refusal."""
SUSPECT_FOR = 3.0
"""Seconds nodes stay suspected after the store came back."""
PROBE_EVERY = 0.25
"""Seconds between two probes of the suspected nodes."""
REREAD_EVERY = 2.0
"""Seconds between two reads of the node records when the living did not
change (a restarted agent re-registers under a new lease: it is seen
accepting under that one within this)."""


ANSWERED = "answered"
"""What `probe_port(..., talk=True)` says when the API server itself reacted."""


async def probe_port(
    address: str, port: int, timeout: float = CONNECT_TIMEOUT, talk: bool = False
) -> Probe | str:
    """Open and close a TCP connection to address:port. With `talk`, send a
    request line and say ANSWERED if the server reacted (any byte, or closing
    the connection) within `timeout`: the kernel alone completes a connection
    (a frozen process, or a server that never started serving), only the
    server answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, OSError):
        return "no-answer"
    result: Probe | str = "accepted"
    try:
        if talk:
            writer.write(b"GET /v1/ HTTP/1.0\r\n\r\n")
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(reader.read(1), timeout)
                result = ANSWERED
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return result


@dataclass(frozen=True, slots=True)
class _Node:
    lease: int
    address: str
    port: int


class DeathConfirmation:
    """Owned by the leader loop: `step` (from each leader round) hands over
    the state and the leader's token and returns at once; probes and
    revocations run in a task of their own, so a node that does not answer
    never holds up the leader's round."""

    def __init__(
        self,
        store: Store,
        node: str,
        journal: EventJournal,
        wake: Callable[[], None],
        vip_lifetime: float = defaults.VIP_ADDRESS_LIFETIME,
    ) -> None:
        self._store = store
        self._node = node
        self._journal = journal
        self._wake = wake
        self._vip_lifetime = vip_lifetime
        self._nodes: dict[str, _Node] = {}
        self._read_at = 0.0
        self._alive: frozenset[str] | None = None
        self._accepted: dict[str, int] = {}
        """node -> the lease under which its API port accepted a connection."""
        self._first_refused: dict[tuple[str, int], float] = {}
        self._suspect_until = 0.0
        self._probed_at = 0.0
        self._retry_at: float | None = None
        self._state: ClusterState | None = None
        self._spec: ClusterSpec | None = None
        self._token = 0
        self._only: LockHold | None = None
        """Not leading: the leader lock's hold, whose node alone is watched."""
        self._task: asyncio.Task[None] | None = None
        self.revoked: dict[str, int] = {}
        """node -> lease revoked early (the leader journals its loss as such)."""
        self.probe_rounds = 0
        """Rounds of probes of suspected nodes so far (tests, logs)."""

    @property
    def accepted(self) -> dict[str, int]:
        """node -> the lease under which its API port last accepted a connection."""
        return dict(self._accepted)

    def suspect(self) -> None:
        """The store is back after this agent's renewals failed: probe every
        node for a while (a LeaseKeeper listener; must not block)."""
        self._suspect_until = time.monotonic() + SUSPECT_FOR
        self._probed_at = 0.0
        self._kick()
        self._wake()

    def _kick(self) -> None:
        """A round now, without waiting for the next leader round (which may
        be stuck in a store request sent before the outage ended)."""
        if self._spec is not None:
            self._start()

    def step(self, state: ClusterState, leader_token: int) -> None:
        """Called by the leader, holding the leader lock with `leader_token`."""
        self._state, self._spec, self._token, self._only = state, state.spec, leader_token, None
        self._start()

    def follow(self, spec: ClusterSpec, leader: LockHold) -> None:
        """Called by an agent that is not the leader: `leader` holds the lock."""
        if leader.holder == self._node:
            return
        self._state, self._spec, self._token, self._only = None, spec, leader.fencing_token, leader
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work(), name="death-confirmation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _work(self) -> None:
        try:
            await self._round()
        except StoreError as exc:
            log.debug("death confirmation: %s", exc)
        except Exception:
            log.exception("death confirmation failed")

    async def _round(self) -> None:
        state, token, only = self._state, self._token, self._only
        now = time.monotonic()
        alive = state.alive if state is not None else frozenset({only.holder} if only else ())
        if await self._read_nodes(alive, now):
            await self._learn()
        suspected = now < self._suspect_until
        due = self._retry_at is not None and now >= self._retry_at
        if not (suspected and now - self._probed_at >= PROBE_EVERY * 0.9) and not due:
            return
        self._probed_at, self._retry_at = now, None
        if suspected:
            asyncio.get_running_loop().call_later(PROBE_EVERY, self._kick)
        targets = {n: rec for n, rec in self._nodes.items() if self._accepted.get(n) == rec.lease}
        results = await asyncio.gather(*(probe_port(r.address, r.port) for r in targets.values()))
        pairs = zip(targets.items(), results, strict=True)
        refused = [(name, record) for (name, record), got in pairs if got == "refused"]
        if refused:
            holders = await self._vip_holders(state.statuses if state is not None else None)
            for name, record in refused:
                await self._confirm(name, record, name in holders, token)
        self.probe_rounds += 1

    async def _read_nodes(self, alive: frozenset[str], now: float) -> bool:
        """Read the node records when the living changed, while suspecting,
        or every REREAD_EVERY; True if they were read."""
        suspected = now < self._suspect_until
        if alive == self._alive and now - self._read_at < REREAD_EVERY and not suspected:
            return False
        only = self._only
        if only is None:
            items = (await self._store.list(NODES)).items
        else:  # following: the leader's record alone
            found = await self._store.get(node_key(only.holder))
            items = [found] if found is not None else []
        nodes = {}
        for item in items:
            name = last_segment(item.key)
            if name == self._node or not item.lease:
                continue
            if only is not None and (name != only.holder or item.lease != only.lease):
                continue
            try:
                record = NodeRecord.decode(item.value)
            except ValueError:
                continue
            nodes[name] = _Node(item.lease, record.address, record.api_port)
        self._nodes, self._alive, self._read_at = nodes, alive, now
        current = {(n, r.lease) for n, r in nodes.items()}
        for key in [k for k in self._first_refused if k not in current]:
            del self._first_refused[key]
        return True

    async def _learn(self) -> None:
        """Probe the nodes whose current lease we have not seen accepted yet."""
        new = {n: r for n, r in self._nodes.items() if self._accepted.get(n) != r.lease}
        results = await asyncio.gather(
            *(probe_port(r.address, r.port, talk=True) for r in new.values())
        )
        for (name, record), result in zip(new.items(), results, strict=True):
            if result == ANSWERED:
                self._accepted[name] = record.lease

    async def _vip_holders(self, statuses: tuple[InstanceStatus, ...] | None) -> set[str]:
        """Nodes that may have a VIP on an interface: the gateway VIP's lock
        holder, and the nodes running the active of a service with a vip."""
        spec = self._spec
        assert spec is not None
        if statuses is None:
            listing = await self._store.list(STATUS)
            statuses = tuple(InstanceStatus.decode(item.value) for item in listing.items)
        holders = {
            s.node
            for s in statuses
            if s.role == "active"
            and (service := spec.services.get(s.service)) is not None
            and service.vip is not None
        }
        if spec.gateway.vip is not None:
            hold = await self._store.lock_holder(GATEWAY_VIP_LOCK)
            if hold is not None:
                holders.add(hold.holder)
        return holders

    async def _confirm(self, name: str, record: _Node, holds_vip: bool, token: int) -> None:
        now = time.monotonic()
        key = (name, record.lease)
        verdict = judge(
            "refused",
            accepted_under_lease=True,
            first_refused=self._first_refused.get(key),
            now=now,
            holds_vip=holds_vip,
            vip_lifetime=self._vip_lifetime,
        )
        self._first_refused.setdefault(key, now)
        if not verdict.revoke:
            if verdict.retry_at is not None:
                self._retry_at = min(self._retry_at or verdict.retry_at, verdict.retry_at)
                asyncio.get_running_loop().call_later(verdict.retry_at - now, self._kick)
            return
        current = await self._store.lock_holder(LEADER_LOCK)
        if current is None or current.fencing_token != token:
            log.info("not revoking %s's lease: the leader changed", name)
            return
        try:
            await self._store.revoke_lease(record.lease)
        except StoreError as exc:
            log.warning("could not revoke dead node %s's lease: %s", name, exc)
            self._retry_at = now + PROBE_EVERY
            asyncio.get_running_loop().call_later(PROBE_EVERY, self._kick)
            return
        log.warning("node %s is dead (%s): lease %x revoked", name, verdict.why, record.lease)
        self.revoked[name] = record.lease
        self._nodes.pop(name, None)
        # A round at once: the leader places what ran there, or (its node was
        # the leader's) this agent campaigns for the free leader lock. Watches
        # re-made after the store election may have missed the deletions.
        self._wake()
        await self._journal.record("node-dead", name, verdict.why, lease=format(record.lease, "x"))
