"""Floating addresses: putting a VIP on an interface, announcing it, taking it off.

Deciding who holds a VIP is decide/vip.py (`vip_step`); this module does it,
through iproute2 (`ip addr`) and a raw packet socket for gratuitous ARP.

Every VIP is added with a short kernel lifetime (`valid_lft`) that the agent
renews after each acknowledged lease renewal. An agent that is killed or hangs
stops renewing, and the kernel removes the address by itself a second or so
later, before the agent's lease can expire in the store and another node take
the VIP. The address is a lease of its own, enforced where the packets are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
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
