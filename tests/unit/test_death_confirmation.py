"""agent/death_confirmation.py: the leader revokes a dead agent's lease early,
and only a dead agent's: a frozen one, one never seen listening, or a leader
that lost its lock revoke nothing; a failed revocation is tried again; a VIP
holder waits out its address's lifetime.

Real sockets on loopback stand for the nodes' API ports; the store is a
MemoryStore (leases, locks and the journal as etcd has them)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from ninefold.agent.death_confirmation import DeathConfirmation
from ninefold.agent.journal import EventJournal
from ninefold.decide.dead_node import VIP_CHECK_SLACK
from ninefold.spec import parse_spec
from ninefold.state.keys import LEADER_LOCK, node_key
from ninefold.state.reads import read_events
from ninefold.state.records import InstanceStatus, NodeRecord
from ninefold.state.snapshot import ClusterState
from ninefold.store.base import StoreUnavailable
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually

SPEC = parse_spec(
    """cluster: t
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n2, address: 127.0.0.2, store: true}
  - {name: n3, address: 127.0.0.3, store: true}
services:
  db:
    mode: active-passive
    replicas: 2
    command: [sleep, '100']
    vip: {address: 10.99.0.10/24}
"""
)


class FlakyRevokes(MemoryStore):
    """Refuses the first `fail` lease revocations (the store electing a leader)."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.fail = fail

    async def revoke_lease(self, lease: int) -> None:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("no leader")
        await super().revoke_lease(lease)


