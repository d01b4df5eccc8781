"""The floating addresses this node holds now, kept alive by its lease.

Whoever decided this node should hold a VIP (the gateway VIP keeper, or an
active-passive instance that was promoted) calls `take`; losing the lock, the
lease at risk, or shutting down calls `drop`. Each acknowledged lease renewal
renews the addresses' kernel lifetimes (`renewed`), so an agent that stops
renewing loses them by itself (see `ninefold.vip`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ninefold import defaults
from ninefold.agent.journal import EventJournal
from ninefold.spec.vip import VipSpec
from ninefold.vip import (
    Interface,
    VipError,
    add_address,
    interfaces,
    pick_interface,
    remove_address,
    send_garp,
)

log = logging.getLogger("ninefold.vip")

INTERFACE_RECHECK = 10.0
"""Seconds a found (or missing) interface for a VIP is believed before looking again."""


@dataclass
class HeldAddress:
    vip: VipSpec
    interface: Interface
    owner: str
    """Who asked for it: `gateway` or an instance name."""
    since: float
    renewed: float
    announcing: asyncio.Task[None] | None = field(default=None, repr=False)


async def _interface_for(vip: VipSpec) -> Interface:
    """This node's interface for `vip`; VipError saying why there is none."""
    iface = pick_interface(await interfaces(), vip.address, vip.interface)
    if iface is None:
        where = vip.interface or f"an address in {vip.network}"
        raise VipError(f"no interface with {where} on this node")
    return iface


class FloatingAddresses:
    def __init__(
        self, journal: EventJournal | None, lifetime: int = defaults.VIP_ADDRESS_LIFETIME
    ) -> None:
        self._journal = journal
        self._lifetime = lifetime
        self._held: dict[str, HeldAddress] = {}
        self._lock = asyncio.Lock()
        self._renewing: asyncio.Task[None] | None = None
        self._last_failure: dict[str, str] = {}
        self._journaling: set[asyncio.Task[object]] = set()
        self._can_hold: dict[tuple[str, str | None], tuple[bool, float]] = {}

    def holds(self, ip: str) -> bool:
        return ip in self._held

    def held(self) -> dict[str, str]:
        """ip -> owner of every address held now."""
        return {ip: h.owner for ip, h in self._held.items()}

    async def can_hold(self, vip: VipSpec) -> bool:
        """Whether this node has an interface for `vip` (looked up now and then)."""
        key, now = (vip.address, vip.interface), time.monotonic()
        cached = self._can_hold.get(key)
        if cached is not None and now - cached[1] < INTERFACE_RECHECK:
            return cached[0]
        try:
            await _interface_for(vip)
            found = True
        except VipError as exc:
            self._failed(vip.ip, str(exc))
            found = False
        self._can_hold[key] = (found, now)
        return found

    async def take(self, vip: VipSpec, owner: str) -> bool:
        """Put `vip` on this node's interface and announce it; False (with an
        event saying why) when this node cannot hold it."""
        async with self._lock:
            if vip.ip in self._held:
                self._held[vip.ip].owner = owner
                return True
            try:
                iface = await _interface_for(vip)
                await add_address(vip.address, iface.name, self._lifetime)
            except VipError as exc:
                self._can_hold[(vip.address, vip.interface)] = (False, time.monotonic())
                self._failed(vip.ip, str(exc))
                return False
            now = time.monotonic()
            held = HeldAddress(vip, iface, owner, since=now, renewed=now)
            self._held[vip.ip] = held
            self._last_failure.pop(vip.ip, None)
            held.announcing = self._announce(held)
        log.info("vip %s up on %s (%s)", vip.address, iface.name, owner)
        self._record("vip-up", vip.ip, f"on {iface.name} for {owner}")
        return True

    async def drop(self, ip: str, reason: str) -> None:
        """Take `ip` off this node (no-op if it is not held)."""
        async with self._lock:
            held = self._held.pop(ip, None)
            if held is None:
                return
            if held.announcing is not None:
                held.announcing.cancel()
            try:
                await remove_address(held.vip.address, held.interface.name)
            except VipError as exc:
                # It is off our books either way; its lifetime ends it within a second.
                log.error("vip %s: %s", ip, exc)
        log.info("vip %s down (%s)", ip, reason)
        self._record("vip-down", ip, reason)

    async def drop_all(self, reason: str) -> None:
        for ip in list(self._held):
            await self.drop(ip, reason)

    def renewed(self) -> None:
        """The lease was just renewed: renew the addresses' lifetimes (in the background)."""
        if self._held and (self._renewing is None or self._renewing.done()):
            self._renewing = asyncio.create_task(self._renew(), name="vip-renew")

    async def _renew(self) -> None:
        async with self._lock:
            now = time.monotonic()
            for held in self._held.values():
                try:
                    await add_address(held.vip.address, held.interface.name, self._lifetime)
                except VipError as exc:
                    log.error("vip %s: %s", held.vip.ip, exc)
                    continue
                if now - held.renewed > self._lifetime * 0.9:
                    # The kernel may have taken it off meanwhile: announce it again.
                    log.warning("vip %s renewed %.2fs late", held.vip.ip, now - held.renewed)
                    held.announcing = self._announce(held)
                held.renewed = now

    def _announce(self, held: HeldAddress) -> asyncio.Task[None]:
        if held.announcing is not None:
            held.announcing.cancel()
        vip = held.vip
        return asyncio.create_task(
            self._garp(held.interface, vip.ip, vip.garp_count, vip.garp_interval),
            name=f"garp {vip.ip}",
        )

    @staticmethod
    async def _garp(iface: Interface, ip: str, count: int, interval: float) -> None:
        try:
            await send_garp(iface.name, iface.mac, ip, count, interval)
        except OSError as exc:
            log.error("gratuitous ARP for %s on %s: %s", ip, iface.name, exc)

    def _failed(self, ip: str, message: str) -> None:
        if self._last_failure.get(ip) == message:
            return  # said once is enough
        self._last_failure[ip] = message
        log.error("vip %s: %s", ip, message)
        self._record("vip-failed", ip, message)

    def _record(self, kind: str, ip: str, reason: str) -> None:
        """Journal in the background: a store that does not answer (the very
        reason for a drop, often) must not hold up the next address."""
        if self._journal is None:
            return
        task = asyncio.create_task(self._journal.record(kind, ip, reason))
        self._journaling.add(task)
        task.add_done_callback(self._journaling.discard)
