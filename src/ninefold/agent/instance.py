"""One assigned instance on this node: its process, its health, its role.

An active-passive instance campaigns for its service's active lock; only the
holder is active. The lock key lives under the node's lease, so the lock is
freed when the node dies; an agent whose lease is at risk fences its actives
first (see membership.py), which is what keeps two actives from ever running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ninefold import defaults
from ninefold.agent.addresses import FloatingAddresses
from ninefold.agent.instance_volumes import InstanceVolumes
from ninefold.agent.journal import EventJournal
from ninefold.agent.membership import LeaseKeeper
from ninefold.agent.ports import allocate_ports
from ninefold.decide.failover import ApAction, ApView, LockView, Switchover, ap_step, needs_lock
from ninefold.gateway.routes import routable
from ninefold.health import HealthMonitor
from ninefold.latency import LatencyHistogram
from ninefold.spec import NodeSpec, ServiceSpec
from ninefold.spec.models import render
from ninefold.state.keys import (
    GATEWAYS,
    NODES,
    active_lock,
    last_segment,
    status_key,
    switchover_key,
)
from ninefold.state.records import (
    GatewayReport,
    Health,
    InstanceState,
    InstanceStatus,
    Role,
)
from ninefold.store.base import LockHold, Store, StoreError, lock_key
from ninefold.supervisor import (
    LeftoverRegistry,
    ProcessEvent,
    ProcessSpec,
    RestartPolicy,
    SupervisedProcess,
    run_hook,
)
from ninefold.tasks import cancel_and_wait, wait_event
from ninefold.volumes.layout import volume_dir

log = logging.getLogger("ninefold.instance")

DRAIN_BLIND_FOR = 1.0
"""A drain that cannot see the gateways' reports for this long gives up: with
the store gone there is nobody left to coordinate with."""


@dataclass
class NodeContext:
    """What every instance runner of one agent shares."""

    store: Store
    node: NodeSpec
    lease: LeaseKeeper
    journal: EventJournal
    data_dir: Path
    registry: LeftoverRegistry
    taken_ports: set[int] = field(default_factory=set)
    addresses: FloatingAddresses | None = None
    """The node's floating addresses (None where no VIP can be held: tests)."""
    volume_port: int = 0
    """Where agents receive replicated volumes (spec's default node port)."""
    tls_dir: Path | None = None
    """This node's certificate files for volume transfers (None: plain TCP)."""
    abort_transfers: Callable[[str], int] | None = None
    """Ends the volume transfers coming in for a service (its instance here
    became the active: nothing may write into its copy from now on)."""

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def placeholder_values(
    ctx: NodeContext, service: str, instance: str, spec: ServiceSpec, ports: dict[str, int]
) -> dict[str, str]:
    host = f"[{ctx.node.address}]" if ":" in ctx.node.address else ctx.node.address
    values = {
        "address": ctx.node.address,
        "node": ctx.node.name,
        "service": service,
        "instance": instance,
        "api": f"http://{host}:{ctx.node.ports.api}",
    }
    if spec.ports:
        values["port"] = str(ports[spec.ports[0]])
    for name, port in ports.items():
        values[f"port.{name}"] = str(port)
    for name, volume in spec.volumes.items():
        values[f"volume.{name}"] = str(volume_dir(ctx.data_dir, service, name, volume))
    if spec.vip is not None:
        values["vip"] = spec.vip.ip
    return values


def process_env(values: dict[str, str]) -> dict[str, str]:
    """NINEFOLD_* variables mirroring the placeholders."""
    env = {}
    for key, value in values.items():
        env["NINEFOLD_" + key.upper().replace(".", "_").replace("-", "_")] = value
    return env


async def gateways_busy_with(store: Store, backend_key: str) -> list[str]:
    """Living nodes whose gateway has not yet reported `backend_key` as
    draining with nothing in flight."""
    alive = {last_segment(i.key) for i in (await store.list(NODES)).items}
    reports = {
        last_segment(i.key): GatewayReport.decode(i.value)
        for i in (await store.list(GATEWAYS)).items
    }
    busy = []
    for node in sorted(alive):
        report = reports.get(node)
        if report is None:
            continue  # no gateway on that node
        if report.draining.get(backend_key, 1) != 0:
            busy.append(node)
    return busy


