"""What a lab builds for a spec: namespaces, bridges, links and addresses.

A pure function of the spec and the lab id (`plan`), so it is checked without
root; `Lab.up` then makes it real with iproute2.

    nfXXXX-n1      nfXXXX-n2      nfXXXX-n3       nfXXXX-client
      eth0           eth0           eth0              eth0
       |              |              |                 |
  +----|--------------|--------------|-----------------|------------+
  |  p-n1           p-n2           p-n3             p-client         |
  |  [z-a]          [z-b]          [z-c]               |            |
  |   zu0            zu1            zu2                |            |
  |    \\             |             /                  |            |
  |     zc0 -------- zc1 -------- zc2 ----[core]-------+            |
  |                                   nfXXXX-router                 |
  +-----------------------------------------------------------------+

Each zone is a bridge; every zone bridge is joined to the core bridge by a veth
pair, so the whole lab is one switched layer-2 segment (one VLAN stretched
across racks): a floating address can move from a node in one zone to a node
in another and clients find it with ARP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ninefold.lab.errors import UnsuitableSpec
from ninefold.spec import ClusterSpec

PREFIX = 24
"""Every lab is one /24."""
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
RESERVED_NAMES = ("client", "router")
"""Names of the lab's own namespaces: no node may have them."""
ID_RE = re.compile(r"^nf[0-9a-f]{4}$")
IFNAME_MAX = 15
CORE_BRIDGE = "core"
CLIENT_PORT = "p-client"
_SAFE = re.compile(r"^[a-z0-9-]+$")


@dataclass(frozen=True)
class NodePlan:
    name: str
    address: str
    zone: str
    namespace: str
    port: str
    """Its eth0's peer in the router namespace, enslaved to its zone's bridge."""
    api_port: int


@dataclass(frozen=True)
class ZonePlan:
    name: str
    bridge: str
    uplink: str
    """The veth end on the zone's bridge..."""
    downlink: str
    """...and its peer on the core bridge."""


@dataclass(frozen=True)
class Plan:
    lab_id: str
    subnet: ipaddress.IPv4Network
    nodes: list[NodePlan]
    zones: list[ZonePlan]
    client_address: str
    router_namespace: str
    client_namespace: str

    def zone_of(self, zone: str) -> ZonePlan:
        return next(z for z in self.zones if z.name == zone)


def namespace_name(lab_id: str, name: str) -> str:
    return f"{lab_id}-{name}"


def _ifname(prefix: str, name: str, index: int) -> str:
    """`prefix-name` when it is a short, plain name, else `prefix<index>`."""
    candidate = f"{prefix}-{name}"
    if _SAFE.match(name) and len(candidate) <= IFNAME_MAX:
        return candidate
    return f"{prefix}{index}"


def machine_port(name: str, index: int) -> str:
    """The router-side interface of a machine made later (as a node's `port`)."""
    return _ifname("p", name, index)


def check_addresses(spec: ClusterSpec) -> ipaddress.IPv4Network:
    """The lab's subnet: the /24 of the first node, holding every node's
    private IPv4 address once; UnsuitableSpec naming the first node that breaks it."""
    first = spec.nodes[0]
    subnet: ipaddress.IPv4Network | None = None
    seen: dict[str, str] = {}
    for node in spec.nodes:
        if node.name in RESERVED_NAMES:
            raise UnsuitableSpec(
                f"node {node.name}: the name {node.name!r} is the lab's own namespace "
                f"({' and '.join(RESERVED_NAMES)} are reserved): rename the node"
            )
        try:
            address = ipaddress.ip_address(node.address)
        except ValueError:
            raise UnsuitableSpec(
                f"node {node.name}: address {node.address} is not an IP address"
            ) from None
        if not isinstance(address, ipaddress.IPv4Address) or not any(
            address in net for net in PRIVATE
        ):
            raise UnsuitableSpec(
                f"node {node.name}: address {node.address} is not a private IPv4 address "
                "(10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16); a lab gives every node its "
                "own network namespace and needs their addresses in one /24, e.g. 10.99.0.11"
            )
        if subnet is None:
            subnet = ipaddress.IPv4Network(f"{address}/{PREFIX}", strict=False)
        if address not in subnet:
            raise UnsuitableSpec(
                f"node {node.name}: address {node.address} is not in {subnet}, the /24 of "
                f"the first node ({first.name} {first.address}); a lab is one /24"
            )
        if address in (subnet.network_address, subnet.broadcast_address):
            raise UnsuitableSpec(
                f"node {node.name}: address {node.address} is the network or broadcast "
                f"address of {subnet}"
            )
        if node.address in seen:
            raise UnsuitableSpec(
                f"node {node.name}: address {node.address} is also node {seen[node.address]}'s; "
                "in a lab every node needs its own address"
            )
        seen[node.address] = node.name
    assert subnet is not None  # a spec has at least one node
    return subnet


def spec_addresses(spec: ClusterSpec) -> set[ipaddress.IPv4Address]:
    """Every IPv4 address written anywhere in the spec (node addresses,
    floating addresses, ...), so the client's address is none of them."""
    found: set[ipaddress.IPv4Address] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv4Interface(value).ip)

    walk(spec.model_dump(mode="json"))
    return found


def client_address(spec: ClusterSpec, subnet: ipaddress.IPv4Network) -> str:
    """The highest host address of `subnet` the spec does not mention."""
    taken = spec_addresses(spec)
    for candidate in reversed(list(subnet.hosts())):
        if candidate not in taken:
            return str(candidate)
    raise UnsuitableSpec(f"no free address left in {subnet} for the lab's client")


def plan(spec: ClusterSpec, lab_id: str) -> Plan:
    """What `Lab.up` builds for `spec` under `lab_id`; UnsuitableSpec if it cannot."""
    if not ID_RE.match(lab_id):
        raise ValueError(f"not a lab id: {lab_id!r}")
    subnet = check_addresses(spec)
    zone_names: list[str] = []
    for zone in [n.zone for n in spec.nodes] + [z for p in spec.pools.values() for z in p.zones]:
        if zone not in zone_names:  # a pool's zones too: its machines are made later
            zone_names.append(zone)
    zones = [
        ZonePlan(name=z, bridge=_ifname("z", z, j), uplink=f"zu{j}", downlink=f"zc{j}")
        for j, z in enumerate(zone_names)
    ]
    nodes = [
        NodePlan(
            name=n.name,
            address=n.address,
            zone=n.zone,
            namespace=namespace_name(lab_id, n.name),
            port=_ifname("p", n.name, i),
            api_port=n.ports.api,
        )
        for i, n in enumerate(spec.nodes)
    ]
    return Plan(
        lab_id=lab_id,
        subnet=subnet,
        nodes=nodes,
        zones=zones,
        client_address=client_address(spec, subnet),
        router_namespace=namespace_name(lab_id, "router"),
        client_namespace=namespace_name(lab_id, "client"),
    )
