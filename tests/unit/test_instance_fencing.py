"""InstanceRunner of an active-passive service: campaign, fencing, failover, stop.

Real tiny processes and hooks (shell commands appending to a file), a
MemoryStore, and either a stub lease the test flips or real LeaseKeepers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from ninefold.agent.instance import InstanceRunner, NodeContext
from ninefold.agent.journal import EventJournal
from ninefold.agent.membership import LeaseKeeper
from ninefold.spec import ClusterSpec, parse_spec
from ninefold.state.keys import active_lock, status_key
from ninefold.state.reads import read_events
from ninefold.state.records import InstanceStatus
from ninefold.store.base import Store
from ninefold.store.memory import MemoryStore
from ninefold.supervisor import LeftoverRegistry
from tests.helpers import eventually
from tests.unit.test_membership import Partitionable

pytestmark = pytest.mark.process  # every test here starts a program

SLEEPER = "import threading; threading.Event().wait()"
WAIT = 5.0  # deadline of every poll; things normally happen within a second


def make_spec(hooks: Path, standby: str, promote_takes: float = 0.0) -> ClusterSpec:
    command = json.dumps([sys.executable, "-c", SLEEPER])
    slow = f"sleep {promote_takes}; " if promote_takes else ""
    promote = json.dumps(
        ["sh", "-c", f'{slow}echo "promote {{node}} $NINEFOLD_FENCING_TOKEN" >> {hooks}']
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
        self,
        node: str,
        instance: str,
        lease: StubLease | LeaseKeeper,
        standby: str = "cold",
        store: Store | None = None,
        promote_takes: float = 0.0,
    ) -> InstanceRunner:
        """A runner on `node`, talking to the store through `store` (default: directly)."""
        spec = make_spec(self.hooks, standby, promote_takes)
        view = store or self.store
        ctx = NodeContext(
            store=view,
            node=spec.node(node),
            lease=lease,  # type: ignore[arg-type]
            journal=EventJournal(view, node),
            data_dir=self.tmp / node,
            registry=LeftoverRegistry(self.tmp / node / "run"),
        )
        runner = InstanceRunner(ctx, "db", instance, spec.services["db"])
        self.runners.append(runner)
        return runner

    async def stub_lease(self) -> StubLease:
        return StubLease(await self.store.grant_lease(30))

    async def keeper(self, store: Store | None = None) -> LeaseKeeper:
        keeper = LeaseKeeper(store or self.store, ttl=1.0, interval=0.1, fence_after=0.5)
        self.keepers.append(keeper)
        await keeper.start()
        return keeper

    async def published(self, runner: InstanceRunner) -> InstanceStatus | None:
        item = await self.store.get(status_key(runner.ctx.node.name, runner.instance))
        return InstanceStatus.decode(item.value) if item else None


async def stop_within(runner: InstanceRunner, seconds: float) -> None:
    """runner.stop(), failing instead of hanging when it does not return in
    time. A stuck stop (see test_stop_right_after_a_status_change_returns) is
    unstuck by clearing the wake-up flags the runner's loops spin on and
    cancelling them again."""
    task = asyncio.create_task(runner.stop("unassigned"))
    done, _ = await asyncio.wait([task], timeout=seconds)
    if done:
        task.result()
        return
    deadline = time.monotonic() + WAIT
    while not task.done() and time.monotonic() < deadline:
        for flag in ("_changed", "_campaign_wake"):
            if isinstance(event := getattr(runner, flag, None), asyncio.Event):
                event.clear()
        for loop_task in runner._tasks:
            loop_task.cancel()
        await asyncio.sleep(0.01)
    pytest.fail(f"{runner.instance}: stop() did not return within {seconds:g}s")


async def until_frozen(pid: int) -> None:
    """Polls from a thread, which also lets the runner's loops run meanwhile."""

    async def check() -> bool:
        return await asyncio.to_thread(frozen, pid)

    await eventually(check, WAIT, f"pid {pid} to be stopped (SIGSTOP)")


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    for runner in w.runners:
        with contextlib.suppress(pytest.fail.Exception):
            await stop_within(runner, 1.0)
    for keeper in w.keepers:
        await keeper.stop()
    await w.store.close()


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


async def fence_at_risk(runner: InstanceRunner, lease: StubLease) -> None:
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

    await fence_at_risk(runner, lease)
    assert w.hook_lines() == [f"promote n1 {hold.fencing_token}", "demote n1"]
    await until_frozen(status.pid)
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
    await fence_at_risk(runner, lease)
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
    await until(lambda: len(w.hook_lines()) == 3, "on_promote")
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
    await fence_at_risk(runner, lease)
    await until_frozen(one.pid)
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
    assert one.pid is not None
    await fence_at_risk(runner, lease)
    await until_frozen(one.pid)
    # A stopped process cannot act on SIGTERM: waiting the spec's stop_timeout
    # (20 s) for it would only delay everything after.
    await stop_within(runner, 10)
    assert gone(one.pid)
    assert w.hook_lines() == [f"promote n1 {one.fencing_token}", "demote n1"]


async def test_stop_right_after_a_status_change_returns(w: World) -> None:
    """Regression: the runner's loops waited with asyncio.wait_for(event.wait()),
    which on Python 3.11 swallows a cancel arriving as the event is set, so
    stop() never returned."""
    lease = await w.stub_lease()
    runner = w.runner("n1", "db-0", lease)
    await runner.start()
    one = await until_active(w, runner)
    runner.republish()  # what the agent does after a new lease; any status change does it too
    await stop_within(runner, 3)
    assert one.pid is not None and gone(one.pid)


