"""What a `templates:` file holds, from a snapshot of the cluster, and when it
is due (docs/templates.md). The agent (agent/templates.py) reads the state,
asks here, and writes the file and runs the command.

A template sees a read-only view, built here from the store's records with
only what a config file needs (no pids, no timestamps): so two snapshots that
differ in nothing a template can see give equal views, and a change nobody
renders does not restart the debounce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ninefold.decide.external import EndpointTarget, endpoint_targets
from ninefold.templating import TemplateFailure, fail, render

if TYPE_CHECKING:
    from ninefold.spec import ClusterSpec, ServiceSpec
    from ninefold.spec.templates import TemplateSpec
    from ninefold.state.records import EndpointHealth, InstanceStatus


@dataclass(frozen=True)
class NodeInfo:
    """A node as templates see it (`nodes()`, `node`)."""

    name: str
    address: str
    zone: str
    region: str
    labels: dict[str, str]
    store: bool
    state: str
    """up, down or drained."""

    @property
    def up(self) -> bool:
        return self.state == "up"


@dataclass(frozen=True)
class ServiceInfo:
    """A service of the spec (`services()`)."""

    name: str
    mode: str
    replicas: int
    ports: tuple[str, ...]
    http: str | None
    """The route's path prefix, if routed by HTTP path."""
    host: str | None
    """The route's Host header, if any."""
    tcp: int | None
    """The route's TCP port on every gateway, if routed by TCP."""
    vip: str | None
    """The service's floating address (without its prefix length)."""


@dataclass(frozen=True)
class InstanceInfo:
    """One instance that reports a status (`service(name)`, `healthy(name)`)."""

    name: str
    service: str
    node: str
    address: str
    port: int | None
    """Its route's port (`route.port`, else its first port); None if it has none."""
    ports: dict[str, int]
    state: str
    health: str
    role: str
    healthy: bool
    """Running and healthy (or unchecked): what a gateway sends traffic to."""
    draining: bool


@dataclass(frozen=True)
class TemplateView:
    """Everything templates may read, for one cluster at one moment."""

    cluster: str
    nodes: tuple[NodeInfo, ...]
    services: tuple[ServiceInfo, ...]
    instances: tuple[InstanceInfo, ...]
    kv: dict[str, str] = field(default_factory=dict)
    """Keys of the KV store (without the `kv/` prefix) -> values as text."""


def template_view(
    spec: ClusterSpec,
    statuses: Iterable[InstanceStatus],
    alive: Iterable[str],
    drained: Iterable[str],
    kv: Mapping[str, str],
    external: Iterable[EndpointHealth] = (),
) -> TemplateView:
    """The view of a snapshot: nodes in name order, instances by service and
    name, keys sorted, so equal states render byte-equal files. `external`:
    the rendering node's verdicts on external endpoints (its own checks, as
    its gateway routes by them: decide/external.py)."""
    alive, drained = set(alive), set(drained)
    nodes = tuple(
        NodeInfo(
            name=n.name, address=n.address, zone=n.zone, region=n.region, labels=dict(n.labels),
            store=n.store,
            state="drained" if n.name in drained else ("up" if n.name in alive else "down"),
        )
        for n in sorted(spec.nodes, key=lambda n: n.name)
    )  # fmt: skip
    services = tuple(_service_info(name, spec.services[name]) for name in sorted(spec.services))
    verdicts = {(h.service, h.endpoint): h for h in external}
    instances = tuple(
        sorted(
            [
                *(_instance_info(s, spec.services.get(s.service)) for s in statuses),
                *(_endpoint_info(t, verdicts.get((t.service, t.endpoint)), spec) for t in
                  endpoint_targets(spec)),
            ],
            key=lambda i: (i.service, i.name, i.node),
        )
    )  # fmt: skip
    return TemplateView(spec.cluster, nodes, services, instances, dict(sorted(kv.items())))


def _service_info(name: str, service: ServiceSpec) -> ServiceInfo:
    route = service.route
    return ServiceInfo(
        name=name,
        mode=service.mode,
        replicas=service.replicas,
        ports=tuple(service.ports),
        http=route.http if route is not None else None,
        host=route.host if route is not None else None,
        tcp=route.tcp if route is not None else None,
        vip=service.vip.ip if service.vip is not None else None,
    )


def _instance_info(status: InstanceStatus, service: ServiceSpec | None) -> InstanceInfo:
    port = None
    if status.ports:
        wanted = None
        if service is not None:
            wanted = service.route.port if service.route is not None else None
            wanted = wanted or (service.ports[0] if service.ports else None)
        port = status.ports.get(wanted) if wanted else None
        if port is None:
            port = next(iter(status.ports.values()))
    return InstanceInfo(
        name=status.instance,
        service=status.service,
        node=status.node,
        address=status.address,
        port=port,
        ports=dict(status.ports),
        state=status.state,
        health=status.health,
        role=status.role,
        healthy=status.serving,
        draining=status.draining,
    )


def _endpoint_info(
    target: EndpointTarget, verdict: EndpointHealth | None, spec: ClusterSpec
) -> InstanceInfo:
    """An external endpoint where instances stand (`service("db")`): named
    `db@host:port`, on no node, healthy as the rendering node sees it."""
    health = verdict.health if verdict is not None else "starting"
    ports = spec.services[target.service].ports
    return InstanceInfo(
        name=target.name,
        service=target.service,
        node="",
        address=(verdict.address if verdict is not None else "") or target.host,
        port=target.port,
        ports={ports[0]: target.port} if ports else {},
        state="external",
        health=health,
        role="external",
        healthy=health == "healthy",
        draining=False,
    )


_NO_DEFAULT: Any = object()


def template_context(view: TemplateView, node: str) -> dict[str, Any]:
    """The names a template sees (docs/templates.md#what-a-template-sees):
    `cluster`, `node` and read-only functions over `view`."""
    names = [s.name for s in view.services]

    def service(name: str) -> tuple[InstanceInfo, ...]:
        if name not in names:
            raise TemplateFailure(f"no service named {name!r} (services: {', '.join(names)})")
        return tuple(i for i in view.instances if i.service == name)

    def healthy(name: str) -> tuple[InstanceInfo, ...]:
        return tuple(i for i in service(name) if i.healthy)

    def key(name: str, default: Any = _NO_DEFAULT) -> Any:
        if name in view.kv:
            return view.kv[name]
        if default is _NO_DEFAULT:
            raise TemplateFailure(f"no key {name!r} in the KV store (or give key() a default)")
        return default

    def keys(prefix: str = "") -> dict[str, str]:
        return {k: v for k, v in view.kv.items() if k.startswith(prefix)}

    me = next((n for n in view.nodes if n.name == node), None)
    return {
        "cluster": view.cluster,
        "node": me,
        "nodes": lambda: view.nodes,
        "services": lambda: view.services,
        "service": service,
        "healthy": healthy,
        "key": key,
        "keys": keys,
        "fail": fail,
    }


def render_template(template: TemplateSpec, source: str, view: TemplateView, node: str) -> bytes:
    """The bytes `node` writes to the template's destination; TemplateError
    (one line, naming the template and its line) when it does not render."""
    return render(source, template.label, template_context(view, node)).encode()


@dataclass
class Debounce:
    """consul-template's `wait` for one template: due once the view has been
    quiet for `quiet` seconds, or `longest` after the first change not yet
    rendered, whichever comes first."""

    quiet: float
    longest: float
    first: float | None = None
    last: float | None = None

    def changed(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def due_at(self) -> float | None:
        """When to render (monotonic seconds); None: nothing changed."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.longest)

    def rendered(self) -> None:
        self.first = self.last = None
