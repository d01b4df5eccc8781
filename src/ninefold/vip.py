"""Floating addresses: putting a VIP on an interface, announcing it, taking it off.

Deciding who holds a VIP is decide/vip.py (`vip_step`); this module does it,
through iproute2 (`ip addr`) and a raw packet socket for gratuitous ARP.

Every VIP is added with a short kernel lifetime (`valid_lft`) that the agent
renews after each acknowledged lease renewal. An agent that is killed or hangs
stops renewing, and the kernel removes the address by itself a second or so
later, before the agent's lease can expire in the store and another node take
the VIP. The address is a lease of its own, enforced where the packets are.

A planned move of the gateway VIP hands it over through a short window in
which the old holder, without the address, still accepts what stale ARP
caches send to it (`accept_stale`): see `ninefold.agent.gateway_vip`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger("ninefold.vip")

ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6


class VipError(Exception):
    """An address could not be added, removed or announced; the message says why."""


# --- ARP -----------------------------------------------------------------------------


def garp_frame(mac: bytes, ip: str) -> bytes:
    """A gratuitous ARP request: 'who has IP? tell IP', sent from `mac` to
    everyone, which makes every listener update (not create) its entry for IP."""
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    addr = socket.inet_aton(ip)
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + addr + b"\x00" * 6 + addr
    return ethernet + arp


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


async def send_garp(interface: str, mac: bytes, ip: str, count: int, interval: float) -> None:
    """Send `count` gratuitous ARPs for `ip`, `interval` seconds apart."""
    frame = garp_frame(mac, ip)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.setblocking(False)
        sock.bind((interface, ETH_P_ARP))
        loop = asyncio.get_running_loop()
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            await loop.sock_sendall(sock, frame)
    finally:
        sock.close()


# --- iproute2 --------------------------------------------------------------------------


async def _ip(*args: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise VipError("the `ip` command (iproute2) is not installed") from None
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise VipError(f"ip {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode()


@dataclass(frozen=True)
class Interface:
    name: str
    mac: bytes
    addresses: tuple[str, ...]
    """IPv4 addresses with their prefix, e.g. 10.99.0.11/24."""


async def interfaces() -> list[Interface]:
    """This network namespace's interfaces that are up, with their IPv4 addresses."""
    data = json.loads(await _ip("-j", "addr", "show"))
    out = []
    for link in data:
        if "UP" not in link.get("flags", []) or link.get("link_type") == "loopback":
            continue
        try:
            mac = parse_mac(link.get("address", ""))
        except ValueError:
            continue
        addresses = tuple(
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
        )
        out.append(Interface(link["ifname"], mac, addresses))
    return out


def pick_interface(found: list[Interface], address: str, wanted: str | None) -> Interface | None:
    """The interface to hold `address` (with prefix): the one named, else the
    one with an address of its own in the VIP's subnet."""
    if wanted is not None:
        return next((iface for iface in found if iface.name == wanted), None)
    vip = ipaddress.ip_interface(address)
    for iface in found:
        for own in map(ipaddress.ip_interface, iface.addresses):
            if own.ip in vip.network and own.ip != vip.ip:
                return iface
    return None


async def add_address(address: str, interface: str, lifetime: int) -> None:
    """Add (or renew the lifetime of) `address` on `interface`."""
    lft = str(lifetime)
    await _ip("addr", "replace", address, "dev", interface, "valid_lft", lft, "preferred_lft", lft)


async def remove_address(address: str, interface: str) -> bool:
    """Take `address` off `interface`; False if it was not there."""
    try:
        await _ip("addr", "del", address, "dev", interface)
    except VipError as exc:
        gone = ("Cannot assign requested address", "Address not found", "No such device")
        if any(text in str(exc) for text in gone):
            return False
        raise
    return True


# --- nftables: answering stale ARP caches during a handover -----------------------------

STALE_MAP = "stale"
BOUNCE_MAP = "bounce"
BOUNCE_MARK = 0x6E66
"""Conntrack mark of connections the new holder passes back to the old one."""


def handover_table(node: str) -> str:
    """This node's nftables table for handovers (one per node: cluster tests
    run several agents in one network namespace)."""
    return "ninefold_vip_" + re.sub(r"[^A-Za-z0-9_]", "_", node)


