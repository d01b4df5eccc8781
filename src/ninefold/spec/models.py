"""The cluster spec as strict pydantic models, with every rule that needs no YAML.

Rules about one field, or about a field and the fields declared before it, are
pydantic validators and so carry their exact location. Rules that span several
parts of the spec (placeholders, port names, node clashes, placement) are
`Problem`s returned by `ServiceSpec.problems()` and `ClusterSpec.problems()`:
the loader collects them all with their paths, while validating a model
directly (`ClusterSpec.model_validate(...)`) raises on them as usual.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
import signal
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from ninefold import defaults

from .access import AccessSpec
from .alerts import AlertsSpec
from .backups import BackupsSpec, VolumeBackupSpec
from .duration import Duration, format_duration
from .errors import Loc, Problem, describe, format_loc
from .logging import LoggingSpec
from .pools import PoolName, PoolSpec, machine_number, pool_of
from .routing import BalanceSpec, GatewaySpec, RouteSpec
from .security import SecuritySpec
from .templates import TemplateSpec, template_problems
from .vip import VipSpec

DEFER_CHECKS = "ninefold.spec.defer_checks"
"""Validation context key: when true, cross checks are left to `problems()`."""
DEFER_CONTEXT = {DEFER_CHECKS: True}

# --- field types -----------------------------------------------------------------


def _scalar_text(value: Any) -> Any:
    """YAML reads `8080` as a number; a string field takes it as text. Booleans are
    refused because `yes` and `on` turning into `True` is never what was meant."""
    if isinstance(value, bool):
        raise ValueError(f"expected a string, got {describe(value)} (quote it)")
    if isinstance(value, int | float):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_scalar_text)]


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r} into words: {exc}") from None
    return value


Argv = Annotated[list[Text], BeforeValidator(_split_command), Field(min_length=1)]
"""A command line: a list of words, or one string split like a shell would."""


def _name(regex: str, what: str, rule: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value) or len(value) > 63:
            raise ValueError(f"{value!r} is not a valid {what} ({rule})")
        return value

    return AfterValidator(check)


_DNS_RULE = "lowercase letters, digits and '-', at most 63"
ClusterName = Annotated[str, _name(r"[a-z0-9][a-z0-9-]*", "cluster name", _DNS_RULE)]
NodeName = Annotated[str, _name(r"[a-z0-9][a-z0-9-]*", "node name", _DNS_RULE)]
ServiceName = Annotated[
    str, _name(r"[a-z][a-z0-9-]*", "service name", _DNS_RULE + ", starting with a letter")
]
PortName = Annotated[
    str, _name(r"[a-z][a-z0-9_]*", "port name", "lowercase letters, digits and '_'")
]
VolumeName = Annotated[
    str, _name(r"[a-z][a-z0-9_-]*", "volume name", "lowercase letters, digits, '_' and '-'")
]
EnvName = Annotated[
    str,
    _name(r"[A-Za-z_][A-Za-z0-9_]*", "environment variable name", "letters, digits and '_'"),
]


def _port_number(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be 1..65535, got {value}")
    return value


Port = Annotated[int, AfterValidator(_port_number)]


def _address(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{value} cannot be a node's address")
    return str(ip)


Address = Annotated[str, AfterValidator(_address)]
"""An IPv4 or IPv6 literal, normalised (`0:0::1` becomes `::1`)."""

_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


def _endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    ok = bool(sep) and port.isdigit() and 1 <= int(port) <= 65535
    if ok and host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            ok = False
    elif ok:
        ok = bool(_HOSTNAME.fullmatch(host))
    if not ok:
        raise ValueError(f"{value!r} is not host:port")
    return value


Endpoint = Annotated[str, AfterValidator(_endpoint)]


def _host_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"a volume's host path must be absolute, got {value!r}")
    return value


HostPath = Annotated[str, AfterValidator(_host_path)]


def _signal_name(value: str) -> str:
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"{value!r} is not a signal name")
    return name


SignalName = Annotated[str, AfterValidator(_signal_name)]
"""`TERM` or `SIGTERM`, stored as `SIGTERM`."""


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
AtLeastOne = Annotated[int, Field(ge=1)]

# --- placeholders ------------------------------------------------------------------

_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
SIMPLE_PLACEHOLDERS = ("port", "address", "node", "service", "instance", "api")
"""Placeholders without a name part; `port.NAME` and `volume.NAME` come on top."""


def _unbalanced(brace: str) -> ValueError:
    return ValueError(f"unbalanced '{brace}' (write '{brace * 2}' for a literal brace)")


def placeholder_names(template: str) -> set[str]:
    """Names of the `{...}` placeholders in `template`; ValueError on a lone brace."""
    names: set[str] = set()
    for match in _BRACES.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise _unbalanced(token)
        names.add(match.group(1))
    return names


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill `{name}` placeholders from `values` (keys like `port`, `port.main`,
    `volume.data`); `{{` and `}}` give literal braces. KeyError for a missing value."""

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        if name is None:
            raise _unbalanced(token)
        try:
            return values[name]
        except KeyError:
            raise KeyError(f"no value for placeholder '{{{name}}}'") from None

    return _BRACES.sub(substitute, template)