class InstanceRunner:
    def __init__(self, ctx: NodeContext, service: str, instance: str, spec: ServiceSpec) -> None:
        self.ctx = ctx
        self.service = service
        self.instance = instance
        self.spec = spec
        self.active_passive = spec.mode == "active-passive"
        self.ports = allocate_ports(ctx.node.address, instance, spec.ports, ctx.taken_ports)
        self.values = placeholder_values(ctx, service, instance, spec, self.ports)
        for name, volume in spec.volumes.items():
            if volume.path is None or volume.replicated:
                Path(self.values[f"volume.{name}"]).mkdir(parents=True, exist_ok=True)
        self.generation = ""
        self.draining = False
        self.role: Role = "standby" if self.active_passive else "replica"
        self.hold: LockHold | None = None
        self.process: SupervisedProcess | None = None
        self.health: HealthMonitor | None = None
        self.check_latency = LatencyHistogram()
        """Every health check's duration, across process restarts (for /metrics)."""
        self._published: bytes | None = None
        self._published_lease = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        """Wakes the status publisher."""
        self._campaign_wake = asyncio.Event()
        """Wakes the active-passive campaign."""
        self.volumes = InstanceVolumes(ctx, service, instance, spec, self.values, self._hook_env)
        self._seeding = False
        """Waiting for the first copy of a replicated volume before starting."""
        self._free_since: float | None = None
        self._stopping = False
        self._gave_up = False
        self._frozen = False
        self._role_lock = asyncio.Lock()

    def _poke(self) -> None:
        self._changed.set()
        self._campaign_wake.set()

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        await self.volumes.load_own_copies()
        first_copies = [] if self.active_passive else await self._first_copies_needed()
        if first_copies:
            self._seeding = True
            self._tasks.append(
                asyncio.create_task(
                    self._seed_then_start(first_copies), name=f"{self.instance} seed"
                )
            )
        elif not self.active_passive or self.spec.standby == "hot":
            await self._start_process()
        self._poke()  # a cold standby has no process event to announce it
        self._tasks.append(
            asyncio.create_task(self._publish_loop(), name=f"{self.instance} status")
        )
        if self.active_passive:
            self._tasks.append(
                asyncio.create_task(self._campaign_loop(), name=f"{self.instance} ap")
            )
        elif self.volumes.replicated:
            self._tasks.append(
                asyncio.create_task(self.volumes.source_loop(), name=f"{self.instance} source")
            )

    async def stop(self, reason: str = "unassigned") -> None:
        """Stop for good: drain, demote (if active), stop the process, drop status."""
        await self._drain()
        self._stopping = True
        log.debug("%s stopping: drained", self.instance)
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        log.debug("%s stopping: tasks ended", self.instance)
        async with self._role_lock:
            await self._drop_vip(f"{self.instance} stopping")
            if self.role == "active":
                await self._run_hook(self.spec.on_demote, "on_demote")
            if self._frozen:
                await self._kill_process()
            await self._stop_process()
            if (self.role == "active" or not self.active_passive) and not self._frozen:
                await self.volumes.hand_over(reason)
            await self.volumes.stop_mirrors()
            await self._release()
        self.ctx.taken_ports.difference_update(self.ports.values())
        with contextlib.suppress(StoreError):
            await self.ctx.store.delete(status_key(self.ctx.node.name, self.instance))
        log.info("%s stopped (%s)", self.instance, reason)

    def backend_key(self) -> str | None:
        port_name = self.spec.route_port()
        if port_name is None or port_name not in self.ports:
            return None
        address = self.ctx.node.address
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{self.ports[port_name]}"

    async def _drain(self) -> None:
        """Take the instance out of every gateway before it is signalled: mark
        it draining, then wait until each living gateway reports nothing in
        flight to it, at most the service's drain timeout."""
        key = self.backend_key()
        if key is None or not self.ctx.lease.lease:
            return
        if not routable(self.status(), self.spec.mode):
            return  # no gateway sends it anything (e.g. a standby)
        self.draining = True
        self._poke()
        deadline = time.monotonic() + self.spec.balance.drain_timeout
        started = time.monotonic()
        waiting: list[str] = []
        reached = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            try:
                waiting = await gateways_busy_with(self.ctx.store, key)
                reached = time.monotonic()
            except StoreError:
                if time.monotonic() - reached > DRAIN_BLIND_FOR:
                    log.warning("%s: store unreachable, stopping without drain", self.instance)
                    return
                continue
            if not waiting:
                log.info("%s drained in %.2fs", self.instance, time.monotonic() - started)
                return
        log.warning("%s: drain timeout, still busy: %s", self.instance, ", ".join(waiting))

    async def fence(self) -> None:
        """The lease is at risk: stop being active before anyone else can be.

        The process group is frozen (SIGSTOP) at once, which is as good a fence
        as a kill while it lasts, and on_demote runs. Most often the store was
        only electing a new leader and renews the same lease a moment later:
        then the instance resumes (on_promote, SIGCONT) without a restart. If
        the lease is gone instead, the frozen process is killed."""
        if not self.active_passive:
            return
        if self.role == "active":
            await self._freeze()  # at once, even while a step holds the role lock
        async with self._role_lock:
            if self.role != "active":
                return
            await self._freeze()  # became active while we waited for the lock
            if self.health is not None:
                await self.health.stop()
            log.warning("%s: froze the active (lease at risk)", self.instance)
            budget = max(0.1, self.ctx.lease.remaining() - 0.3)
            await self._run_hook(self.spec.on_demote, "on_demote", timeout=budget)
            self.role = "standby"
            self._poke()
        await self.ctx.journal.record(
            "demoted", self.instance, "lease at risk: frozen", service=self.service
        )

    async def _freeze(self) -> None:
        """The fence itself, once: the VIP off, the process group stopped."""
        if self._frozen:
            return
        await self._drop_vip("lease at risk")
        await self.volumes.stop_mirrors()  # a fenced active sends nothing more
        if self.process is not None:
            self.process.signal_group(signal.SIGSTOP)
        self._frozen = True

    # -- process -------------------------------------------------------------------
    def _env(self, token: int | None, role: str | None = None) -> dict[str, str]:
        env = {k: render(v, self.values) for k, v in self.spec.env.items()}
        env.update(process_env(self.values))
        env["NINEFOLD_ROLE"] = role or self.role
        if token is not None:
            env["NINEFOLD_FENCING_TOKEN"] = str(token)
        return env

    async def _start_process(self, token: int | None = None, role: str | None = None) -> None:
        spec = self.spec
        assert spec.command is not None  # an external service is never assigned
        process_spec = ProcessSpec(
            name=self.instance,
            argv=[render(a, self.values) for a in spec.command],
            env=self._env(token, role),
            cwd=render(spec.workdir, self.values) if spec.workdir else None,
            stop_signal=int(getattr(signal, spec.stop_signal)),
            stop_timeout=spec.stop_timeout,
            log_dir=self.ctx.log_dir,
        )
        policy = RestartPolicy(
            backoff=spec.restart.backoff,
            backoff_max=spec.restart.backoff_max,
            limit=spec.restart.limit,
            window=spec.restart.window,
        )
        self.process = SupervisedProcess(process_spec, policy, self.ctx.registry, self._on_process)
        self._gave_up = False
        await self.process.start()
        if spec.check is not None:
            check = spec.check
            if check.exec is not None:
                check = check.model_copy(
                    update={"exec": [render(a, self.values) for a in check.exec]}
                )
            self.health = HealthMonitor.from_check(
                check, self.ctx.node.address, self.ports, self._on_health, process_spec.cwd
            )
            self.health.latency = self.check_latency
            await self.health.start()
        self._poke()

    async def _stop_process(self) -> None:
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.process is not None:
            await self.process.stop()
            self.process = None
        self._poke()

    async def _kill_process(self) -> None:
        """Stop at once (SIGKILL): used when fencing, where time is short."""
        if self.process is not None:
            self.process.spec.stop_timeout = 0.0
        await self._stop_process()

    def _on_process(self, event: ProcessEvent) -> None:
        self._poke()
        if event.kind == "failed":
            self._gave_up = True
        if self._stopping:
            return
        kinds = {"exited": "exited", "restarting": "restarted", "failed": "failed"}
        if event.kind == "started":
            asyncio.get_running_loop().create_task(
                self.ctx.journal.record("started", self.instance, "", pid=event.pid)
            )
        elif event.kind in kinds:
            asyncio.get_running_loop().create_task(
                self.ctx.journal.record(
                    kinds[event.kind], self.instance, event.detail, code=event.returncode
                )
            )

    def _on_health(self, state: str) -> None:
        self._poke()
        if not self._stopping:
            asyncio.get_running_loop().create_task(
                self.ctx.journal.record("health", self.instance, state)
            )

    # -- status ---------------------------------------------------------------------
    def status(self) -> InstanceStatus:
        process = self.process
        state: InstanceState
        health: Health
        if self._gave_up:
            state = "failed"
        elif process is None and self._seeding:
            state = "seeding"
        elif process is None:
            state = "standby" if self.active_passive and not self._stopping else "stopped"
        else:
            state = process.state
        if self.health is not None:
            health = self.health.state
        elif process is not None and process.state == "running":
            health = "none"
        else:
            health = "starting"
        return InstanceStatus(
            service=self.service,
            instance=self.instance,
            node=self.ctx.node.name,
            address=self.ctx.node.address,
            ports=self.ports,
            state=state,
            health=health,
            role=self.role,
            fencing_token=self.hold.fencing_token if self.hold else None,
            draining=self.draining,
            generation=self.generation,
            restarts=process.restarts if process else 0,
            pid=process.pid if process else None,
            detail=self.volumes.seeding_detail if self._seeding else "",
        )

    async def _publish_loop(self) -> None:
        while True:
            await wait_event(self._changed, defaults.RESYNC_INTERVAL)
            self._changed.clear()
            lease = self.ctx.lease.lease
            if not lease:
                continue
            status = self.status()
            raw = status.model_dump_json(exclude={"since"}).encode()
            if raw == self._published and lease == self._published_lease:
                continue
            try:
                await self.ctx.store.put(
                    status_key(self.ctx.node.name, self.instance), status.encode(), lease
                )
            except StoreError as exc:
                log.debug("status of %s not written: %s", self.instance, exc)
                self._poke()
                await asyncio.sleep(0.2)
                continue
            self._published, self._published_lease = raw, lease

    def republish(self) -> None:
        self._published = None
        self._poke()

    # -- active-passive -----------------------------------------------------------------
    async def _campaign_loop(self) -> None:
        key = lock_key(active_lock(self.service))
        watches = [
            asyncio.create_task(self._watch_lock(key)),
            asyncio.create_task(self._watch_switchover()),
        ]
        try:
            while True:
                await wait_event(self._campaign_wake, 0.5)
                self._campaign_wake.clear()
                try:
                    await self._campaign_step()
                except StoreError as exc:
                    log.debug("%s campaign: %s", self.instance, exc)
        finally:
            await cancel_and_wait(*watches)

    async def _watch_lock(self, key: str) -> None:
        while True:
            try:
                async with contextlib.aclosing(self.ctx.store.watch(key)) as events:
                    async for _event in events:
                        self._poke()
            except StoreError:
                pass
            await asyncio.sleep(0.2)

    async def _campaign_step(self) -> None:
        """One active-passive step: read, decide (decide/failover.py), do.

        The store is read before the role lock is taken: a fence must never
        wait behind a request to a store that has stopped answering."""
        read_lease = self.ctx.lease.lease
        read_as_active = self.role == "active" and not self._frozen
        request = None if self._frozen else await self._switchover_request()
        lock: LockHold | None = None
        before = self._view(request, None, False, read_lease, read_as_active)
        lock_known = needs_lock(before)
        fresher = False
        if lock_known:
            lock = await self.ctx.store.lock_holder(active_lock(self.service))
            if lock is not None:
                tokens = self.volumes
                tokens.highest_token = max(tokens.highest_token, lock.fencing_token)
                self._free_since = None
            else:
                self._free_since = self._free_since or time.monotonic()
                fresher = await self.volumes.fresher_copy_elsewhere()
        async with self._role_lock:
            view = self._view(request, lock, lock_known, read_lease, read_as_active, fresher)
            await self._carry_out(ap_step(view))

    def _view(
        self,
        request: dict[str, str | None] | None,
        lock: LockHold | None,
        lock_known: bool,
        read_lease: int,
        read_as_active: bool,
        fresher: bool = False,
    ) -> ApView:
        process = self.process
        return ApView(
            me=self.holder,
            node=self.ctx.node.name,
            role="active" if self.role == "active" else "standby",
            frozen=self._frozen,
            gave_up=self._gave_up,
            standby=self.spec.standby,
            has_process=process is not None,
            process_failed=process is not None and process.state == "failed",
            running=process is not None and process.state == "running",
            health=self.health.state if self.health is not None else None,
            lease=self.ctx.lease.lease,
            my_token=self.hold.fencing_token if self.hold is not None else None,
            lock=LockView(lock.holder, lock.lease, lock.fencing_token) if lock else None,
            lock_known=lock_known,
            read_lease=read_lease,
            switchover=Switchover(request.get("from"), request.get("to")) if request else None,
            read_as_active=read_as_active,
            fresher_copy_elsewhere=fresher,
            free_for=time.monotonic() - self._free_since if self._free_since else 0.0,
            fresher_grace=defaults.FRESHER_COPY_GRACE,
        )

    async def _carry_out(self, action: ApAction) -> None:
        """Do what the decider said (under the role lock)."""
        kind = action.kind
        if kind == "resume":
            await self._resume()
        elif kind == "kill-fenced":
            self._frozen = False
            await self._kill_process()
            self.hold = None
            self._poke()
            await self.ctx.journal.record("fenced", self.instance, action.reason)
        elif kind == "restart-standby":
            await self._start_process()
        elif kind == "demote":
            await self._demote(action.reason, release=action.release)
        elif kind == "stand-by":
            self._last_holder = action.holder
        elif kind == "campaign":
            hold = await self.ctx.store.try_lock(
                active_lock(self.service), self.holder, self.ctx.lease.lease
            )
            if hold is not None:
                await self._promote(hold)

    async def _resume(self) -> None:
        """A frozen active whose lease, and so its lock, survived: on again
        without a restart."""
        hold = self.hold
        assert hold is not None
        self._frozen = False
        await self._run_hook(self.spec.on_promote, "on_promote", role="active")
        if self.process is not None:
            self.process.signal_group(signal.SIGCONT)
        if self.health is not None:
            await self.health.start()
        self.role = "active"
        self._poke()
        await self._take_vip()
        await self.volumes.start_mirrors(hold.fencing_token)
        await self.ctx.journal.record(
            "resumed", self.instance, "lease renewed", token=hold.fencing_token
        )

    @property
    def holder(self) -> str:
        return f"{self.ctx.node.name}/{self.instance}"

    async def _watch_switchover(self) -> None:
        while True:
            self._switchover_seen = False  # re-read after every (re)connect
            try:
                key = switchover_key(self.service)
                async with contextlib.aclosing(self.ctx.store.watch(key)) as events:
                    async for _event in events:
                        self._switchover_seen = False
                        self._poke()
            except StoreError:
                pass
            await asyncio.sleep(0.2)

    _switchover_seen = False
    _switchover: dict[str, str | None] | None = None

    async def _switchover_request(self) -> dict[str, str | None] | None:
        """A pending switchover of this service (put by the API under a short
        lease, so a forgotten one goes away by itself). Read again only when
        its key changed."""
        if self._switchover_seen:
            return self._switchover
        item = await self.ctx.store.get(switchover_key(self.service))
        request = None
        if item is not None:
            with contextlib.suppress(ValueError):
                request = json.loads(item.value)
        self._switchover = request if isinstance(request, dict) else None
        self._switchover_seen = True
        return self._switchover

    _last_holder: str | None = None

    async def _promote(self, hold: LockHold) -> None:
        """Become active: start (cold), run on_promote, and only then say so,
        so no gateway routes to an active whose promotion is not done."""
        self.hold = hold  # from now on no push is taken into this copy
        if self.ctx.abort_transfers is not None and self.volumes.replicated:
            self.ctx.abort_transfers(self.service)
        if self.process is None:  # cold standby starts now, with its token
            await self._start_process(hold.fencing_token, role="active")
        await self._run_hook(self.spec.on_promote, "on_promote", role="active")
        self.role = "active"
        self._poke()
        await self._take_vip()
        await self.volumes.start_mirrors(hold.fencing_token)
        asked = self._switchover is not None
        with contextlib.suppress(StoreError):
            await self.ctx.store.delete(switchover_key(self.service))
        old = self._last_holder
        self._last_holder = self.holder
        if not old or old == self.holder:
            kind = "promoted"
        else:
            kind = "switchover" if asked else "failover"
        await self.ctx.journal.record(
            kind,
            self.service,
            f"{old} -> {self.holder}" if kind != "promoted" else f"{self.holder} is active",
            old_active=old,
            new_active=self.holder,
            token=hold.fencing_token,
        )

    async def _demote(self, reason: str, release: bool) -> None:
        await self._drop_vip(f"{self.instance} demoted")
        await self._run_hook(self.spec.on_demote, "on_demote")
        await self._stop_process()
        if release:  # still the lock's holder: hand the last changes over first
            await self.volumes.hand_over(reason)
        await self.volumes.stop_mirrors()
        if release:
            await self._release()
        self.hold = None
        self.role = "standby"
        self._poke()
        await self.ctx.journal.record("demoted", self.instance, reason, service=self.service)

    # -- replicated volumes ---------------------------------------------------------
    def receives(self, volume: str, token: int) -> Path | None:
        """Where a push of `volume` from a source with `token` lands on this
        node (instance_volumes.py); never into an active's copy, nor a frozen one's."""
        may = self.role != "active" and self.hold is None and not self._frozen
        return self.volumes.receives(volume, token, may)

    def _hook_env(self) -> dict[str, str]:
        return self._env(self.hold.fencing_token if self.hold else None)

    async def _first_copies_needed(self) -> list[str]:
        for attempt in range(10):
            try:
                return await self.volumes.needs_first_copy()
            except StoreError:
                await asyncio.sleep(0.1 * (attempt + 1))
        log.warning("%s: store unreachable; starting without checking for a first copy",
                    self.instance)  # fmt: skip
        return []

    async def _seed_then_start(self, volumes: list[str]) -> None:
        """A replicated instance on a node with no copy: its first copy, then its process."""
        log.info("%s: waiting for the first copy of %s", self.instance, ", ".join(volumes))
        await self.volumes.wait_first_copies(volumes, self._poke)
        self._seeding = False
        await self._start_process()
        self._poke()

    async def _take_vip(self) -> None:
        """The active holds the service's VIP (once its promotion is done)."""
        if self.spec.vip is not None and self.ctx.addresses is not None:
            await self.ctx.addresses.take(self.spec.vip, self.instance)

    async def _drop_vip(self, reason: str) -> None:
        if self.spec.vip is not None and self.ctx.addresses is not None:
            await self.ctx.addresses.drop(self.spec.vip.ip, reason)

    async def _release(self) -> None:
        if self.hold is not None:
            with contextlib.suppress(StoreError):
                await self.ctx.store.unlock(self.hold)
            self.hold = None

    async def _run_hook(
        self,
        argv: list[str] | None,
        name: str,
        timeout: float = defaults.HOOK_TIMEOUT,
        role: str | None = None,
    ) -> None:
        if not argv:
            return
        token = self.hold.fencing_token if self.hold else None
        env = self._env(token, role)
        env["NINEFOLD_HOOK"] = name
        started = time.monotonic()
        code = await run_hook(
            [render(a, self.values) for a in argv],
            env,
            render(self.spec.workdir, self.values) if self.spec.workdir else None,
            timeout,
            self.ctx.log_dir / f"{self.instance}.log",
        )
        if code != 0:
            await self.ctx.journal.record(
                "hook-failed", self.instance, f"{name} exited {code}", service=self.service
            )
        log.info("%s %s exited %s in %.2fs", self.instance, name, code, time.monotonic() - started)
