"""Early revocation of a dead agent's lease (docs/architecture.md, "Early revocation")
on a real 3-node cluster: the node running the queue's active and etcd's raft
leader dies; its lease is revoked once the store is back and its API port
refuses connections, instead of outliving it by the election and the lease
extension. A frozen node under the same store election is never taken for
dead: its lease expires as it always did."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from ninefold.spec import load_spec
from ninefold.store.cluster import open_store
from ninefold.store.etcd import EtcdStore
from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

PY = sys.executable
HTTP = f'[{PY}, -m, http.server, "{{port}}", --bind, "{{address}}"]'
QUEUE = f"""
services:
  queue:
    mode: active-passive
    replicas: 2
    command: {HTTP}
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
"""

Factory = Callable[..., LocalCluster]


def queue_active(c: LocalCluster) -> tuple[str, int] | None:
    svc = next(s for s in c.status()["services"] if s["name"] == "queue")
    return (svc["active"], svc["fencing_token"]) if svc["active"] else None


def lead_raft(c: LocalCluster, target: str) -> None:
    """Hand etcd's raft leadership to `target`'s member (MoveLeader)."""

    async def move() -> bool:
        store = open_store(load_spec(c.spec_path))
        assert isinstance(store, EtcdStore)
        try:
            found = await store.raft_leader()
            if found is not None and found[0] != target:
                await store.move_raft_leader(found[1][found[0]], target)
                found = await store.raft_leader()
            return found is not None and found[0] == target
        finally:
            await store.close()

    until(f"raft leadership on {target}", lambda: asyncio.run(move()), 30, interval=0.2)


def ready(c: LocalCluster) -> tuple[str, int]:
    """The queue's active (instance, token) once its standby is healthy too."""
    first = until("an active queue", lambda: queue_active(c), 60)
    until("the standby healthy too", lambda: len(c.serving("queue")) == 2, 30)
    return first


def promoted_after(c: LocalCluster, first: str) -> Callable[[], tuple[str, int] | None]:
    def probe() -> tuple[str, int] | None:
        now = queue_active(c)
        return now if now and now[0] != first else None

    return probe


def lost_events(c: LocalCluster, node: str) -> list[dict[str, Any]]:
    return [e for e in c.events() if e["kind"] == "node-lost" and e["subject"] == node]


def test_a_dead_raft_leaders_lease_is_revoked_once_its_api_port_refuses(
    local_cluster: Factory,
) -> None:
    c = local_cluster(QUEUE)
    c.start_all()
    first, token = ready(c)
    victim = first.split("/")[0]
    lead_raft(c, victim)
    c.kill(victim)
    second, new_token = until("the standby promoted", promoted_after(c, first), 30)
    assert second.split("/")[0] != victim and new_token > token
    # The journal may get the leader's events a moment after the promotion.
    lost = until(f"node-lost for {victim}", lambda: lost_events(c, victim), 30)
    assert lost[-1]["reason"] == "lease revoked: agent gone"
    dead = [e for e in c.events() if e["kind"] == "node-dead"]
    assert [e["subject"] for e in dead] == [victim]
    assert "refused" in dead[0]["reason"]
    assert sum(1 for i in c.status()["instances"] if i["role"] == "active") == 1


def test_a_frozen_raft_leader_is_not_taken_for_dead(local_cluster: Factory) -> None:
    c = local_cluster(QUEUE)
    c.start_all()
    first, token = ready(c)
    victim = first.split("/")[0]
    lead_raft(c, victim)
    agent = psutil.Process(c.procs[victim].pid)
    frozen = [agent, *agent.children(recursive=True)]  # its etcd member and services too
    for proc in frozen:
        proc.send_signal(signal.SIGSTOP)
    try:
        # The others elect a raft leader and probe the frozen agent's API port:
        # its kernel still completes the connection, so its lease must expire.
        second, new_token = until("the standby promoted", promoted_after(c, first), 30)
        assert new_token > token
        lost = until(f"node-lost for {victim}", lambda: lost_events(c, victim), 30)
        assert lost[-1]["reason"] == "lease expired"
        assert not [e for e in c.events() if e["kind"] == "node-dead"]
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)

    # Thawed, it finds its lease gone and its frozen active fenced: one active.
    def one_active() -> bool:
        instances = c.status()["instances"]
        return [i["instance"] for i in instances if i["role"] == "active"] == [second.split("/")[1]]

    until("one active after the thaw", one_active, 30)
