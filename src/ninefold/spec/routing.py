"""The spec's gateway parts: how clients reach a service through any node."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ninefold import defaults

from .access import AbsolutePath
from .duration import Duration
from .errors import Problem
from .vip import VipSpec

if TYPE_CHECKING:
    from .models import NodeSpec, ServiceSpec

PositiveDuration = Annotated[Duration, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RouteSpec(_Model):
    """Where the gateway takes a service's traffic from.

    HTTP: by path prefix and/or Host header; TCP: by a listen port of its own."""

    http: str | None = None
    """Path prefix, e.g. `/web`; `/` takes everything not matched otherwise."""
    host: str | None = None
    """Host header to match (without port), e.g. `shop.example.com`."""
    strip_prefix: bool = True
    """Remove the matched prefix before passing the path on."""
    tcp: Annotated[int, Field(ge=1, le=65535)] | None = None
    """A TCP listen port on every node's gateway."""
    port: str | None = None
    """Which named port of the instances receives the traffic (default the first)."""
    mtls: bool = False
    """Gateways reach instances on other nodes through that node's mesh port
    (`ports.mesh`), over mutual TLS with the nodes' certificates, instead of
    in plain text; needs `security.tls`."""

    @field_validator("http")
    @classmethod
    def _prefix_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"'{value}' is not a path prefix (start it with /)")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> RouteSpec:
        is_http = self.http is not None or self.host is not None
        if is_http and self.tcp is not None:
            raise ValueError("a route is either http/host or tcp, not both")
        if not is_http and self.tcp is None:
            raise ValueError("a route needs http, host or tcp")
        return self

    @property
    def mode(self) -> Literal["http", "tcp"]:
        return "tcp" if self.tcp is not None else "http"


class StickySpec(_Model):
    cookie: str = defaults.STICKY_COOKIE


class TimeoutsSpec(_Model):
    connect: PositiveDuration = defaults.GATEWAY_CONNECT_TIMEOUT
    client: PositiveDuration = defaults.GATEWAY_CLIENT_TIMEOUT
    server: PositiveDuration = defaults.GATEWAY_SERVER_TIMEOUT


class BalanceSpec(_Model):
    """How a service's traffic is spread over its instances."""

    algorithm: Literal["roundrobin", "leastconn", "source"] = "roundrobin"
    sticky: StickySpec | None = None
    retries: Annotated[int, Field(ge=0, le=10)] = defaults.GATEWAY_RETRIES
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    drain_timeout: Duration = defaults.DRAIN_TIMEOUT


class GatewayTlsSpec(_Model):
    """TLS termination at every node's gateway, for HTTP routes."""

    cert: AbsolutePath | None = None
    """PEM certificate (chain) to present; None with `key` None: the node's
    certificate from the cluster CA (`<data-dir>/tls/node.crt`)."""
    key: AbsolutePath | None = None
    """PEM private key of `cert`."""
    port: Annotated[int, Field(ge=1, le=65535)] = defaults.GATEWAY_HTTPS_PORT
    """The TLS listener, on every node's address (and the gateway VIP)."""
    redirect_http: bool = False
    """Answer every plain-HTTP request with a redirect to https (301 for GET
    and HEAD, 308 otherwise) instead of serving it."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "give both cert and key, or neither (the node's certificate from the cluster CA)"
            )
        return self


class GatewaySpec(_Model):
    """The gateway every node runs."""

    enabled: bool = True
    engine: Literal["builtin", "haproxy", "auto"] = "builtin"
    """auto: haproxy when the binary exists, else builtin."""
    vip: VipSpec | None = None
    """A floating address held by one node whose gateway answers (seeds 003/004's
    keepalived pair); clients use it to reach the gateway on any node."""
    tls: GatewayTlsSpec | None = None
    """TLS termination for HTTP routes, on a port of its own."""

    def port_problems(
        self,
        nodes: list[NodeSpec] | None,
        services: Mapping[str, ServiceSpec],
        mesh: bool = False,
        volumes: bool = False,
    ) -> list[Problem]:
        """The TLS port must be none of an agent's ports nor a TCP route's
        (`mesh`, `volumes`: the agents listen on those ports too)."""
        if self.tls is None:
            return []
        port = self.tls.port
        loc = ("gateway", "tls", "port")
        for node in nodes or []:
            for kind, bound in node.bound_ports(node.store, mesh, volumes):
                if bound == port:
                    return [Problem(loc, f"port {port} is node '{node.name}'s {kind} port")]
        for name, service in services.items():
            if service.route is not None and service.route.tcp == port:
                return [Problem(loc, f"port {port} is also the tcp route of '{name}'")]
        return []