def _placeholder_problems(
    template: str, ports: list[str], volumes: Mapping[str, object], has_vip: bool = False
) -> list[str]:
    try:
        names = placeholder_names(template)
    except ValueError as exc:
        return [str(exc)]
    known = [
        *SIMPLE_PLACEHOLDERS,
        *(["vip"] if has_vip else []),
        *(f"port.{p}" for p in ports),
        *(f"volume.{v}" for v in volumes),
    ]
    out = []
    for name in sorted(names):
        if name in known and not (name == "port" and not ports):
            continue
        kind, dot, _ = name.partition(".")
        if name == "port":
            out.append("'{port}' but the service declares no ports")
        elif name == "vip":
            out.append("'{vip}' but the service has no vip")
        elif dot and kind == "port":
            out.append(f"'{{{name}}}' names no declared port ({_declared(ports, 'ports')})")
        elif dot and kind == "volume":
            out.append(f"'{{{name}}}' names no declared volume ({_declared(volumes, 'volumes')})")
        else:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{{{near[0]}}}'?)" if near else ""
            out.append(f"unknown placeholder '{{{name}}}'{hint}")
    return out


def _declared(names: Any, what: str) -> str:
    names = list(dict.fromkeys(names))
    return f"{what}: {', '.join(names)}" if names else f"the service declares no {what}"


# --- models ------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _deferred(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get(DEFER_CHECKS))


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise ValueError("; ".join(f"{format_loc(p.loc)}: {p.message}" for p in problems))


class StoreSpec(_Model):
    mode: Literal["embedded", "external"] = "embedded"
    endpoints: list[Endpoint] = Field(default_factory=list, validate_default=True)

    @field_validator("endpoints")
    @classmethod
    def _endpoints_fit_mode(cls, value: list[str], info: ValidationInfo) -> list[str]:
        mode = info.data.get("mode")
        if mode == "external" and not value:
            raise ValueError("an external store needs at least one endpoint (host:port)")
        if mode == "embedded" and value:
            raise ValueError("endpoints are only for store mode external")
        return value


class NodePorts(_Model):
    api: Port = defaults.API_PORT
    store_client: Port = defaults.STORE_CLIENT_PORT
    store_peer: Port = defaults.STORE_PEER_PORT
    gateway_http: Port = defaults.GATEWAY_HTTP_PORT
    mesh: Port = defaults.MESH_PORT
    """The gateway's mesh listener (mutual TLS), bound only with `security.tls`
    and the gateway enabled."""
    volumes: Port = defaults.VOLUME_PORT
    """Where the agent receives replicated volumes' transfers (mutual TLS with
    `security.tls`), bound only when a service has a replicated volume."""


