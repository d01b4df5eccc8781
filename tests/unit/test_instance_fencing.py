"""InstanceRunner of an active-passive service: campaign, fencing, failover, stop.

Real tiny processes and hooks (shell commands appending to a file), a
MemoryStore, and either a stub lease the test flips or real LeaseKeepers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from ninefold.agent.instance import InstanceRunner, NodeContext
from ninefold.agent.journal import EventJournal, read_events
from ninefold.agent.membership import LeaseKeeper
from ninefold.agent.records import InstanceStatus, active_lock, status_key
from ninefold.spec import ClusterSpec, parse_spec
from ninefold.store.memory import MemoryStore
from ninefold.supervisor import LeftoverRegistry
from tests.helpers import eventually

SLEEPER = "import time; time.sleep(60)"
WAIT = 5.0  # deadline of every poll; things normally happen within a second


def make_spec(hooks: Path, standby: str) -> ClusterSpec:
    command = json.dumps([sys.executable, "-c", SLEEPER])
    promote = json.dumps(
        ["sh", "-c", f'echo "promote {{node}} $NINEFOLD_FENCING_TOKEN" >> {hooks}']
    )
    demote = json.dumps(["sh", "-c", f'echo "demote {{node}}" >> {hooks}'])
    return parse_spec(
        f"""\
cluster: shop
nodes:
  - {{name: n1, address: 127.0.0.1, store: true}}
  - {{name: n2, address: 127.0.0.1, ports: {{api: 7071, gateway_http: 8081}}}}
services:
  db:
    command: {command}
    mode: active-passive
    replicas: 2
    standby: {standby}
    on_promote: {promote}
    on_demote: {demote}
    stop_timeout: 20s
"""
    )


class StubLease:
    """Stands in for LeaseKeeper: a lease id the test can mark at risk."""

    def __init__(self, lease: int) -> None:
        self.id = lease
        self.valid = True

    @property
    def lease(self) -> int:
        return self.id if self.valid else 0

    def remaining(self) -> float:
        return 5.0


def gone(pid: int) -> bool:
    """Not there, or a zombie (this machine's init may not reap orphans)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class World:
    tmp: Path
    store: MemoryStore = field(default_factory=MemoryStore)
    runners: list[InstanceRunner] = field(default_factory=list)
    keepers: list[LeaseKeeper] = field(default_factory=list)

    @property
    def hooks(self) -> Path:
        return self.tmp / "hooks.log"

    def hook_lines(self) -> list[str]:
        return self.hooks.read_text().splitlines() if self.hooks.exists() else []

    def runner(
        self, node: str, instance: str, lease: StubLease | LeaseKeeper, standby: str = "cold"
    ) -> InstanceRunner:
        spec = make_spec(self.hooks, standby)
        ctx = NodeContext(
            store=self.store,
            node=spec.node(node),
            lease=lease,  # type: ignore[arg-type]
            journal=EventJournal(self.store, node),
            data_dir=self.tmp / node,
            registry=LeftoverRegistry(self.tmp / node / "run"),
        )
        runner = InstanceRunner(ctx, "db", instance, spec.services["db"])
        self.runners.append(runner)
        return runner

    async def stub_lease(self) -> StubLease:
        return StubLease(await self.store.grant_lease(30))

    async def keeper(self) -> LeaseKeeper:
        keeper = LeaseKeeper(self.store, ttl=1.0, interval=0.1, fence_after=0.5)
        self.keepers.append(keeper)
        await keeper.start()
        return keeper

    async def published(self, runner: InstanceRunner) -> InstanceStatus | None:
        item = await self.store.get(status_key(runner.ctx.node.name, runner.instance))
        return InstanceStatus.decode(item.value) if item else None


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)

    async def dump() -> None:  # DEBUG
        await asyncio.sleep(20)
        print("=== STACKS ===", file=sys.stderr)
        for t in asyncio.all_tasks():
            t.print_stack(file=sys.stderr)

    dumper = asyncio.create_task(dump())
    yield w
    for runner in w.runners:
        try:
            await asyncio.wait_for(runner.stop("test over"), 8)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack(file=sys.stderr)
            raise
    for keeper in w.keepers:
        await keeper.stop()
    await w.store.close()
    dumper.cancel()