async def test_cold_standby_publishes_its_status_promptly(w: World) -> None:
    """Regression: nothing woke the status publisher of a cold standby, so its
    status first appeared at the resync (RESYNC_INTERVAL, 10 s)."""
    lease = await w.stub_lease()
    # Someone else is active, so this runner stays a standby.
    assert await w.store.try_lock(active_lock("db"), "n2/db-1", lease.id) is not None
    runner = w.runner("n1", "db-0", lease, "cold")
    await runner.start()

    async def published_standby() -> InstanceStatus | None:
        status = await w.published(runner)
        return status if status and status.role == "standby" else None

    status = await eventually(published_standby, 2.0, "the standby's status in the store")
    assert (status.state, status.pid, status.fencing_token) == ("standby", None, None)


async def test_not_published_active_before_on_promote_finished(w: World) -> None:
    lease = await w.stub_lease()
    runner = w.runner("n1", "db-0", lease, promote_takes=0.5)
    await runner.start()
    status = await until_active(w, runner)
    assert w.hook_lines() == [f"promote n1 {status.fencing_token}"], (
        "published as active while on_promote was still running"
    )


async def test_second_node_waits_then_takes_over_with_a_greater_token(w: World) -> None:
    k1, k2 = await w.keeper(), await w.keeper()
    first = w.runner("n1", "db-0", k1)
    second = w.runner("n2", "db-1", k2)
    k1.on_at_risk.append(first.fence)
    k2.on_at_risk.append(second.fence)
    await first.start()
    one = await until_active(w, first)
    await second.start()

    # It campaigns (every 0.5 s at least) but cannot take the held lock.
    deadline = time.monotonic() + 0.7
    while time.monotonic() < deadline:
        assert second.role == "standby" and second.process is None
        assert second.status().state == "standby"
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
    await until(lambda: f"promote n2 {two.fencing_token}" in w.hook_lines(), "on_promote")
    assert "demote n1" in w.hook_lines()
    failovers = [e for e in await read_events(w.store) if e.kind == "failover"]
    assert [(e.data["old_active"], e.data["new_active"]) for e in failovers] == [
        ("n1/db-0", "n2/db-1")
    ]
    # With its new lease, n1 stays standby while n2 holds the lock.
    await until(lambda: k1.valid, "n1 to get a new lease")
    assert first.role == "standby"


async def test_partitioned_active_is_frozen_before_the_other_node_can_promote(
    w: World,
) -> None:
    """The safety property: n1 loses the store; it must freeze its active and
    run on_demote before its lease can expire and let n2 take over. Once the
    partition heals, n1 finds its lease and lock gone and kills the frozen
    process; n2 stays active."""
    n1_view = Partitionable(w.store)
    k1, k2 = await w.keeper(n1_view), await w.keeper()
    first = w.runner("n1", "db-0", k1, store=n1_view)
    second = w.runner("n2", "db-1", k2)
    k1.on_at_risk.append(first.fence)
    k1.on_recovered.append(first.republish)  # type: ignore[arg-type]
    k2.on_at_risk.append(second.fence)
    await first.start()
    one = await until_active(w, first)
    assert one.pid is not None
    await second.start()

    n1_view.cut("fail")
    two = await until_active(w, second)
    assert one.fencing_token is not None and two.fencing_token is not None
    assert two.fencing_token > one.fencing_token
    # on_demote on n1 ran before on_promote on n2 (both append to one file),
    # and n1's process was frozen before its on_demote.
    await until(lambda: len(w.hook_lines()) == 3, "on_promote on n2")
    assert w.hook_lines() == [
        f"promote n1 {one.fencing_token}",
        "demote n1",
        f"promote n2 {two.fencing_token}",
    ]
    assert await asyncio.to_thread(frozen, one.pid)
    assert not k1.valid and first.role == "standby"

    n1_view.heal()
    await until(
        lambda: first.process is None and gone(one.pid),  # type: ignore[arg-type]
        "n1 to kill its frozen process",
    )
    await until(lambda: k1.valid, "n1 to get a new lease")
    assert first.role == "standby"
    hold = await w.store.lock_holder(active_lock("db"))
    assert hold is not None and hold.holder == "n2/db-1"
    assert second.role == "active"
    assert len(w.hook_lines()) == 3


async def test_stop_of_the_active_demotes_kills_and_releases(w: World) -> None:
    lease1, lease2 = await w.stub_lease(), await w.stub_lease()
    first = w.runner("n1", "db-0", lease1)
    second = w.runner("n2", "db-1", lease2)
    await first.start()
    one = await until_active(w, first)
    await second.start()
    await until(lambda: w.hook_lines() == [f"promote n1 {one.fencing_token}"], "on_promote")

    await stop_within(first, WAIT)
    assert w.hook_lines()[:2] == [f"promote n1 {one.fencing_token}", "demote n1"]
    assert one.pid is not None and gone(one.pid)
    assert await w.published(first) is None
    hold = await w.store.lock_holder(active_lock("db"))
    assert hold is None or hold.holder == "n2/db-1"
    # The lock is free at once, and the standby on n2 takes it.
    two = await until_active(w, second)
    assert two.fencing_token is not None and one.fencing_token is not None
    assert two.fencing_token > one.fencing_token
