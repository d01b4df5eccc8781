"""Keeps this node's gateway routing by the cluster's current state, and tells
instances being drained what it still has in flight to them."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging

from ninefold import defaults
from ninefold.agent.changes import ChangeSignal
from ninefold.agent.journal import EventJournal
from ninefold.agent.membership import LeaseKeeper
from ninefold.gateway.engine import Engine, GatewaySettings
from ninefold.gateway.policies import AccessPolicies
from ninefold.gateway.routes import RoutingTable, build_table
from ninefold.spec import ClusterSpec
from ninefold.state.keys import SPEC_KEY, STATUS, external_key, gateway_key
from ninefold.state.reads import read_spec
from ninefold.state.records import ExternalReport, GatewayReport, InstanceStatus
from ninefold.store.base import Store, StoreError
from ninefold.supervisor import LeftoverRegistry

log = logging.getLogger("ninefold.gateway")

DRAIN_POLL = 0.05
"""How often in-flight counts are re-read while something drains."""


class GatewayFeed:
    def __init__(
        self,
        store: Store,
        node: str,
        lease: LeaseKeeper,
        engine: Engine,
        spec: ClusterSpec,
        journal: EventJournal | None = None,
    ) -> None:
        self._store = store
        self._journal = journal or EventJournal(store, node)
        self._policies = AccessPolicies()
        self._node = node
        self._lease = lease
        self.engine = engine
        self._spec = spec
        self.table = RoutingTable()
        self._reported: GatewayReport | None = None
        self._reported_lease = 0
        self._configured: ClusterSpec | None = spec

    async def run(self) -> None:
        signal = ChangeSignal(self._store, STATUS, SPEC_KEY, external_key(self._node))
        signal.start()
        try:
            while True:
                draining = any(b.draining for s in self.table.services.values() for b in s.backends)
                await signal.wait(DRAIN_POLL if draining else defaults.RESYNC_INTERVAL)
                try:
                    await self.step()
                except StoreError as exc:
                    log.debug("gateway feed: %s", exc)
                except Exception:  # the engine refused a table: keep trying
                    log.exception("gateway could not apply the routing table")
                    await asyncio.sleep(1.0)
        finally:
            await signal.stop()

    async def step(self) -> None:
        self._spec = await read_spec(self._store, self._spec)
        listing = await self._store.list(STATUS)
        statuses = [InstanceStatus.decode(i.value) for i in listing.items]
        policies = await self._policies.update(self._spec, self._journal)
        seen = []  # what this node's own checks see of external endpoints
        if any(s.is_external for s in self._spec.services.values()):
            external = await self._store.get(external_key(self._node))
            seen = ExternalReport.decode(external.value).endpoints if external is not None else []
        table = build_table(self._spec, statuses, policies, self._node, seen)
        set_checks = getattr(self.engine, "set_checks", None)
        if set_checks is not None and self._spec is not self._configured:
            from ninefold.gateway.haproxy import checks_for

            await set_checks(checks_for(self._spec))
            self._configured = self._spec
        if table != self.table:
            await self.engine.apply(table)
            self.table = table
        await self._report()

    async def _report(self) -> None:
        lease = self._lease.lease
        if not lease:
            return
        report = GatewayReport(
            node=self._node,
            draining={
                b.key: self.engine.inflight(b.key)
                for s in self.table.services.values()
                for b in s.backends
                if b.draining
            },
        )
        if report == self._reported and lease == self._reported_lease:
            return
        await self._store.put(gateway_key(self._node), report.encode(), lease)
        self._reported, self._reported_lease = report, lease


def engine_name(name: str) -> str:
    """The engine `gateway.engine` means here (auto: haproxy when installed)."""
    if name == "auto":
        from ninefold.gateway.haproxy import haproxy_available

        return "haproxy" if haproxy_available() else "builtin"
    return name


def make_engine(spec: ClusterSpec, settings: GatewaySettings, registry: LeftoverRegistry) -> Engine:
    """The node's gateway engine, configured from the spec."""
    if settings.tls is None and spec.gateway.tls is not None:
        settings = dataclasses.replace(settings, tls=spec.gateway.tls)
    if engine_name(spec.gateway.engine) == "haproxy":
        from ninefold.gateway.haproxy import HaproxyEngine, checks_for

        # Sticky cookies name instances by a keyed hash; the same key on every
        # node keeps a client on its instance whichever gateway it reaches.
        key = hashlib.sha256(f"ninefold-sticky/{spec.cluster}".encode()).hexdigest()[:32]
        return HaproxyEngine(settings, checks_for(spec), registry=registry, cookie_key=key)
    from ninefold.gateway.builtin import BuiltinEngine

    return BuiltinEngine(settings)