async def until(condition: Callable[[], bool], what: str) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, WAIT, what)


async def until_active(
    w: World, runner: InstanceRunner, other_than: int | None = None
) -> InstanceStatus:
    """The status `runner` publishes once active, with a process other than `other_than`."""

    async def active() -> InstanceStatus | None:
        status = await w.published(runner)
        if status and status.role == "active" and status.pid and status.pid != other_than:
            return status
        return None

    return await eventually(active, WAIT, f"{runner.instance} to publish itself active")


def frozen(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


async def fence_at_risk(w: World, runner: InstanceRunner, lease: StubLease) -> None:
    """What the LeaseKeeper does when renewals stop getting through."""
    lease.valid = False
    await runner.fence()


@pytest.mark.parametrize("standby", ["cold", "hot"])
async def test_campaign_promotes_and_fence_freezes_the_active(w: World, standby: str) -> None:
    lease = await w.stub_lease()
    runner = w.runner("n1", "db-0", lease, standby)
    await runner.start()
    status = await until_active(w, runner)

    hold = await w.store.lock_holder(active_lock("db"))
    assert hold is not None and hold.holder == "n1/db-0" and hold.lease == lease.lease
    assert status.fencing_token == hold.fencing_token
    assert status.state == "running" and status.node == "n1"
    assert status.pid is not None and not gone(status.pid) and not frozen(status.pid)
    await until(lambda: w.hook_lines() == [f"promote n1 {hold.fencing_token}"], "on_promote")

    async def promoted_event() -> list[int]:
        return [e.data["token"] for e in await read_events(w.store) if e.kind == "promoted"]

    assert await eventually(promoted_event, WAIT, "a promoted event") == [hold.fencing_token]

    await fence_at_risk(w, runner, lease)
    assert w.hook_lines() == [f"promote n1 {hold.fencing_token}", "demote n1"]
    assert frozen(status.pid), "the active's process is not stopped after fence()"
    assert runner.role == "standby" and runner.status().role == "standby"

    async def demoted_event() -> bool:
        return any(e.kind == "demoted" for e in await read_events(w.store))

    await eventually(demoted_event, WAIT, "a demoted event")


@pytest.mark.parametrize("standby", ["cold", "hot"])
async def test_fenced_active_is_killed_when_its_lease_is_gone(w: World, standby: str) -> None:
    lease = await w.stub_lease()
    runner = w.runner("n1", "db-0", lease, standby)
    await runner.start()
    one = await until_active(w, runner)
    assert one.pid is not None
    await fence_at_risk(w, runner, lease)
    # The store expires the old lease (taking the lock and status with it); the
    # keeper gets a new one.
    w.store.expire_lease(lease.id)
    lease.id = await w.store.grant_lease(30)
    lease.valid = True
    await until(lambda: gone(one.pid), "the frozen process to be killed")  # type: ignore[arg-type]
    # Then it campaigns afresh: a new process and a greater token.
    two = await until_active(w, runner, other_than=one.pid)
    assert two.fencing_token is not None and one.fencing_token is not None
    assert two.fencing_token > one.fencing_token
    assert w.hook_lines() == [
        f"promote n1 {one.fencing_token}",
        "demote n1",
        f"promote n1 {two.fencing_token}",
    ]


async def test_fenced_active_resumes_when_the_same_lease_survives(w: World) -> None:
    """A store hiccup fenced us but the lease never lapsed: nobody else can have
    held the lock, so the frozen process is thawed, with the same token."""
    lease = await w.stub_lease()
    runner = w.runner("n1", "db-0", lease)
    await runner.start()
    one = await until_active(w, runner)
    assert one.pid is not None
    await fence_at_risk(w, runner, lease)
    assert frozen(one.pid)
    lease.valid = True
    await until(lambda: runner.role == "active", "the runner to resume")
    await until(lambda: not frozen(one.pid), "the process to be thawed")  # type: ignore[arg-type]
    assert runner.process is not None and runner.process.pid == one.pid
    assert runner.status().fencing_token == one.fencing_token
    assert w.hook_lines() == [
        f"promote n1 {one.fencing_token}",
        "demote n1",
        f"promote n1 {one.fencing_token}",
    ]


async def test_stop_of_a_frozen_active_kills_it_without_waiting(w: World) -> None:
    lease = await w.stub_lease()
    runner = w.runner("n1", "db-0", lease)
    await runner.start()
    one = await until_active(w, runner)
    await fence_at_risk(w, runner, lease)
    # A stopped process cannot act on SIGTERM: waiting the spec's stop_timeout
    # (20 s) for it would only delay the failover.
    await asyncio.wait_for(runner.stop("unassigned"), 10)
    assert one.pid is not None and gone(one.pid)


async def test_second_node_waits_then_takes_over_with_a_greater_token(w: World) -> None:
    k1, k2 = await w.keeper(), await w.keeper()
    first = w.runner("n1", "db-0", k1)
    second = w.runner("n2", "db-1", k2)
    k1.on_at_risk.append(first.fence)
    k2.on_at_risk.append(second.fence)
    await first.start()
    one = await until_active(w, first)
    await second.start()

    async def second_standby() -> bool:
        status = await w.published(second)
        return status is not None and status.role == "standby"

    await eventually(second_standby, WAIT, "the second runner to publish standby")
    # It campaigns (every 0.5 s at least) but cannot take the held lock.
    deadline = time.monotonic() + 0.7
    while time.monotonic() < deadline:
        assert second.role == "standby" and second.process is None
        hold = await w.store.lock_holder(active_lock("db"))
        assert hold is not None and hold.holder == "n1/db-0"
        await asyncio.sleep(0.05)

    w.store.expire_lease(k1.lease)  # n1 is gone as far as the store is concerned
    two = await until_active(w, second)
    assert two.fencing_token is not None and one.fencing_token is not None
    assert two.fencing_token > one.fencing_token
    hold = await w.store.lock_holder(active_lock("db"))
    assert hold is not None and hold.holder == "n2/db-1"
    assert hold.fencing_token == two.fencing_token

    # n1 noticed (LeaseExpired) and fenced: its process is gone, it is standby.
    assert one.pid is not None
    await until(lambda: gone(one.pid) and first.role == "standby", "n1 to fence itself")  # type: ignore[arg-type]
    assert "demote n1" in w.hook_lines()
    assert f"promote n2 {two.fencing_token}" in w.hook_lines()
    failovers = [e for e in await read_events(w.store) if e.kind == "failover"]
    assert [(e.data["old_active"], e.data["new_active"]) for e in failovers] == [
        ("n1/db-0", "n2/db-1")
    ]
    # With its new lease, n1 stays standby while n2 holds the lock.
    await until(lambda: k1.valid, "n1 to get a new lease")
    assert first.role == "standby"


async def test_stop_of_the_active_demotes_kills_and_releases(w: World) -> None:
    lease1, lease2 = await w.stub_lease(), await w.stub_lease()
    first = w.runner("n1", "db-0", lease1)
    second = w.runner("n2", "db-1", lease2)
    await first.start()
    one = await until_active(w, first)
    await second.start()

    await first.stop("unassigned")
    assert w.hook_lines()[:2] == [f"promote n1 {one.fencing_token}", "demote n1"]
    assert one.pid is not None and gone(one.pid)
    assert await w.published(first) is None
    hold = await w.store.lock_holder(active_lock("db"))
    assert hold is None or hold.holder == "n2/db-1"
    # The lock is free at once, and the standby on n2 takes it.
    two = await until_active(w, second)
    assert two.fencing_token is not None and one.fencing_token is not None
    assert two.fencing_token > one.fencing_token
