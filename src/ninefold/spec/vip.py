"""The spec's floating addresses: `vip:` on the gateway or on an active-passive service.

A VIP is written as `10.99.0.10/24` (or without a prefix, meaning /32), or in
full as a mapping when the interface, the preference order or the GARP burst
need saying.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ninefold import defaults

from .duration import Duration

_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def _vip_address(value: str) -> str:
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an address like 10.99.0.10/24") from None
    if iface.version != 4:
        raise ValueError(f"{value}: only IPv4 VIPs are supported (IPv6 needs unsolicited NA)")
    ip = iface.ip
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local:
        raise ValueError(f"{ip} cannot float between nodes")
    net = iface.network
    if net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
        raise ValueError(
            f"{iface} is the {'network' if ip == net.network_address else 'broadcast'} address"
        )
    return str(iface)


def _interface(value: str) -> str:
    if not _INTERFACE.fullmatch(value):
        raise ValueError(f"{value!r} is not an interface name (at most 15 characters)")
    return value


class VipSpec(BaseModel):
    """One floating address and how it is held."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: Annotated[str, AfterValidator(_vip_address)]
    """IPv4 address with its prefix length, e.g. 10.99.0.10/24."""
    interface: Annotated[str, AfterValidator(_interface)] | None = None
    """Where to add it; default: the interface holding an address in its subnet."""
    prefer: list[str] = []
    """Nodes in order of preference: a free VIP goes to the first eligible one."""
    preempt: bool = False
    """Take the VIP back when a more preferred node becomes eligible again
    (keepalived's default); off, the VIP stays where it is (nopreempt)."""
    garp_count: Annotated[int, Field(ge=1, le=50)] = defaults.VIP_GARP_COUNT
    garp_interval: Annotated[Duration, Field(gt=0)] = defaults.VIP_GARP_INTERVAL

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"address": data} if isinstance(data, str) else data

    @property
    def ip(self) -> str:
        """The bare address, e.g. 10.99.0.10."""
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_interface(self.address).network

    def rank(self, node: str) -> int:
        """Lower is more preferred; nodes not named share the last rank."""
        return self.prefer.index(node) if node in self.prefer else len(self.prefer)
