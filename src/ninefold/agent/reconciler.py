"""Makes this node's processes match its assignments."""

from __future__ import annotations

import asyncio
import logging

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.agent.instance import InstanceRunner, NodeContext
from ninefold.spec import ClusterSpec, ServiceSpec
from ninefold.state.keys import SPEC_KEY, last_segment, node_assignments, node_statuses
from ninefold.state.reads import read_spec
from ninefold.state.records import AssignmentRecord

log = logging.getLogger("ninefold.reconciler")


class Reconciler:
    def __init__(self, ctx: NodeContext, bootstrap_spec: ClusterSpec) -> None:
        self.ctx = ctx
        self.spec = bootstrap_spec
        self.runners: dict[str, InstanceRunner] = {}
        self._prefix = node_assignments(ctx.node.name)
        self._signal = ChangeSignal(ctx.store, self._prefix, SPEC_KEY)

    def poke(self) -> None:
        """Reconcile now (after the lease came back: changes seen meanwhile
        were skipped)."""
        self._signal.poke()

    async def run(self) -> None:
        await run_level_triggered(self._signal, self.step, "reconcile")

    async def step(self) -> None:
        if not self.ctx.lease.valid:
            return
        self.spec = await read_spec(self.ctx.store, self.spec)
        listing = await self.ctx.store.list(self._prefix)
        desired = {}
        for item in listing.items:
            record = AssignmentRecord.decode(item.value)
            if record.service in self.spec.services:
                desired[record.instance] = record
        for instance in sorted(set(self.runners) - set(desired)):
            await self._stop(instance, "unassigned")
        for instance, record in sorted(desired.items()):
            wanted = self.spec.services[record.service]
            runner = self.runners.get(instance)
            if runner is not None and runner.generation != record.generation:
                await self._stop(instance, "new generation")
                runner = None
            if runner is None:
                await self._start(record, wanted)
        await self._drop_stale_status(set(desired))

    async def _start(self, record: AssignmentRecord, spec: ServiceSpec) -> None:
        try:
            runner = InstanceRunner(self.ctx, record.service, record.instance, spec)
            runner.generation = record.generation
        except (RuntimeError, OSError) as exc:
            await self.ctx.journal.record("start-failed", record.instance, str(exc))
            return
        self.runners[record.instance] = runner
        await runner.start()
        log.info("%s started on %s", record.instance, self.ctx.node.name)

    async def _stop(self, instance: str, reason: str) -> None:
        runner = self.runners.pop(instance)
        log.info("%s stopping (%s)", instance, reason)
        await runner.stop(reason)
        await self.ctx.journal.record("stopped", instance, reason)

    async def _drop_stale_status(self, desired: set[str]) -> None:
        """Status left by an earlier agent of this node for instances gone since."""
        listing = await self.ctx.store.list(node_statuses(self.ctx.node.name))
        for item in listing.items:
            if last_segment(item.key) not in desired and last_segment(item.key) not in self.runners:
                await self.ctx.store.delete(item.key)

    async def fence(self) -> None:
        for runner in list(self.runners.values()):
            await runner.fence()

    def republish(self) -> None:
        for runner in self.runners.values():
            runner.republish()

    async def stop_all(self) -> None:
        """Stop (and drain) every instance at once: shutting down takes the
        longest drain, not the sum of them."""
        stops = [self._stop(instance, "agent shutdown") for instance in sorted(self.runners)]
        await asyncio.gather(*stops, return_exceptions=True)
