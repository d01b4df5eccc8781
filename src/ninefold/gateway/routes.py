"""The routing table: which instances serve which route, as a pure function of
the spec and the instances' status. Every engine consumes this one table."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ninefold.decide.external import routed_endpoints
from ninefold.gateway.access import AccessPolicy
from ninefold.spec import ClusterSpec
from ninefold.spec.access import AccessSpec
from ninefold.spec.routing import BalanceSpec, RouteSpec
from ninefold.state.records import EndpointHealth, InstanceStatus

DEFAULT_WEIGHT = 100


MESH_ALPN_PREFIX = "ninefold/"
"""A mesh connection names its instance in ALPN: `ninefold/<instance>`."""


@dataclass(frozen=True, slots=True)
class MeshHop:
    """How a gateway reaches an instance on another node for a `route.mtls`
    service: through that node's mesh listener, over mutual TLS. The TLS
    server name is the node (its certificate must name it); the instance is
    named in ALPN (`alpn`), which the mesh listener pipes the connection by."""

    address: str
    """The instance's node's address."""
    port: int
    """Its `ports.mesh`."""
    node: str
    """The node's name: the server name, which its certificate must carry."""
    instance: str

    @property
    def alpn(self) -> str:
        return MESH_ALPN_PREFIX + self.instance


@dataclass(frozen=True, slots=True)
class Backend:
    instance: str
    """The instance, or `service@host:port` for an external endpoint."""
    node: str
    """Where the instance runs ("": an external endpoint)."""
    address: str
    port: int
    """The instance's own address and port: what identifies it (`key`), in
    metrics, drains and sticky cookies, whichever way it is reached."""
    weight: int = DEFAULT_WEIGHT
    draining: bool = False
    mesh: MeshHop | None = None
    """None: connect to address:port in plain text; else through this hop."""

    @property
    def key(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @property
    def target(self) -> tuple[str, int]:
        """Where the gateway opens its connection (the mesh hop, if any)."""
        if self.mesh is not None:
            return self.mesh.address, self.mesh.port
        return self.address, self.port


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    service: str
    route: RouteSpec
    balance: BalanceSpec
    backends: tuple[Backend, ...] = ()
    access: AccessPolicy | None = None
    """The service's access policy, keys loaded (None: no policy)."""

    @property
    def live(self) -> tuple[Backend, ...]:
        """Backends that may take new requests."""
        return tuple(b for b in self.backends if not b.draining)


@dataclass(frozen=True)
class RoutingTable:
    services: Mapping[str, ServiceRoutes] = field(default_factory=dict)
    node: str = ""
    """The node whose gateway routes by this table ("": unknown)."""

    def mesh_targets(self) -> dict[str, Backend]:
        """What this node's mesh listener may pipe to, by instance name: the
        instances of `route.mtls` services that run on this node (draining
        ones included: they finish what they have)."""
        return {
            b.instance: b
            for s in self.services.values()
            if s.route.mtls
            for b in s.backends
            if b.mesh is None and b.node == self.node
        }

    def http(self) -> list[ServiceRoutes]:
        """HTTP routes, most specific first: host routes before host-less ones,
        longer prefixes before shorter."""
        return self._http_sorted

    @functools.cached_property
    def _http_sorted(self) -> list[ServiceRoutes]:
        # Sorted once per table: match() runs for every request.
        routes = [s for s in self.services.values() if s.route.mode == "http"]
        return sorted(
            routes,
            key=lambda s: (s.route.host is None, -len(s.route.http or "/"), s.service),
        )

    def tcp(self) -> dict[int, ServiceRoutes]:
        return {
            s.route.tcp: s
            for s in self.services.values()
            if s.route.mode == "tcp" and s.route.tcp is not None
        }

    def match(self, host: str | None, path: str) -> tuple[ServiceRoutes, str] | None:
        """The route for a request and the path to pass on, or None."""
        bare_host = _strip_port(host) if host else None
        for routes in self.http():
            route = routes.route
            if route.host is not None and route.host.lower() != (bare_host or "").lower():
                continue
            prefix = route.http or "/"
            if not _has_prefix(path, prefix):
                continue
            if route.strip_prefix and prefix != "/":
                rest = path[len(prefix.rstrip("/")) :]
                path_out = rest if rest.startswith("/") else "/" + rest
            else:
                path_out = path
            return routes, path_out
        return None

    def backend_keys(self) -> set[str]:
        return {b.key for s in self.services.values() for b in s.backends}


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _has_prefix(path: str, prefix: str) -> bool:
    """`/web` matches `/web`, `/web/x` and `/web?q`, not `/webby`."""
    if prefix == "/":
        return True
    bare = prefix.rstrip("/")
    return path == bare or path.startswith(bare + "/") or path.startswith(bare + "?")


def routable(status: InstanceStatus, mode: str) -> bool:
    """May this instance receive traffic (or finish what it has, when draining)?"""
    if status.state != "running" or status.health not in ("healthy", "none"):
        return False
    return mode != "active-passive" or status.role == "active"


def build_table(
    spec: ClusterSpec,
    statuses: Iterable[InstanceStatus],
    policies: Mapping[str, AccessPolicy] | None = None,
    node: str = "",
    external: Iterable[EndpointHealth] = (),
) -> RoutingTable:
    """The table for `spec` and the instances' status, for the gateway of
    `node`. `policies`: the loaded access policies by service; a service whose
    policy is missing from it gets one that refuses every request (never
    routed unprotected). Instances of a `route.mtls` service on another node
    than `node` are reached through that node's mesh port (see `MeshHop`).
    `external`: what `node`'s own checks see of the external services'
    endpoints; those it finds healthy are their backends (decide/external.py)."""
    nodes = {n.name: n for n in spec.nodes}
    by_service: dict[str, list[Backend]] = {}
    seen = list(external)
    for name, svc in spec.services.items():
        if svc.is_external and svc.route is not None:
            by_service[name] = [
                Backend(instance=e.target.name, node="", address=e.address, port=e.target.port)
                for e in routed_endpoints(spec, name, seen)
            ]
    for status in statuses:
        service = spec.services.get(status.service)
        if service is None or service.route is None or not routable(status, service.mode):
            continue
        if service.is_external:  # an instance left from before it was external
            continue
        port_name = service.route_port()
        port = status.ports.get(port_name or "")
        if port is None:
            continue
        mesh = None
        if service.route.mtls and status.node != node:
            peer = nodes.get(status.node)
            if peer is None:  # no address or mesh port to reach it by
                continue
            mesh = MeshHop(peer.address, peer.ports.mesh, peer.name, status.instance)
        by_service.setdefault(status.service, []).append(
            Backend(
                instance=status.instance,
                node=status.node,
                address=status.address,
                port=port,
                draining=status.draining,
                mesh=mesh,
            )
        )
    services = {
        name: ServiceRoutes(
            service=name,
            route=svc.route,
            balance=svc.balance,
            backends=tuple(sorted(by_service.get(name, []), key=lambda b: b.instance)),
            access=_policy(name, svc.access, policies or {}),
        )
        for name, svc in sorted(spec.services.items())
        if svc.route is not None
    }
    return RoutingTable(services, node)


def _policy(
    name: str, spec: AccessSpec | None, policies: Mapping[str, AccessPolicy]
) -> AccessPolicy | None:
    if spec is None:
        return None
    policy = policies.get(name)
    if policy is not None and policy.spec == spec:
        return policy
    return AccessPolicy(name, spec, (), "keys not loaded yet")
