"""Keeps this node's gateway routing by the cluster's current state, and tells
instances being drained what it still has in flight to them."""

from __future__ import annotations

import logging

from ninefold import defaults
from ninefold.agent.changes import ChangeSignal
from ninefold.agent.leader import read_spec
from ninefold.agent.membership import LeaseKeeper
from ninefold.agent.records import (
    SPEC_KEY,
    STATUS,
    GatewayReport,
    InstanceStatus,
    gateway_key,
)
from ninefold.gateway.engine import Engine
from ninefold.gateway.routes import RoutingTable, build_table
from ninefold.spec import ClusterSpec
from ninefold.store.base import Store, StoreError

log = logging.getLogger("ninefold.gateway")

DRAIN_POLL = 0.05
"""How often in-flight counts are re-read while something drains."""


class GatewayFeed:
    def __init__(
        self, store: Store, node: str, lease: LeaseKeeper, engine: Engine, spec: ClusterSpec
    ) -> None:
        self._store = store
        self._node = node
        self._lease = lease
        self.engine = engine
        self._spec = spec
        self.table = RoutingTable()
        self._reported: GatewayReport | None = None
        self._reported_lease = 0

    async def run(self) -> None:
        signal = ChangeSignal(self._store, STATUS, SPEC_KEY)
        signal.start()
        try:
            while True:
                draining = any(b.draining for s in self.table.services.values() for b in s.backends)
                await signal.wait(DRAIN_POLL if draining else defaults.RESYNC_INTERVAL)
                try:
                    await self.step()
                except StoreError as exc:
                    log.debug("gateway feed: %s", exc)
        finally:
            await signal.stop()

    async def step(self) -> None:
        self._spec = await read_spec(self._store, self._spec)
        listing = await self._store.list(STATUS)
        statuses = [InstanceStatus.decode(i.value) for i in listing.items]
        table = build_table(self._spec, statuses)
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


def choose_engine(name: str) -> type[Engine]:
    """The engine class for `gateway.engine` (auto: haproxy when installed)."""
    if name == "auto":
        from ninefold.gateway.haproxy import haproxy_available

        name = "haproxy" if haproxy_available() else "builtin"
    if name == "haproxy":
        from ninefold.gateway.haproxy import HaproxyEngine

        return HaproxyEngine
    from ninefold.gateway.builtin import BuiltinEngine

    return BuiltinEngine