class NodeSpec(_Model):
    name: NodeName
    address: Address
    zone: Text = "default"
    region: Text = "default"
    labels: dict[str, Text] = {}
    role: Literal["worker", "witness"] = "worker"
    """`witness`: a store member that runs no instances, no gateway and no
    volume copies; it only votes, seed 001's quorum node (docs/spec.md#nodes)."""
    store: bool = False
    ports: NodePorts = Field(default_factory=NodePorts)

    @model_validator(mode="before")
    @classmethod
    def _witness_is_a_store_member(cls, data: Any) -> Any:
        """A witness without a `store` key is a store member: voting is all it does."""
        if isinstance(data, dict) and data.get("role") == "witness" and "store" not in data:
            return {**data, "store": True}
        return data

    @field_validator("store")
    @classmethod
    def _witness_votes(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and info.data.get("role") == "witness":
            raise ValueError("a witness is a store member: leave store out or set it to true")
        return value

    @property
    def witness(self) -> bool:
        """Whether this node only votes in the store (`role: witness`)."""
        return self.role == "witness"

    def host_port(self, port: int) -> str:
        """`address:port`, with IPv6 addresses in brackets."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{port}"

    def matches(self, constraints: Mapping[str, str]) -> bool:
        """Whether this node's labels carry every constraint's key with its value."""
        return all(self.labels.get(key) == value for key, value in constraints.items())

    def bound_ports(
        self, runs_store: bool, mesh: bool = False, volumes: bool = False
    ) -> list[tuple[str, int]]:
        """(kind, port) of every port this node's agent listens on (`mesh`: its
        gateway has a mesh listener, see `mesh_listens`; `volumes`: the spec
        replicates a volume). A witness runs no gateway and keeps no copies."""
        kinds = ["api"] if self.witness else ["api", "gateway_http"]
        if runs_store:
            kinds += ["store_client", "store_peer"]
        if mesh and not self.witness:
            kinds.append("mesh")
        if volumes and not self.witness:
            kinds.append("volumes")
        return [(kind, getattr(self.ports, kind)) for kind in kinds]


class CheckSpec(_Model):
    http: str | None = None
    tcp: str | None = None
    exec: Argv | None = None
    port: str | None = None
    interval: PositiveDuration = defaults.CHECK_INTERVAL
    timeout: PositiveDuration = defaults.CHECK_TIMEOUT
    fall: AtLeastOne = defaults.CHECK_FALL
    rise: AtLeastOne = defaults.CHECK_RISE
    start_grace: Duration = defaults.CHECK_START_GRACE

    @field_validator("http")
    @classmethod
    def _http_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"expected a path starting with '/', got {value!r}")
        return value

    @field_validator("tcp", mode="before")
    @classmethod
    def _tcp_name(cls, value: Any) -> Any:
        # `tcp: true` is replaced by the first port name in ServiceSpec before this runs.
        if value is True:
            raise ValueError("'tcp: true' needs the service to declare a port")
        if value is False:
            raise ValueError("expected a port name, or true for the first port")
        return value

    @field_validator("port")
    @classmethod
    def _port_for_http(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "http" in info.data and info.data["http"] is None:
            raise ValueError("port only applies to http checks (tcp names its port itself)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = f" (got {' and '.join(kinds)})" if kinds else ""
            raise ValueError(f"a check needs exactly one of http, tcp, exec{got}")
        return self

    @property
    def kind(self) -> Literal["http", "tcp", "exec"]:
        if self.http is not None:
            return "http"
        return "tcp" if self.tcp is not None else "exec"


class RestartSpec(_Model):
    backoff: Duration = defaults.RESTART_BACKOFF
    backoff_max: Duration = Field(default=defaults.RESTART_BACKOFF_MAX, validate_default=True)
    limit: Annotated[int, Field(ge=0)] = defaults.RESTART_LIMIT
    window: PositiveDuration = defaults.RESTART_WINDOW

    @field_validator("backoff_max")
    @classmethod
    def _max_not_below(cls, value: float, info: ValidationInfo) -> float:
        backoff = info.data.get("backoff")
        if backoff is not None and value < backoff:
            raise ValueError(
                f"backoff_max ({format_duration(value)}) must not be below "
                f"backoff ({format_duration(backoff)})"
            )
        return value


def _short_volume(value: Any) -> Any:
    """`null` and a path are the short forms of a volume."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"path": _host_path(value)}  # an error names the volume, not its path
    return value


