"""The routing table: which instances serve which route, as a pure function of
the spec and the instances' status. Every engine consumes this one table."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ninefold.agent.records import InstanceStatus
from ninefold.gateway.access import AccessPolicy
from ninefold.spec import ClusterSpec
from ninefold.spec.access import AccessSpec
from ninefold.spec.routing import BalanceSpec, RouteSpec

DEFAULT_WEIGHT = 100


@dataclass(frozen=True, slots=True)
class Backend:
    instance: str
    node: str
    address: str
    port: int
    weight: int = DEFAULT_WEIGHT
    draining: bool = False

    @property
    def key(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


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
) -> RoutingTable:
    """The table for `spec` and the instances' status. `policies`: the loaded
    access policies by service; a service whose policy is missing from it gets
    one that refuses every request (never routed unprotected)."""
    by_service: dict[str, list[Backend]] = {}
    for status in statuses:
        service = spec.services.get(status.service)
        if service is None or service.route is None or not routable(status, service.mode):
            continue
        port_name = service.route_port()
        port = status.ports.get(port_name or "")
        if port is None:
            continue
        by_service.setdefault(status.service, []).append(
            Backend(
                instance=status.instance,
                node=status.node,
                address=status.address,
                port=port,
                draining=status.draining,
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
    return RoutingTable(services)


def _policy(
    name: str, spec: AccessSpec | None, policies: Mapping[str, AccessPolicy]
) -> AccessPolicy | None:
    if spec is None:
        return None
    policy = policies.get(name)
    if policy is not None and policy.spec == spec:
        return policy
    return AccessPolicy(name, spec, (), "keys not loaded yet")