def accept_stale_script(table: str, vip: str, local: str, seconds: float) -> str:
    """The nft transaction behind `accept_stale`: idempotent (the chain is
    rebuilt, the map emptied), the element expiring in the kernel by itself."""
    ms = max(1, round(seconds * 1000))
    return (
        f"table ip {table} {{\n"
        f"  map {STALE_MAP} {{ type ipv4_addr : ipv4_addr; flags timeout; }}\n"
        f"  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
        f"}}\n"
        f"flush chain ip {table} prerouting\n"
        f"flush map ip {table} {STALE_MAP}\n"
        f"add rule ip {table} prerouting dnat ip to ip daddr map @{STALE_MAP}\n"
        f"add element ip {table} {STALE_MAP} {{ {vip} timeout {ms}ms : {local} }}\n"
    )


async def _nft(*args: str, script: str | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            "nft",
            *args,
            stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise VipError("the `nft` command (nftables) is not installed") from None
    out, err = await proc.communicate(script.encode() if script is not None else None)
    if proc.returncode != 0:
        first = err.decode(errors="replace").strip().splitlines()
        raise VipError(f"nft {' '.join(args)}: {first[0] if first else proc.returncode}")
    return out.decode()


async def accept_stale(table: str, vip: str, local: str, seconds: float) -> None:
    """For `seconds`, deliver to this node (at `local`, one of its own
    addresses) new connections to `vip` that still arrive here although the
    address is gone: clients whose ARP cache still names this node's MAC.

    This is not holding the address: the node does not answer ARP for it, and
    `ip addr` does not show it. The kernel drops the rule's element when the
    time is up, whatever becomes of the agent."""
    for address in (vip, local):
        ipaddress.IPv4Address(address)  # ValueError: nftables' `ip` family is IPv4 only
    await _nft("-f", "-", script=accept_stale_script(table, vip, local, seconds))


async def stop_accepting_stale(table: str) -> bool:
    """Remove the handover table (the window's rule and element); False if there was none."""
    try:
        await _nft("delete", "table", "ip", table)
    except VipError as exc:
        if "No such file or directory" in str(exc):
            return False
        raise
    return True


def bounce_script(table: str, vip: str, old: str, interface: str, seconds: float) -> str:
    """The nft transaction behind `bounce_unknown`."""
    ms = max(1, round(seconds * 1000))
    return (
        f"table ip {table} {{\n"
        f"  map {BOUNCE_MAP} {{ type ipv4_addr : ipv4_addr; flags timeout; }}\n"
        f"  chain bounce {{ type filter hook prerouting priority mangle; policy accept; }}\n"
        f"}}\n"
        f"flush chain ip {table} bounce\n"
        f"flush map ip {table} {BOUNCE_MAP}\n"
        f"add rule ip {table} bounce ip daddr @{BOUNCE_MAP} ct state new"
        f" tcp flags & (syn | rst) == 0 ct mark set {BOUNCE_MARK:#x}\n"
        f"add rule ip {table} bounce ct mark {BOUNCE_MARK:#x}"
        f' dup to ip daddr map @{BOUNCE_MAP} device "{interface}" drop\n'
        f"add element ip {table} {BOUNCE_MAP} {{ {vip} timeout {ms}ms : {old} }}\n"
    )


async def bounce_unknown(table: str, vip: str, old: str, interface: str, seconds: float) -> None:
    """For `seconds`, send TCP packets to `vip` of connections this node does
    not know (no SYN: made with the old holder `old`) on to the old holder
    unchanged, instead of answering them with a reset: a client whose ARP
    cache moved to this node between its SYN and its request would lose that
    request. The old holder's connection tracking still delivers them there
    (see `accept_stale`). New connections are not touched."""
    for address in (vip, old):
        ipaddress.IPv4Address(address)
    await _nft("-f", "-", script=bounce_script(table, vip, old, interface, seconds))


class HandoverRules:
    """One node's handover window in nftables (`accept_stale`); a class so
    that tests of the deciding around it can stand in for it."""

    def __init__(self, node: str) -> None:
        self.table = handover_table(node)

    async def open(self, vip: str, local: str, seconds: float) -> None:
        await accept_stale(self.table, vip, local, seconds)

    async def bounce(self, address: str, interface: str | None, old: str, seconds: float) -> None:
        """`bounce_unknown` for the VIP `address` (with its prefix), through
        `interface` (None: the one in its subnet)."""
        iface = pick_interface(await interfaces(), address, interface)
        if iface is None:
            raise VipError(f"no interface for {address} on this node")
        vip = str(ipaddress.ip_interface(address).ip)
        await bounce_unknown(self.table, vip, old, iface.name, seconds)

    async def close(self) -> bool:
        return await stop_accepting_stale(self.table)