class VolumeSpec(_Model):
    """A directory an instance keeps its data in (`{volume.NAME}`); with
    `replicate: continuous`, mirrored from the active (or instance 0) to the
    other instances' nodes (docs/volumes.md)."""

    path: HostPath | None = None
    """Where on the node; default `<data dir>/volumes/<service>/<name>`."""
    replicate: Literal["none", "continuous"] = "none"
    exclude: list[Text] = []
    """rsync patterns (globs) left out of the mirror, e.g. `*.tmp`, `cache/`."""
    snapshot: Argv | None = None
    """Run in the service's environment before each transfer, so the copy is
    consistent (a database's dump or checkpoint)."""
    verify: PositiveDuration = defaults.MIRROR_VERIFY_INTERVAL
    """How often each copy is compared with the source by checksum (what size
    and mtime cannot see); differences are repaired and reported."""
    backup: VolumeBackupSpec | None = None
    """Backed up with restic on its schedule, on the node holding the active
    copy (instance 0's for a replicated service); replicated or not."""

    @model_validator(mode="after")
    def _replication_options_need_replication(self) -> Self:
        if self.replicate == "none" and (
            self.exclude or self.snapshot or "verify" in self.model_fields_set
        ):
            raise ValueError("exclude, snapshot and verify need replicate: continuous")
        return self

    @model_serializer(mode="wrap")
    def _short_form(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A plain volume is written (and hashed into the generation) in its
        short form, so specs from before replication keep their meaning. One
        with a `backup` is a mapping, without the replication-only keys (so
        a full dump validates again); without a `backup` (or with it
        excluded, as a digest of what an instance runs may do), the key is
        left out and a volume is written exactly as before backups existed."""
        if self.replicate == "none" and self.backup is None:
            return self.path
        data = handler(self)
        if isinstance(data, dict):
            if self.backup is None:
                data.pop("backup", None)
            if self.replicate == "none":
                if "backup" not in data:
                    return self.path
                for key in ("exclude", "snapshot", "verify"):
                    data.pop(key, None)
        return data

    @property
    def replicated(self) -> bool:
        return self.replicate != "none"


Volume = Annotated[VolumeSpec, BeforeValidator(_short_volume)]


class PlacementSpec(_Model):
    spread: Literal["zone", "region", "none"] = "zone"
    constraints: dict[str, Text] = {}
    allow_colocate: bool = False


EXTERNAL_ONLY = ("external", "check", "route", "balance", "access")
"""The keys an external service may have: the rest are about running instances."""
EXTERNAL_PLACEHOLDERS = ("address", "port", "port.main", "service", "node")
"""What an external service's `check.exec` may name: the endpoint's host and
port, the service, and the node that runs the check."""


class ServiceSpec(_Model):
    command: Argv | None = None
    """Required, unless the service is `external`."""
    external: Annotated[list[Endpoint], Field(min_length=1)] | None = None
    """Endpoints (`host:port`) of a service ninefold does not run: checked
    from every node and routed like instances (docs/spec.md#external-services)."""
    env: dict[EnvName, Text] = {}
    workdir: str | None = None
    ports: list[PortName] = Field(default_factory=lambda: ["main"])
    volumes: dict[VolumeName, Volume] = {}
    replicas: AtLeastOne = 1
    mode: Literal["replicated", "active-passive"] = "replicated"
    standby: Literal["hot", "cold"] = "hot"
    on_promote: Argv | None = None
    on_demote: Argv | None = None
    check: CheckSpec | None = None
    restart: RestartSpec = Field(default_factory=RestartSpec)
    stop_signal: SignalName = defaults.STOP_SIGNAL
    stop_timeout: Duration = defaults.STOP_TIMEOUT
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    route: RouteSpec | None = None
    balance: BalanceSpec = Field(default_factory=BalanceSpec)
    vip: VipSpec | None = None
    """A floating address held by the node running the active instance."""
    access: AccessSpec | None = None
    """A JWT required on requests through the gateways, roles per path."""

    @model_validator(mode="before")
    @classmethod
    def _external_runs_nothing(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("external") is not None:
            extra = [key for key in data if key not in EXTERNAL_ONLY]
            if extra:
                raise ValueError(
                    f"an external service runs no instances: {', '.join(map(str, extra))} "
                    f"cannot go with external (it takes {', '.join(EXTERNAL_ONLY[1:])})"
                )
        return data

    @model_validator(mode="before")
    @classmethod
    def _tcp_true_means_first_port(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check = data.get("check")
            ports = data.get("ports", ["main"])
            if (
                isinstance(check, dict)
                and check.get("tcp") is True
                and isinstance(ports, list)
                and ports
                and isinstance(ports[0], str)
            ):
                return {**data, "check": {**check, "tcp": ports[0]}}
        return data

    @field_validator("standby")
    @classmethod
    def _standby_needs_active_passive(cls, value: str, info: ValidationInfo) -> str:
        if value == "cold" and info.data.get("mode") == "replicated":
            raise ValueError("standby only applies to mode: active-passive")
        return value

    @field_validator("on_promote", "on_demote")
    @classmethod
    def _hooks_need_active_passive(
        cls, value: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        if value is not None and info.data.get("mode") == "replicated":
            raise ValueError(f"{info.field_name} needs mode: active-passive")
        return value

    @field_validator("vip")
    @classmethod
    def _vip_follows_the_active(cls, value: VipSpec | None, info: ValidationInfo) -> VipSpec | None:
        if value is None:
            return value
        if info.data.get("mode") != "active-passive":
            raise ValueError(
                "a service vip needs mode: active-passive (for replicas behind one "
                "address, put the vip on the gateway: gateway: {vip: ...})"
            )
        if value.prefer or value.preempt:
            raise ValueError(
                "prefer and preempt apply to gateway.vip; a service vip follows the "
                "active instance (move it with `ninefold switchover`)"
            )
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Self:
        if not _deferred(info):
            _raise_problems(self.problems())
        return self

    def check_port(self) -> str | None:
        """Name of the port the health check connects to (None for exec or no check)."""
        if self.check is None or self.check.kind == "exec":
            return None
        if self.check.kind == "tcp":
            return self.check.tcp
        return self.check.port or (self.ports[0] if self.ports else None)

    def templates(self) -> Iterator[tuple[Loc, str]]:
        """Every string that may hold placeholders, with its location in the service."""
        for i, word in enumerate(self.command or []):
            yield ("command", i), word
        for hook in ("on_promote", "on_demote"):
            for i, word in enumerate(getattr(self, hook) or []):
                yield (hook, i), word
        for key, value in self.env.items():
            yield ("env", key), value
        if self.workdir is not None:
            yield ("workdir",), self.workdir

    def problems(self) -> list[Problem]:
        """Rules spanning several fields: port names, check ports, placeholders."""
        out: list[Problem] = self._external_problems()
        seen: set[str] = set()
        for i, name in enumerate(self.ports):
            if name in seen:
                out.append(Problem(("ports", i), f"duplicate port name '{name}'"))
            seen.add(name)
        if self.check is not None:
            out += self._check_problems(self.check)
        if self.route is not None:
            out += self._route_problems(self.route)
        if self.access is not None:
            out += self.access.problems(self.route)
        for loc, template in self.templates():
            out += [
                Problem(loc, m)
                for m in _placeholder_problems(
                    template, self.ports, self.volumes, self.vip is not None
                )
            ]
        return out

    @property
    def is_external(self) -> bool:
        """Whether ninefold only checks and routes this service (`external:`)."""
        return self.external is not None

    def external_check(self) -> CheckSpec:
        """The check every node runs on each external endpoint: the service's
        own, else a TCP connect with the default timing. No `start_grace`
        unless the spec sets one: nothing of ours boots there."""
        check = self.check if self.check is not None else CheckSpec(tcp=self.ports[0])
        if "start_grace" in check.model_fields_set:
            return check
        return check.model_copy(update={"start_grace": 0.0})

    def _external_problems(self) -> list[Problem]:
        if self.external is None:
            if self.command is None:
                # as pydantic says it of any missing key (`external:` is the other way)
                return [Problem(("command",), "required, but missing")]
            return []
        out: list[Problem] = []
        seen: dict[str, int] = {}
        for i, endpoint in enumerate(self.external):
            if endpoint.lower() in seen:
                msg = f"duplicate endpoint {endpoint} (also external[{seen[endpoint.lower()]}])"
                out.append(Problem(("external", i), msg))
            seen.setdefault(endpoint.lower(), i)
        if self.route is not None and self.route.mtls:
            msg = (
                "mtls reaches instances on other nodes through their mesh port; "
                "every gateway connects to an external endpoint itself"
            )
            out.append(Problem(("route", "mtls"), msg))
        argv = self.check.exec if self.check is not None else None
        for i, word in enumerate(argv or []):
            try:
                names = placeholder_names(word)
            except ValueError as exc:
                out.append(Problem(("check", "exec", i), str(exc)))
                continue
            for name in sorted(names - set(EXTERNAL_PLACEHOLDERS)):
                known = ", ".join(f"{{{p}}}" for p in EXTERNAL_PLACEHOLDERS)
                msg = f"'{{{name}}}' is not a placeholder of an external service's check ({known})"
                out.append(Problem(("check", "exec", i), msg))
        return out

    def route_port(self) -> str | None:
        """Name of the instance port that receives routed traffic."""
        if self.route is None:
            return None
        return self.route.port or (self.ports[0] if self.ports else None)

    def _route_problems(self, route: RouteSpec) -> list[Problem]:
        declared = _declared(self.ports, "ports")
        if route.port is not None and route.port not in self.ports:
            return [Problem(("route", "port"), f"no port named '{route.port}' ({declared})")]
        if not self.ports:
            return [Problem(("route",), "a route needs a port; " + declared)]
        return []

    def _check_problems(self, check: CheckSpec) -> list[Problem]:
        declared = _declared(self.ports, "ports")
        if check.tcp is not None and check.tcp not in self.ports:
            return [Problem(("check", "tcp"), f"no port named '{check.tcp}' ({declared})")]
        if check.port is not None and check.port not in self.ports:
            return [Problem(("check", "port"), f"no port named '{check.port}' ({declared})")]
        if check.http is not None and not self.ports:
            return [Problem(("check", "http"), "an http check needs a port; " + declared)]
        return []


class ClusterSpec(_Model):
    cluster: ClusterName
    store: StoreSpec = Field(default_factory=StoreSpec)
    nodes: list[NodeSpec] = Field(min_length=1)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    services: dict[ServiceName, ServiceSpec] = {}
    pools: dict[PoolName, PoolSpec] = {}
    backups: BackupsSpec = Field(default_factory=BackupsSpec)
    """restic repositories, and the cluster's own backup; volumes name a
    repository in their `backup:` (docs/spec.md#backups)."""
    alerts: AlertsSpec = Field(default_factory=AlertsSpec)
    """Alert rules and the channels their notices go to (docs/alerts.md)."""
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    """Where agents forward log lines (docs/logs.md)."""
    templates: list[TemplateSpec] = []
    """Files rendered from the cluster's state on selected nodes (docs/templates.md)."""

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Self:
        if not _deferred(info):
            _raise_problems(self.problems())
        return self

    def problems(self) -> list[Problem]:
        """Every rule spanning nodes, store and services."""
        return (
            cluster_problems(
                self.store,
                self.nodes,
                self.services,
                self.gateway,
                self.security,
                self.pools,
                self.backups,
            )
            + self.alerts.problems()
            + self.logging.problems()
            + template_problems(
                self.templates, self.nodes, planned_pool_nodes(self.pools, self.nodes)
            )
        )

    @property
    def mesh_listens(self) -> bool:
        """Whether every node's gateway listens on its mesh port."""
        return mesh_listens(self.gateway, self.security)

    def listen_ports(self, node: NodeSpec) -> list[tuple[str, int]]:
        """(what, port) of every port `node`'s agent and gateway listen on, on
        its address; `what` is the spec key that sets it."""
        ports = [("api", node.ports.api)]
        if self.store.mode == "embedded" and node.store:
            ports.append(("store_client", node.ports.store_client))
            ports.append(("store_peer", node.ports.store_peer))
        if node.witness:  # no gateway, no volume copies
            return ports
        if self.gateway.enabled:
            ports.append(("gateway_http", node.ports.gateway_http))
            if self.gateway.tls is not None:
                ports.append(("gateway.tls", self.gateway.tls.port))
            for name, service in self.services.items():
                if service.route is not None and service.route.tcp is not None:
                    ports.append((f"services.{name}.route.tcp", service.route.tcp))
        if self.mesh_listens:
            ports.append(("mesh", node.ports.mesh))
        if self.replicates_volumes:
            ports.append(("volumes", node.ports.volumes))
        return ports

    @property
    def replicates_volumes(self) -> bool:
        """Whether some service has a replicated volume (the agents then listen
        on their `volumes` port)."""
        return any(v.replicated for s in self.services.values() for v in s.volumes.values())

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def store_nodes(self) -> list[NodeSpec]:
        """Nodes that run an embedded store member (none for an external store)."""
        if self.store.mode != "embedded":
            return []
        return [node for node in self.nodes if node.store]

    def store_endpoints(self) -> list[str]:
        """`host:port` of every store member clients talk to."""
        if self.store.mode == "external":
            return list(self.store.endpoints)
        return [node.host_port(node.ports.store_client) for node in self.store_nodes()]


# --- cross checks ----------------------------------------------------------------


def mesh_listens(gateway: GatewaySpec | None, security: SecuritySpec | None) -> bool:
    """The gateways listen on their mesh port when they run and the cluster has a CA."""
    return (
        gateway is not None
        and gateway.enabled
        and security is not None
        and security.tls is not None
    )


def cluster_problems(
    store: StoreSpec | None,
    nodes: list[NodeSpec] | None,
    services: Mapping[str, ServiceSpec],
    gateway: GatewaySpec | None = None,
    security: SecuritySpec | None = None,
    pools: Mapping[str, PoolSpec] | None = None,
    backups: BackupsSpec | None = None,
) -> list[Problem]:
    """Cross checks over whichever parts validated; None skips the checks needing a part."""
    out: list[Problem] = []
    out += pool_problems(pools or {}, nodes or [], store)
    if backups is not None:
        out += backups.problems()
        out += backup_problems(backups, services)
    mesh = mesh_listens(gateway, security)
    volumes = any(v.replicated for s in services.values() for v in s.volumes.values())
    if nodes is not None:
        embedded = store is not None and store.mode == "embedded"
        out += node_problems(nodes, embedded, mesh, volumes)
        out += witness_problems(nodes, store, gateway)
        if embedded and not any(node.store for node in nodes):
            out.append(Problem(("nodes",), "an embedded store needs a node with store: true"))
    for name, service in services.items():
        out += [Problem(("services", name, *p.loc), p.message) for p in service.problems()]
        if nodes is not None and not service.is_external:
            out += placement_problems(name, service, [*nodes, *planned_pool_nodes(pools, nodes)])
    out += route_problems(services, nodes or [], mesh, volumes)
    out += vip_problems(services, nodes, gateway)
    if gateway is not None:
        out += gateway.port_problems(nodes, services, mesh, volumes)
    if security is not None:
        out += mtls_problems(services, security)
    return out


def backup_problems(backups: BackupsSpec, services: Mapping[str, ServiceSpec]) -> list[Problem]:
    """Every volume's `backup.repository` names a repository of `backups`."""
    out: list[Problem] = []
    for name, service in services.items():
        for volume, spec in service.volumes.items():
            if spec.backup is None:
                continue
            loc = ("services", name, "volumes", volume, "backup", "repository")
            problem = backups.reference_problem(loc, spec.backup.repository)
            if problem is not None:
                out.append(problem)
    return out


def mtls_problems(services: Mapping[str, ServiceSpec], security: SecuritySpec) -> list[Problem]:
    """A route with `mtls: true` needs the cluster CA the nodes' certificates come from."""
    if security.tls is not None:
        return []
    return [
        Problem(
            ("services", name, "route", "mtls"),
            "mtls needs security.tls (the cluster CA that issues the nodes' certificates)",
        )
        for name, service in services.items()
        if service.route is not None and service.route.mtls
    ]


def vip_problems(
    services: Mapping[str, ServiceSpec], nodes: list[NodeSpec] | None, gateway: GatewaySpec | None
) -> list[Problem]:
    """A VIP used twice or equal to a node's address; preferred nodes that do not exist."""
    out: list[Problem] = []
    vips: list[tuple[Loc, VipSpec]] = [
        (("services", name, "vip"), s.vip) for name, s in services.items() if s.vip is not None
    ]
    if gateway is not None and gateway.vip is not None:
        vips.insert(0, (("gateway", "vip"), gateway.vip))
        if not gateway.enabled:
            out.append(Problem(("gateway", "vip"), "a gateway vip needs gateway.enabled: true"))
    seen: dict[str, Loc] = {}
    addresses = {n.address: n.name for n in nodes or []}
    names = [n.name for n in nodes or []]
    for loc, vip in vips:
        if vip.ip in seen:
            where = format_loc(seen[vip.ip])
            out.append(Problem((*loc, "address"), f"{vip.ip} is also the vip of {where}"))
        seen.setdefault(vip.ip, loc)
        if vip.ip in addresses:
            msg = f"{vip.ip} is node '{addresses[vip.ip]}'s own address"
            out.append(Problem((*loc, "address"), msg))
        if nodes is None:
            continue
        for i, node in enumerate(vip.prefer):
            if node not in names:
                msg = f"no node named '{node}' (nodes: {', '.join(names)})"
                out.append(Problem((*loc, "prefer", i), msg))
    return out


def route_problems(
    services: Mapping[str, ServiceSpec],
    nodes: list[NodeSpec],
    mesh: bool = False,
    volumes: bool = False,
) -> list[Problem]:
    """Two services on one TCP listen port or one HTTP host+prefix; a TCP
    listen port that is also a port of some node's agent."""
    out: list[Problem] = []
    tcp: dict[int, str] = {}
    http: dict[tuple[str | None, str], str] = {}
    node_ports = {
        port: kind for node in nodes for kind, port in node.bound_ports(node.store, mesh, volumes)
    }
    for name, service in services.items():
        route = service.route
        if route is None:
            continue
        if route.tcp is not None:
            loc = ("services", name, "route", "tcp")
            if route.tcp in tcp:
                out.append(
                    Problem(loc, f"port {route.tcp} is also the route of '{tcp[route.tcp]}'")
                )
            elif route.tcp in node_ports:
                out.append(
                    Problem(loc, f"port {route.tcp} is a node's {node_ports[route.tcp]} port")
                )
            tcp.setdefault(route.tcp, name)
        else:
            key = (route.host, route.http or "/")
            if key in http:
                what = f"host {route.host} " if route.host else ""
                msg = f"{what}prefix {key[1]} is also the route of '{http[key]}'"
                out.append(Problem(("services", name, "route"), msg))
            http.setdefault(key, name)
    return out


def node_problems(
    nodes: list[NodeSpec], embedded_store: bool, mesh: bool = False, volumes: bool = False
) -> list[Problem]:
    """Duplicate names, and ports two agents (or one agent twice) would both listen on."""
    out: list[Problem] = []
    names: dict[str, int] = {}
    taken: dict[tuple[str, int], tuple[str, str]] = {}  # (address, port) -> (node, kind)
    for j, node in enumerate(nodes):
        if node.name in names:
            msg = f"duplicate node name '{node.name}' (also nodes[{names[node.name]}])"
            out.append(Problem(("nodes", j, "name"), msg))
        names.setdefault(node.name, j)
        clashes: dict[str, list[str]] = {}
        mine: dict[int, str] = {}
        for kind, port in node.bound_ports(embedded_store and node.store, mesh, volumes):
            if port in mine:
                msg = f"port {port} is also this node's {mine[port]} port"
                out.append(Problem(("nodes", j, "ports", kind), msg))
                continue
            mine[port] = kind
            other = taken.get((node.address, port))
            if other is not None:
                clashes.setdefault(other[0], []).append(f"{port} ({kind})")
            else:
                taken[(node.address, port)] = (node.name, kind)
        for other_name, ports in clashes.items():
            plural = "port" if len(ports) == 1 else "ports"
            msg = f"node '{other_name}' has the same address and {plural} {', '.join(ports)}"
            out.append(Problem(("nodes", j, "address"), msg))
    return out


def placement_problems(name: str, service: ServiceSpec, nodes: list[NodeSpec]) -> list[Problem]:
    """Replicas that cannot each get their own node among those the constraints
    allow; witnesses run no instances, so they do not count."""
    constraints = service.placement.constraints
    witnesses = [n.name for n in nodes if n.witness and n.matches(constraints)]
    nodes = [node for node in nodes if not node.witness]
    matching = sum(1 for node in nodes if node.matches(constraints))
    need = service.replicas
    also = _witness_note(witnesses)
    if not service.placement.allow_colocate and need > matching:
        replicas = "1 replica needs 1 node" if need == 1 else f"{need} replicas need {need} nodes"
        if constraints:
            found = "none match" if matching == 0 else f"only {matching} match"
            msg = f"{replicas} matching {_mapping_text(constraints)}, {found}{also}"
        else:
            has = f"{len(nodes)} that run instances{also}" if witnesses else str(len(nodes))
            msg = f"{replicas}, the cluster has {has} (or set placement.allow_colocate)"
        return [Problem(("services", name, "replicas"), msg)]
    if matching == 0:
        msg = f"no node matches {_mapping_text(constraints)}{also}"
        return [Problem(("services", name, "placement", "constraints"), msg)]
    return []


def _witness_note(witnesses: list[str]) -> str:
    if not witnesses:
        return ""
    names = ", ".join(witnesses)
    return f" (not counting witness {names}, which runs no instances)"


def witness_problems(
    nodes: list[NodeSpec], store: StoreSpec | None, gateway: GatewaySpec | None
) -> list[Problem]:
    """A witness only votes in the embedded store: with an external store it
    would do nothing, and it never holds the gateway VIP."""
    out: list[Problem] = []
    if store is not None and store.mode != "embedded":
        msg = "a witness votes in the embedded store; with an external store it does nothing"
        out += [Problem(("nodes", j, "role"), msg) for j, n in enumerate(nodes) if n.witness]
    vip = gateway.vip if gateway is not None and gateway.enabled else None
    if vip is None:
        return out
    witnesses = {node.name for node in nodes if node.witness}
    for i, name in enumerate(vip.prefer):
        if name in witnesses:
            msg = f"node '{name}' is a witness: it runs no gateway, so never holds the vip"
            out.append(Problem(("gateway", "vip", "prefer", i), msg))
    if nodes and all(node.witness for node in nodes):
        msg = "every node is a witness: no gateway runs to hold the vip"
        out.append(Problem(("gateway", "vip"), msg))
    return out


def planned_pool_nodes(
    pools: Mapping[str, PoolSpec] | None, nodes: list[NodeSpec]
) -> list[NodeSpec]:
    """Stand-ins for the machines pools will create and that have not joined
    yet, so services placed on pool nodes validate before the pool exists."""
    out = []
    for name, pool in (pools or {}).items():
        joined = sum(1 for node in nodes if pool_of(node.labels) == name)
        for i in range(max(0, pool.count - joined)):
            zone = pool.zones[i % len(pool.zones)]
            out.append(NodeSpec.model_construct(
                name=f"{name}-planned-{i}", address="0.0.0.0", zone=zone, region="default",
                labels=pool.node_labels(name), store=False,
            ))  # fmt: skip
    return out


def pool_problems(
    pools: Mapping[str, PoolSpec], nodes: list[NodeSpec], store: StoreSpec | None
) -> list[Problem]:
    out = []
    for name, pool in pools.items():
        if pool.store_members and store is not None and store.mode != "embedded":
            out.append(Problem(("pools", name, "store_members"),
                               "store members need store.mode: embedded"))  # fmt: skip
        for node in nodes:
            if machine_number(name, node.name) is not None and pool_of(node.labels) != name:
                out.append(Problem(("nodes",), (
                    f"node {node.name} is named like a machine of pool {name} "
                    f"but has no label pool: {name}"
                )))  # fmt: skip
    return out


def _mapping_text(mapping: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"
