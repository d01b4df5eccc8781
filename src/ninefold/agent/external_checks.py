"""Checks the external services' endpoints from this node and writes what it
sees under its lease (`external/<node>`), which this node's gateway routes by
and `ninefold status` shows. Why every node checks for itself:
decide/external.py."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.agent.journal import EventJournal
from ninefold.agent.membership import LeaseKeeper
from ninefold.decide.external import EndpointTarget, check_argv, endpoint_targets
from ninefold.health import HealthMonitor
from ninefold.spec import ClusterSpec
from ninefold.spec.models import CheckSpec
from ninefold.state.keys import SPEC_KEY, external_key
from ninefold.state.reads import read_spec
from ninefold.state.records import EndpointHealth, ExternalReport
from ninefold.store.base import Store, StoreError

log = logging.getLogger("ninefold.external")

RESOLVE_TIMEOUT = 2.0
"""How long a host name's lookup may take before the last address is kept."""


@dataclass
class _Watched:
    target: EndpointTarget
    check: CheckSpec
    monitor: HealthMonitor
    since: float
    """Wall-clock time of its last change of verdict."""
    address: str
    """What the monitor checks and the gateway routes to ("": not resolved)."""


class ExternalChecks:
    """One health monitor per external endpoint, kept in line with the spec."""

    def __init__(
        self,
        store: Store,
        node: str,
        lease: LeaseKeeper,
        journal: EventJournal,
        spec: ClusterSpec,
    ) -> None:
        self._store, self._node, self._lease, self._journal = store, node, lease, journal
        self._spec = spec
        self._watched: dict[tuple[str, str], _Watched] = {}
        self._changes: list[tuple[EndpointTarget, str, str]] = []
        """(endpoint, new state, the check's detail) not yet in the journal."""
        self._signal = ChangeSignal(store, SPEC_KEY)
        self._reported: ExternalReport | None = None
        self._reported_lease = 0

    async def republish(self) -> None:
        """Write the report again soon (a new lease: the old one took it away)."""
        self._signal.poke()

    def health(self) -> dict[str, str]:
        """Endpoint name (`service@host:port`) -> this node's verdict."""
        return {w.target.name: w.monitor.state for w in self._watched.values()}

    async def run(self) -> None:
        try:
            await run_level_triggered(self._signal, self.step, "external checks")
        finally:
            for watched in list(self._watched.values()):
                await watched.monitor.stop()
            self._watched.clear()

    async def step(self) -> None:
        self._spec = await read_spec(self._store, self._spec)
        await self._follow_spec()
        for target, state, detail in self._changes:
            kind = "endpoint-up" if state == "healthy" else "endpoint-down"
            await self._journal.record(kind, target.name, detail, service=target.service)
        self._changes.clear()
        await self._report()

    async def _follow_spec(self) -> None:
        """A monitor for every endpoint of the spec, on the address this node
        reaches it by: started for a new endpoint, restarted when its check or
        its address changed, stopped when the spec dropped it."""
        wanted = {}
        for target in endpoint_targets(self._spec):
            service = self._spec.services[target.service]
            wanted[(target.service, target.endpoint)] = (target, service.external_check())
        for key, old in list(self._watched.items()):
            if key not in wanted or wanted[key][1] != old.check:
                await self._drop(key)
        for key, (target, check) in wanted.items():
            watched = self._watched.get(key)
            address = await self._address(target, watched.address if watched is not None else "")
            if watched is not None and watched.address == address:
                continue
            if watched is not None:
                await self._drop(key)
            service = self._spec.services[target.service]
            argv = check_argv(service, target, self._node)
            spec_check = check if argv is None else check.model_copy(update={"exec": argv})
            monitor = HealthMonitor.from_check(
                spec_check, address or target.host, {"main": target.port}, self._on_change(target)
            )
            self._watched[key] = _Watched(target, check, monitor, time.time(), address)
            await monitor.start()

    async def _drop(self, key: tuple[str, str]) -> None:
        watched = self._watched.pop(key)
        await watched.monitor.stop()

    @staticmethod
    async def _address(target: EndpointTarget, last: str) -> str:
        """The address this node reaches the endpoint's host by: the host for
        an IP literal, else the first address the resolver gives (as a
        client's connect would try first). The check connects to it and the
        gateway routes to it, so both see the same server (and HAProxy's
        runtime API takes addresses, not names). A failed lookup keeps `last`
        ("": never resolved, the check then tries the name and says why it
        fails)."""
        host = target.host
        if _is_ip(host):
            return host
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
            if infos:
                return str(infos[0][4][0])
        return last

    def _on_change(self, target: EndpointTarget) -> Callable[[str], None]:
        return lambda state: self._changed(target, state)

    def _changed(self, target: EndpointTarget, state: str) -> None:
        watched = self._watched.get((target.service, target.endpoint))
        if watched is None:
            return
        watched.since = time.time()
        result = watched.monitor.last_result
        detail = result.detail if result is not None else ""
        if state != "starting":
            log.info("%s: %s (%s)", target.name, state, detail)
            self._changes.append((target, state, detail))
        self._signal.poke()

    async def _report(self) -> None:
        lease = self._lease.lease
        if not lease:
            return
        report = ExternalReport(
            node=self._node,
            endpoints=[
                EndpointHealth(
                    service=w.target.service,
                    endpoint=w.target.endpoint,
                    address=w.address,
                    health=w.monitor.state,
                    since=round(w.since, 3),
                    detail=w.monitor.last_result.detail if w.monitor.last_result else "",
                )
                for w in self._watched.values()
            ],
        )
        if not report.endpoints and self._reported is None:
            return
        if self._same(report) and lease == self._reported_lease:
            return
        try:
            await self._store.put(external_key(self._node), report.encode(), lease)
        except StoreError as exc:
            log.debug("external report: %s", exc)
            return
        self._reported, self._reported_lease = report, lease

    def _same(self, report: ExternalReport) -> bool:
        """Whether `report` says what the last one written did: verdicts and
        addresses, not the checks' changing details (no write per check)."""
        if self._reported is None:
            return False

        def gist(r: ExternalReport) -> list[tuple[str, str, str, str]]:
            return [(e.service, e.endpoint, e.address, e.health) for e in r.endpoints]

        return gist(report) == gist(self._reported)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
