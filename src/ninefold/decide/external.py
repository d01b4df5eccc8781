"""External services (`external: [host:port, ...]`): services ninefold routes
and checks but does not run, like seed 000's PostgreSQL at another provider.

Who checks them: every node, each from its own gateway's point of view, and
each gateway routes only to the endpoints its own node sees healthy. An
external endpoint is reached by every gateway directly (not through a peer's
mesh port, as instances of an `mtls` route are), so what matters for a
request is whether *this* node reaches it: in a mixed cloud one site may lose
its link to the database while another still has it. A verdict from the
leader would send the cut-off node's clients to an endpoint it cannot reach
(or keep everyone off an endpoint only the leader cannot reach). The cost is
one check per endpoint per node per interval, small for the handful of nodes
ninefold is for. Each node writes what it sees under its lease
(`ExternalReport`); the status shows every endpoint with each node's verdict
and one summary (state/external_view.py).

Pure functions here; the checks run in agent/external_checks.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ninefold.spec import ClusterSpec
from ninefold.spec.models import EXTERNAL_PLACEHOLDERS, ServiceSpec, render
from ninefold.state.records import EndpointHealth


@dataclass(frozen=True, slots=True)
class EndpointTarget:
    """One endpoint of one external service, as the spec names it."""

    service: str
    endpoint: str
    """`host:port` as written (`[v6]:port` for an IPv6 literal)."""
    host: str
    """Without brackets: what a socket connects to."""
    port: int

    @property
    def name(self) -> str:
        """How the endpoint stands where instances do (metrics, status): `db@host:5432`."""
        return f"{self.service}@{self.endpoint}"


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port` -> (host, port); `[::1]:5432` -> ("::1", 5432). The spec
    has validated the form."""
    host, _, port = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def endpoint_targets(spec: ClusterSpec) -> list[EndpointTarget]:
    """Every external endpoint of the spec, by service then as listed."""
    out = []
    for name, service in sorted(spec.services.items()):
        for endpoint in service.external or []:
            host, port = split_endpoint(endpoint)
            out.append(EndpointTarget(name, endpoint, host, port))
    return out


def check_values(target: EndpointTarget, node: str) -> dict[str, str]:
    """The placeholders of an external service's `check.exec`."""
    port = str(target.port)
    values = {"address": target.host, "port": port, "port.main": port}
    values |= {"service": target.service, "node": node}
    assert set(values) == set(EXTERNAL_PLACEHOLDERS)
    return values


def check_argv(service: ServiceSpec, target: EndpointTarget, node: str) -> list[str] | None:
    """The exec check's command for one endpoint, placeholders filled (None: not exec)."""
    check = service.external_check()
    if check.exec is None:
        return None
    values = check_values(target, node)
    return [render(word, values) for word in check.exec]


@dataclass(frozen=True, slots=True)
class RoutedEndpoint:
    """An endpoint a gateway may send traffic to: where to connect."""

    target: EndpointTarget
    address: str
    """The address this node resolved the host to (the host itself if it did not)."""


def routed_endpoints(
    spec: ClusterSpec, service: str, seen: Iterable[EndpointHealth]
) -> list[RoutedEndpoint]:
    """The endpoints of external `service` that a gateway routes to: those
    its own node's checks (`seen`, that node's report) find healthy, in the
    spec's order. An endpoint not checked yet, or no longer in the spec, gets
    no traffic."""
    svc = spec.services.get(service)
    if svc is None or svc.external is None:
        return []
    mine = {h.endpoint: h for h in seen if h.service == service}
    out = []
    for endpoint in svc.external:
        health = mine.get(endpoint)
        if health is None or health.health != "healthy":
            continue
        host, port = split_endpoint(endpoint)
        out.append(RoutedEndpoint(EndpointTarget(service, endpoint, host, port),
                                  health.address or host))  # fmt: skip
    return out