class Node:
    """n2: its lease, its record, and an API port that accepts connections."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.lease = 0
        self.server: asyncio.Server | None = None
        self.frozen: socket.socket | None = None
        self.port = 0

    async def start(self, api: str = "serving") -> Node:
        """api: serving; frozen (a listening socket nobody accepts from, as
        under SIGSTOP: the kernel still completes connections); or none."""
        self.lease = await self.store.grant_lease(30)
        if api == "serving":
            self.server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
        elif api == "frozen":
            self.frozen = socket.socket()
            self.frozen.bind(("127.0.0.1", 0))
            self.frozen.listen(64)
            self.port = self.frozen.getsockname()[1]
        else:  # a port nothing listens on
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        record = NodeRecord(
            name="n2", address="127.0.0.1", zone="a", region="r", api_port=self.port, pid=1
        )
        await self.store.put(node_key("n2"), record.encode(), self.lease)
        return self

    async def die(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def freeze(self) -> None:
        """SIGSTOP: the port stays open (the kernel completes connections),
        nothing answers."""
        await self.die()
        self.frozen = socket.socket()
        self.frozen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.frozen.bind(("127.0.0.1", self.port))
        self.frozen.listen(64)

    async def present(self) -> bool:
        return await self.store.get(node_key("n2")) is not None


def state(statuses: tuple[InstanceStatus, ...] = ()) -> ClusterState:
    return ClusterState(
        spec=SPEC,
        alive=frozenset({"n1", "n2"}),
        drained=frozenset(),
        assignments=(),
        statuses=statuses,
    )


@pytest.fixture
async def store() -> AsyncIterator[FlakyRevokes]:
    store = FlakyRevokes()
    yield store
    await store.close()


async def leader(store: MemoryStore) -> int:
    """n1 holds the leader lock: its fencing token."""
    hold = await store.try_lock(LEADER_LOCK, "n1", await store.grant_lease(30))
    assert hold is not None
    return hold.fencing_token


def confirmation(store: MemoryStore, vip_lifetime: float = 1.0) -> DeathConfirmation:
    return DeathConfirmation(store, "n1", EventJournal(store, "n1"), lambda: None, vip_lifetime)


async def learned(deaths: DeathConfirmation, token: int, node: Node, now: ClusterState) -> None:
    def seen() -> bool:
        deaths.step(now, token)
        return deaths.accepted.get("n2") == node.lease

    await eventually(seen, 5, "n2's API port seen accepting under its lease")


async def rounds(deaths: DeathConfirmation, token: int, now: ClusterState, count: int) -> None:
    """Let `count` rounds of probes of the suspects run."""
    target = deaths.probe_rounds + count

    def ran() -> bool:
        deaths.step(now, token)
        return deaths.probe_rounds >= target

    await eventually(ran, 5, f"{count} probe rounds")


async def test_a_dead_agents_lease_is_revoked_once_the_store_is_back(
    store: FlakyRevokes,
) -> None:
    token, node, deaths = await leader(store), await Node(store).start(), confirmation(store)
    await learned(deaths, token, node, state())
    await node.die()
    deaths.suspect()

    async def gone() -> bool:
        deaths.step(state(), token)
        return not await node.present()

    await eventually(gone, 5, "n2's lease revoked")
    assert deaths.revoked == {"n2": node.lease}
    events = [e for e in await read_events(store) if e.kind == "node-dead"]
    assert [(e.subject, e.node) for e in events] == [("n2", "n1")]
    assert "refused" in events[0].reason
    await deaths.stop()


async def test_a_frozen_agent_is_not_taken_for_dead(store: FlakyRevokes) -> None:
    token, node, deaths = await leader(store), await Node(store).start(), confirmation(store)
    await learned(deaths, token, node, state())
    await node.freeze()
    assert node.frozen is not None
    try:
        deaths.suspect()
        await rounds(deaths, token, state(), 3)
        assert await node.present()
        assert deaths.revoked == {}
    finally:
        node.frozen.close()
        await deaths.stop()


async def test_a_port_only_the_kernel_answers_proves_nothing(store: FlakyRevokes) -> None:
    # A server that never started serving (or a frozen one from the start):
    # connections complete, nothing answers; a later refusal is no proof.
    token, deaths = await leader(store), confirmation(store)
    node = await Node(store).start(api="frozen")
    assert node.frozen is not None
    deaths.suspect()  # read the records and probe at once
    await rounds(deaths, token, state(), 2)
    assert deaths.accepted == {}
    node.frozen.close()
    deaths.suspect()
    await rounds(deaths, token, state(), 3)
    assert await node.present()
    await deaths.stop()


async def test_a_refusal_proves_nothing_without_an_earlier_acceptance(
    store: FlakyRevokes,
) -> None:
    token, deaths = await leader(store), confirmation(store)
    node = await Node(store).start(api="none")  # its API never came up
    deaths.suspect()
    await rounds(deaths, token, state(), 3)
    assert await node.present()
    assert deaths.accepted == {}
    await deaths.stop()


async def test_a_leader_that_lost_its_lock_revokes_nothing(store: FlakyRevokes) -> None:
    token, node, deaths = await leader(store), await Node(store).start(), confirmation(store)
    await learned(deaths, token, node, state())
    await node.die()
    deaths.suspect()
    await rounds(deaths, token + 1000, state(), 3)  # another agent's token is current
    assert await node.present()
    await deaths.stop()


async def test_a_failed_revocation_is_tried_again(store: FlakyRevokes) -> None:
    token, node, deaths = await leader(store), await Node(store).start(), confirmation(store)
    await learned(deaths, token, node, state())
    await node.die()
    store.fail = 2
    deaths.suspect()

    async def gone() -> bool:
        deaths.step(state(), token)
        return not await node.present()

    await eventually(gone, 5, "n2's lease revoked after two failed attempts")
    assert store.fail == 0
    await deaths.stop()


async def test_a_vip_holder_is_revoked_only_once_its_address_lifetime_is_over(
    store: FlakyRevokes,
) -> None:
    lifetime = 0.2
    token, node = await leader(store), await Node(store).start()
    deaths = confirmation(store, vip_lifetime=lifetime)
    active = InstanceStatus(
        service="db", instance="db-1", node="n2", address="127.0.0.2", role="active"
    )
    now = state((active,))
    await learned(deaths, token, node, now)
    await node.die()
    refused_from = time.monotonic()
    deaths.suspect()
    await rounds(deaths, token, now, 1)
    assert await node.present()  # its VIP may still be up

    async def gone() -> bool:
        deaths.step(now, token)
        return not await node.present()

    await eventually(gone, 5, "the VIP holder's lease revoked")
    assert time.monotonic() - refused_from >= lifetime + VIP_CHECK_SLACK
    await deaths.stop()


async def test_a_dead_leaders_lease_is_revoked_by_another_agent(store: FlakyRevokes) -> None:
    # n2 leads: its lock lives as long as its lease, so nobody else could lead
    # (and revoke) before it expired; n1 watches n2's node alone.
    node = await Node(store).start()
    hold = await store.try_lock(LEADER_LOCK, "n2", node.lease)
    assert hold is not None
    deaths = confirmation(store)

    def seen() -> bool:
        deaths.follow(SPEC, hold)
        return deaths.accepted == {"n2": node.lease}

    await eventually(seen, 5, "the leader's API port seen accepting")
    await node.die()
    deaths.suspect()

    async def gone() -> bool:
        deaths.follow(SPEC, hold)
        return await store.lock_holder(LEADER_LOCK) is None and not await node.present()

    await eventually(gone, 5, "the dead leader's lease revoked, its lock free")
    await deaths.stop()


async def test_an_agent_that_leads_no_longer_revokes_nothing_as_a_follower(
    store: FlakyRevokes,
) -> None:
    node = await Node(store).start()
    hold = await store.try_lock(LEADER_LOCK, "n2", node.lease)
    assert hold is not None
    deaths = confirmation(store)

    def seen() -> bool:
        deaths.follow(SPEC, hold)
        return bool(deaths.accepted)

    await eventually(seen, 5, "the leader's API port seen accepting")
    await node.die()
    await store.unlock(hold)  # meanwhile n3 took the lock: another leader decides
    assert await store.try_lock(LEADER_LOCK, "n3", await store.grant_lease(30)) is not None
    deaths.suspect()
    target = deaths.probe_rounds + 3

    def ran() -> bool:
        deaths.follow(SPEC, hold)
        return deaths.probe_rounds >= target

    await eventually(ran, 5, "3 probe rounds")
    assert await node.present()
    await deaths.stop()
