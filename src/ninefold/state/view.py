"""A read of the whole cluster's state, as `status` shows it.

Pure assembly from store records, so the CLI (and later the API) present the
same picture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ninefold.spec import ClusterSpec
from ninefold.state.external_view import EndpointView, endpoint_views, healthy_counts
from ninefold.state.keys import (
    ASSIGN,
    DRAIN,
    EXTERNAL,
    GATEWAY_VIP_LOCK,
    LEADER_LOCK,
    NODES,
    STATUS,
    active_lock,
    last_segment,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import AssignmentRecord, ExternalReport, InstanceStatus, NodeRecord
from ninefold.store.base import Store


@dataclass
class NodeView:
    name: str
    address: str
    zone: str
    state: str  # up | down | drained
    leader: bool = False
    store_member: bool = False
    role: str = "worker"  # worker | witness (votes in the store, runs nothing)


@dataclass
class ServiceView:
    name: str
    mode: str
    desired: int
    healthy: int
    active: str | None = None
    fencing_token: int | None = None


@dataclass
class InstanceView:
    instance: str
    service: str
    node: str
    state: str
    health: str
    role: str
    address: str
    ports: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    fencing_token: int | None = None
    pid: int | None = None
    draining: bool = False
    detail: str = ""
    """What it waits for, e.g. a seeding instance's first copy and its progress."""


@dataclass
class VipView:
    address: str
    """With its prefix length, as in the spec."""
    service: str
    """The service it belongs to, or `gateway`."""
    holder: str | None
    """The node holding it (by its lock), None while nobody does."""


@dataclass
class ClusterView:
    cluster: str
    leader: str | None
    nodes: list[NodeView]
    services: list[ServiceView]
    instances: list[InstanceView]
    vips: list[VipView] = field(default_factory=list)
    external: list[EndpointView] = field(default_factory=list)
    """The external services' endpoints, with each node's verdict."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def read_view(store: Store, fallback: ClusterSpec) -> ClusterView:
    spec = await read_spec(store, fallback)
    alive = {
        last_segment(i.key): NodeRecord.decode(i.value) for i in (await store.list(NODES)).items
    }
    drained = {last_segment(i.key) for i in (await store.list(DRAIN)).items}
    leader_hold = await store.lock_holder(LEADER_LOCK)
    leader = leader_hold.holder if leader_hold else None
    assigns = [AssignmentRecord.decode(i.value) for i in (await store.list(ASSIGN)).items]
    statuses = {
        (s.node, s.instance): s
        for s in (InstanceStatus.decode(i.value) for i in (await store.list(STATUS)).items)
    }

    nodes = [
        NodeView(
            name=n.name,
            address=n.address,
            zone=n.zone,
            state="drained" if n.name in drained else ("up" if n.name in alive else "down"),
            leader=n.name == leader,
            store_member=n.store and spec.store.mode == "embedded",
            role=n.role,
        )
        for n in spec.nodes
    ]
    instances = []
    for a in sorted(assigns, key=lambda a: (a.service, a.instance)):
        s = statuses.get((a.node, a.instance))
        instances.append(
            InstanceView(
                instance=a.instance,
                service=a.service,
                node=a.node,
                state=s.state if s else ("lost" if a.node not in alive else "pending"),
                health=s.health if s else "unknown",
                role=s.role if s else "",
                address=s.address if s else "",
                ports=dict(s.ports) if s else {},
                restarts=s.restarts if s else 0,
                fencing_token=s.fencing_token if s else None,
                pid=s.pid if s else None,
                draining=s.draining if s else False,
                detail=s.detail if s else "",
            )
        )
    external: list[EndpointView] = []
    if any(svc.is_external for svc in spec.services.values()):
        reports = [ExternalReport.decode(i.value) for i in (await store.list(EXTERNAL)).items]
        external = endpoint_views(spec, reports)
    reached = healthy_counts(external)
    services = []
    for name, svc in sorted(spec.services.items()):
        if svc.external is not None:
            desired, healthy = len(svc.external), reached.get(name, 0)
            services.append(ServiceView(name, "external", desired=desired, healthy=healthy))
            continue
        mine = [i for i in instances if i.service == name]
        healthy = sum(1 for i in mine if i.state == "running" and i.health in ("healthy", "none"))
        view = ServiceView(name=name, mode=svc.mode, desired=svc.replicas, healthy=healthy)
        if svc.mode == "active-passive":
            hold = await store.lock_holder(active_lock(name))
            if hold:
                view.active, view.fencing_token = hold.holder, hold.fencing_token
        services.append(view)
    vips = []
    if spec.gateway.enabled and spec.gateway.vip is not None:
        hold = await store.lock_holder(GATEWAY_VIP_LOCK)
        vips.append(VipView(spec.gateway.vip.address, "gateway", hold.holder if hold else None))
    for view in services:
        vip = spec.services[view.name].vip
        if vip is not None:
            node = view.active.split("/", 1)[0] if view.active else None
            vips.append(VipView(vip.address, view.name, node))
    return ClusterView(spec.cluster, leader, nodes, services, instances, vips, external)
