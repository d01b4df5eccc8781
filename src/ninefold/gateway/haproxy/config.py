"""haproxy.cfg from a routing table, and the runtime commands between two tables.

Pure functions, no I/O: ``render`` writes the whole configuration, and
``plan_runtime`` says how to go from one table to the next through the runtime
API, or that a reload is needed (``Reload``).

Dynamic servers: pre-allocated slots
------------------------------------
Every backend is rendered with a fixed number of server slots (``s1`` ..
``sN``): one per instance, the rest ``disabled`` at ``0.0.0.0:1``. A new
instance takes a free slot (``set server addr``, ``weight``, ``state ready``),
a removed one puts its slot in ``maint``, a draining one goes to ``drain``.
Only when a service has more instances than slots is the change structural
(a reload with more slots). HAProxy 2.6 also has ``add server``/``del
server``, but a dynamic server there cannot use every setting of the backend
(no ``default-server``; the backend must use a dynamic algorithm, so ``balance
source`` with the default map-based hash is refused; health checks need a
separate ``enable health``), and a dynamic server vanishes on a reload unless
it is also written to the file. Slots keep everything in the file: health
checks, dynamic sticky cookies and counters all work from the first moment,
and since the file is re-rendered after every change (with the slot of every
instance), a reload or a restart of HAProxy finds the current state.

Sticky cookies use HAProxy's dynamic cookies: the value is a hash of the
server's address, port and a secret key, so it does not reveal the address,
follows a slot's new occupant at ``set server addr``, and is the same on every
node that shares the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ninefold import defaults
from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.haproxy.access import access_rules
from ninefold.gateway.routes import MESH_ALPN_PREFIX, Backend, RoutingTable, ServiceRoutes
from ninefold.spec import ClusterSpec
from ninefold.spec.models import CheckSpec

MAX_WEIGHT = 256
"""HAProxy's largest server weight."""
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")
"""Only these are retried once part of the request reached an instance
(connection failures are retried for every method: nothing was sent)."""
ERROR_REASONS = {502: "bad gateway", 503: "no backend", 504: "backend timed out"}
"""The gateway's own answers, as the builtin engine words them."""
NO_LOG = "    no log"
"""In every frontend: HAProxy logs each request at `info`, which the `notice`
filter of the global `log` line drops, but only after building the line (a
formatted string and a getpid() call per request, ~2-3 % of its CPU time).
Backends keep `log global`: server state changes are still logged."""
NO_ROUTE_BODY = (
    '{"error":"no route","host":"%[req.hdr(host),json(utf8s)]","path":"%[path,json(utf8s)]"}'
)
"""A log-format string: HAProxy's json converter escapes what the client sent."""
EMPTY_SLOT = "0.0.0.0:1"
THREADS = 1
"""HAProxy's worker threads (``nbthread``; its default is one per core). One
thread serves the most requests per CPU-second where instances, the agent and
HAProxy share a few cores (bench/README.md, 2026-12-03); the builtin engine
is one thread too."""
CONNECT_ATTEMPT_DEFAULT = 0.2
"""HAProxy's ``timeout connect`` (seconds) for a service left at the default
``timeouts.connect``. HAProxy waits min(``timeout connect``, 1 s) before it
retries after a refused connection whenever one instance is left up (its
"turn-around" timer, taken even when the retry goes to another instance):
with the 1 s default that was a 1 s stall whenever an instance's death
coincided with a health check marking it down."""

_UNSAFE = re.compile(r"[\s'\"\\#\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Paths:
    """Files of the HAProxy that serves one gateway, all under ``run_dir``."""

    config: str
    master_socket: str
    stats_socket: str
    tls_pem: str
    """Certificate and key in one file (mode 0600), for `bind ... ssl crt`."""
    mesh_pem: str = ""
    """The node's own certificate and key in one file (mode 0600): the mesh
    listener's, and the client certificate towards other nodes' mesh ports."""

    @classmethod
    def of(cls, settings: GatewaySettings) -> Paths:
        run = settings.run_dir
        sockets = socket_dir(run)
        return cls(
            config=str(run / "haproxy.cfg"),
            master_socket=str(sockets / "haproxy-master.sock"),
            stats_socket=str(sockets / "haproxy-stats.sock"),
            tls_pem=str(run / "gateway-tls.pem"),
            mesh_pem=str(run / "mesh.pem"),
        )


SOCKET_PATH_MAX = 90
"""HAProxy refuses unix socket paths over 97 bytes (sun_path, minus room)."""


def socket_dir(run_dir: Path) -> Path:
    """run_dir, or a short directory keyed by it when socket paths would be
    too long there (deep data directories are common)."""
    if len(str(run_dir / "haproxy-master.sock")) <= SOCKET_PATH_MAX:
        return run_dir
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"ninefold-{os.getuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    info = short.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{short} is not a private directory of ours: remove it")
    return short


@dataclass(frozen=True)
class SlotMap:
    """Which server slot of each backend serves which instance (by backend key)."""

    capacity: Mapping[str, int] = field(default_factory=dict)
    """Slots per service."""
    assigned: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Service -> backend key -> slot number (1-based)."""

    def slot_of(self, service: str, key: str) -> int | None:
        return self.assigned.get(service, {}).get(key)

    def key_of(self, service: str, slot: int) -> str | None:
        for key, number in self.assigned.get(service, {}).items():
            if number == slot:
                return key
        return None


@dataclass(frozen=True)
class Reload:
    """The change needs a new configuration (and a seamless reload)."""

    reason: str


@dataclass(frozen=True)
class RuntimePlan:
    """Runtime API commands that turn the old table into the new one."""

    commands: list[str]
    slots: SlotMap


# --- names -------------------------------------------------------------------------


def backend_name(service: str) -> str:
    return f"be_{service}"


def server_name(slot: int) -> str:
    return f"s{slot}"


def slot_number(server: str) -> int | None:
    return int(server[1:]) if server.startswith("s") and server[1:].isdigit() else None


def service_of_backend(proxy: str) -> str | None:
    return proxy[3:] if proxy.startswith("be_") else None


def mesh_backend_name(instance: str) -> str:
    return f"mesh_{instance}"


# --- slots ---------------------------------------------------------------------------


def _unique(backends: Iterable[Backend]) -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for b in backends:
        out.setdefault(b.key, b)
    return out


def allocate_slots(table: RoutingTable, previous: SlotMap | None = None) -> SlotMap:
    """Slots for a fresh configuration: room for twice the instances (at least
    defaults.HAPROXY_MIN_SLOTS); instances keep the slot they had in ``previous`` when it fits."""
    capacity: dict[str, int] = {}
    assigned: dict[str, dict[str, int]] = {}
    for name, routes in table.services.items():
        keys = list(_unique(routes.backends))
        cap = max(defaults.HAPROXY_MIN_SLOTS, 2 * len(keys))
        before = previous.assigned.get(name, {}) if previous else {}
        mine = {k: s for k, s in before.items() if k in keys and s <= cap}
        free = sorted(set(range(1, cap + 1)) - set(mine.values()))
        for key in keys:
            if key not in mine:
                mine[key] = free.pop(0)
        capacity[name] = cap
        assigned[name] = mine
    return SlotMap(capacity, assigned)


# --- checks ----------------------------------------------------------------------------


def checks_for(spec: ClusterSpec) -> dict[str, CheckSpec | None]:
    """The health check HAProxy can mirror for each routed service.

    HAProxy checks the port it sends traffic to; a check of another port of
    the instance (``check.port`` or ``check.tcp`` naming it) cannot be
    mirrored, nor can an exec check: those services get None (ninefold's own
    checks still take failing instances out of the table)."""
    out: dict[str, CheckSpec | None] = {}
    for name, svc in spec.services.items():
        if svc.route is None:
            continue
        check = svc.external_check() if svc.is_external else svc.check
        if check is None or check.kind == "exec":
            out[name] = None
            continue
        first = svc.ports[0] if svc.ports else None
        port = check.tcp if check.kind == "tcp" else (check.port or first)
        out[name] = check if port == svc.route_port() else None
    return out


def _uses_checks(check: CheckSpec | None) -> bool:
    return check is not None and check.kind in ("http", "tcp")


# --- rendering ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _quoted(value: str, what: str) -> str:
    """A value for the configuration in single quotes (no escapes are processed there)."""
    if _UNSAFE.search(value):
        raise ValueError(f"{what} {value!r} has characters haproxy.cfg cannot take")
    return f"'{value}'"


def _binds(settings: GatewaySettings, port: int, ssl: str = "") -> list[str]:
    """The node's own address, and each VIP (`transparent`: even before this
    node holds it; HAProxy 2.6 has no `freebind`, and needs CAP_NET_ADMIN);
    `ssl`: the TLS options of the bind, if any."""
    out = [f"    bind {_address(settings.address, port)}{ssl}"]
    out += [f"    bind {_address(vip, port)} transparent{ssl}" for vip in settings.vips]
    return out


REDIRECT_HOST = r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])$"
"""A Host (without its port) a redirect may name; else the node's address."""


def _tls_lines(settings: GatewaySettings, paths: Paths) -> list[str]:
    """TLS binds, X-Forwarded-Proto, and the redirect of plain HTTP if asked."""
    tls = settings.tls
    if tls is None:
        return ["    http-request set-header X-Forwarded-Proto http"]
    ssl = f" ssl crt {_quoted(paths.tls_pem, 'run_dir')} ssl-min-ver TLSv1.2 alpn http/1.1"
    out = _binds(settings, tls.port, ssl)
    out += [
        "    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
        "    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }",
    ]
    if tls.redirect_http:
        port = "" if tls.port == 443 else f":{tls.port}"
        host = "%[req.hdr(host),regsub(:[0-9]+$,)]"
        address = f"[{settings.address}]" if ":" in settings.address else settings.address
        out.append(
            "    acl nf_redirect_host req.hdr(host),regsub(:[0-9]+$,) -m reg "
            + _quoted_pattern(REDIRECT_HOST)
        )
        for where, condition in ((host, " nf_redirect_host"), (address, "")):
            location = f"https://{where}{port}%[pathq]"
            out += [
                f"    http-request redirect location {location} code 301"
                f" if !{{ ssl_fc }}{condition} {{ method GET HEAD }}",
                f"    http-request redirect location {location} code 308"
                f" if !{{ ssl_fc }}{condition}",
            ]
    return out


def _quoted_pattern(pattern: str) -> str:
    """A regex in single quotes (HAProxy takes backslashes literally there)."""
    assert "'" not in pattern
    return f"'{pattern}'"


def _address(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"{host}:{port}"


def _error_body(status: int, service: str | None = None) -> str:
    body = {"error": ERROR_REASONS[status]} | ({"service": service} if service else {})
    return json.dumps(body, separators=(",", ":"))


def _error_pages(service: str | None = None) -> list[str]:
    return [
        f"    http-error status {status} content-type application/json"
        f" string '{_error_body(status, service)}'"
        for status in sorted(ERROR_REASONS)
    ]


def render(
    table: RoutingTable,
    settings: GatewaySettings,
    checks: Mapping[str, CheckSpec | None] | None = None,
    slots: SlotMap | None = None,
    *,
    cookie_key: str = "ninefold",
) -> str:
    """The whole haproxy.cfg for this table.

    ``checks`` are the services' health checks (see ``checks_for``);
    ``slots`` where each instance goes (``allocate_slots(table)`` when None);
    ``cookie_key`` the secret of sticky cookies (the same on every node)."""
    checks = checks or {}
    slots = slots if slots is not None else allocate_slots(table)
    paths = Paths.of(settings)
    http = table.http()
    client_timeout = max(
        (s.balance.timeouts.client for s in http), default=defaults.GATEWAY_CLIENT_TIMEOUT
    )
    out = [
        f"# haproxy.cfg of ninefold's gateway on node {settings.node}; generated, do not edit",
        "global",
        f"    stats socket {_quoted(paths.stats_socket, 'run_dir')} mode 600 level admin"
        " expose-fd listeners",
        "    stats timeout 10s",
        f"    nbthread {THREADS}",
        "    log stderr format raw daemon notice",
        f"    hard-stop-after {_ms(defaults.HAPROXY_HARD_STOP_AFTER)}",
        "",
        "defaults",
        "    log global",
        "    option dontlognull",
        f"    timeout connect {_ms(defaults.GATEWAY_CONNECT_TIMEOUT)}",
        f"    timeout client {_ms(defaults.GATEWAY_CLIENT_TIMEOUT)}",
        f"    timeout server {_ms(defaults.GATEWAY_SERVER_TIMEOUT)}",
    ]
    out += _error_pages()
    out += [
        "",
        "frontend http",
        "    mode http",
        *_binds(settings, settings.http_port),
        f"    timeout client {_ms(client_timeout)}",
        NO_LOG,
        "    option forwardfor",
        *_tls_lines(settings, paths),
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)]"
        " if { req.hdr(host) -m found }",
    ]
    for routes in http:
        out += _http_rules(routes)
    out += [
        "    default_backend no_route",
        "",
        "backend no_route",
        "    mode http",
        "    http-request return status 404 content-type application/json"
        f" lf-string '{NO_ROUTE_BODY}'",
    ]
    for routes in http:
        out += _backend(routes, checks.get(routes.service), slots, cookie_key, settings, paths)
    for port, routes in sorted(table.tcp().items()):
        out += [
            "",
            f"frontend tcp_{port}",
            "    mode tcp",
            *_binds(settings, port),
            f"    timeout client {_ms(routes.balance.timeouts.client)}",
            NO_LOG,
            f"    default_backend {backend_name(routes.service)}",
        ]
        out += _backend(routes, checks.get(routes.service), slots, cookie_key, settings, paths)
    out += _mesh(table, settings, paths)
    return "\n".join(out) + "\n"


def _mesh(table: RoutingTable, settings: GatewaySettings, paths: Paths) -> list[str]:
    """The mesh listener: TLS with the node's certificate, a client
    certificate from the cluster CA required, ALPN agreeing to this node's
    mtls instances (`ninefold/<instance>`), and by the one agreed on, a plain
    TCP hop to that instance from the node's address. No instance agreed on:
    the connection is rejected."""
    if settings.mesh_port is None or settings.node_tls is None:
        return []
    targets = sorted(table.mesh_targets().items())
    ca = _quoted(str(settings.node_tls.ca), "CA file")
    by_service = {b.key: s for s in table.services.values() for b in s.backends}
    client = max(
        (by_service[b.key].balance.timeouts.client for _, b in targets),
        default=defaults.GATEWAY_CLIENT_TIMEOUT,
    )
    names = [_quoted(MESH_ALPN_PREFIX + instance, "instance") for instance, _ in targets]
    alpn = f" alpn {_quoted(','.join(MESH_ALPN_PREFIX + i for i, _ in targets), 'instance')}"
    out = [
        "",
        "frontend mesh",
        "    mode tcp",
        f"    bind {_address(settings.address, settings.mesh_port)} ssl crt"
        f" {_quoted(paths.mesh_pem, 'run_dir')} ca-file {ca} verify required"
        f" ssl-min-ver TLSv1.2{alpn if targets else ''}",
        f"    timeout client {_ms(client)}",
        NO_LOG,
    ]
    if names:
        out += [
            f"    acl nf_ours ssl_fc_alpn -m str {' '.join(names)}",
            "    tcp-request content reject unless nf_ours",
        ]
    else:
        out.append("    tcp-request content reject")
    for (instance, _), name in zip(targets, names, strict=True):
        be = mesh_backend_name(instance)
        out.append(f"    use_backend {be} if {{ ssl_fc_alpn -m str {name} }}")
    for instance, backend in targets:
        timeouts = by_service[backend.key].balance.timeouts
        out += [
            "",
            f"backend {mesh_backend_name(instance)}",
            "    mode tcp",
            f"    timeout connect {_ms(timeouts.connect)}",
            f"    timeout server {_ms(timeouts.server)}",
            f"    server {instance} {_address(backend.address, backend.port)}"
            f" source {settings.address}",
        ]
    return out


def _http_rules(routes: ServiceRoutes) -> list[str]:
    """ACLs and the use_backend line of one HTTP route (called in match order)."""
    route, name = routes.route, routes.service
    conditions = []
    lines = []
    if route.host is not None:
        host = _quoted(route.host.lower(), f"service {name}: host")
        lines.append(f"    acl host_{name} req.hdr(host),lower,regsub(:[0-9]+$,) -m str {host}")
        conditions.append(f"host_{name}")
    prefix = route.http or "/"
    if prefix != "/":
        bare = prefix.rstrip("/")
        lines.append(f"    acl path_{name} path {_quoted(bare, f'service {name}: path')}")
        lines.append(f"    acl path_{name} path_beg {_quoted(bare + '/', f'service {name}: path')}")
        conditions.append(f"path_{name}")
    condition = f" if {' '.join(conditions)}" if conditions else ""
    lines.append(f"    use_backend {backend_name(name)}{condition}")
    return lines


def connect_attempt(connect: float) -> float:
    """HAProxy's ``timeout connect`` for a service whose ``timeouts.connect``
    is ``connect``: CONNECT_ATTEMPT_DEFAULT for the default (a connection on a
    LAN is accepted in well under a millisecond; one that is not is retried
    like a refused one, and the default 2 retries with their pauses still
    take about the default's 1 s on a single instance), else ``connect`` as
    set, for links that need it (the turn-around pause is then min(it, 1 s))."""
    if connect == defaults.GATEWAY_CONNECT_TIMEOUT:
        return CONNECT_ATTEMPT_DEFAULT
    return connect


def _backend(
    routes: ServiceRoutes,
    check: CheckSpec | None,
    slots: SlotMap,
    cookie_key: str,
    settings: GatewaySettings,
    paths: Paths,
) -> list[str]:
    run_dir = settings.run_dir
    name, route, balance = routes.service, routes.route, routes.balance
    is_http = route.mode == "http"
    lines = [
        "",
        f"backend {backend_name(name)}",
        f"    mode {route.mode}",
        f"    balance {balance.algorithm}",
    ]
    if balance.algorithm == "source":
        lines.append("    hash-type consistent")
    lines += [
        f"    timeout connect {_ms(connect_attempt(balance.timeouts.connect))}",
        f"    timeout server {_ms(balance.timeouts.server)}",
        f"    retries {balance.retries}",
    ]
    if is_http:
        lines += _error_pages(name)
    if balance.retries > 0:
        lines.append("    option redispatch 1")
        if is_http:
            lines += [
                "    retry-on conn-failure empty-response response-timeout",
                f"    acl idempotent method {' '.join(IDEMPOTENT_METHODS)}",
                "    http-request disable-l7-retry if !idempotent",
            ]
    else:
        lines.append("    no option redispatch")
    prefix = route.http or "/"
    if is_http and route.strip_prefix and prefix != "/":
        bare = re.escape(prefix.rstrip("/"))
        pattern = _quoted(f"^{bare}(/|$)(.*)", f"service {name}: path")
        lines.append(f"    http-request replace-path {pattern} '/\\2'")
    if is_http and routes.access is not None:
        lines += access_rules(routes.access, run_dir, _quoted)
    if is_http and balance.sticky is not None:
        cookie = _quoted(balance.sticky.cookie, f"service {name}: cookie")
        lines += [
            f"    cookie {cookie} insert indirect nocache httponly dynamic",
            f"    dynamic-cookie-key {_quoted(cookie_key, 'cookie key')}",
        ]
    if _uses_checks(check):
        assert check is not None
        if check.kind == "http":
            lines.append(f"    option httpchk GET {_quoted(check.http or '/', 'check path')}")
        lines.append(f"    timeout check {_ms(check.timeout)}")
        # No `observe layer4 ... on-error mark-down`: marking the server down
        # on the first refused connection leaves one server up, and HAProxy
        # then waits its turn-around timer (`timeout connect`, see
        # CONNECT_ATTEMPT_DEFAULT) before redispatching; redispatch alone moves on
        # at once while both are up.
        lines.append(
            f"    default-server check inter {_ms(check.interval)} fall {check.fall}"
            f" rise {check.rise}"
        )
    by_slot = {s: k for k, s in slots.assigned.get(name, {}).items()}
    backends = _unique(routes.backends)
    for slot in range(1, slots.capacity.get(name, defaults.HAPROXY_MIN_SLOTS) + 1):
        backend = backends.get(by_slot.get(slot, ""))
        if backend is None:
            lines.append(f"    server {server_name(slot)} {EMPTY_SLOT} disabled")
            continue
        state = " disabled" if backend.draining else ""
        hop = _mesh_client(backend, settings, paths)
        if hop is None:
            state = " disabled"  # mtls, but this node has no certificate to present
            hop = ""
        host, port = backend.target
        lines.append(
            f"    server {server_name(slot)} {_address(host, port)}"
            f" weight {_weight(backend)}{hop}{state}"
        )
    return lines


def _mesh_client(backend: Backend, settings: GatewaySettings, paths: Paths) -> str | None:
    """The TLS options of a server reached through its node's mesh listener:
    this node's certificate, only the cluster CA trusted, the node's name as
    server name, which its certificate must carry (HAProxy checks the
    certificate against `sni` whenever it sends one), the instance in ALPN;
    the same for HAProxy's own checks. "" for a direct server; None when this
    node has no certificate."""
    hop = backend.mesh
    if hop is None:
        return ""
    if settings.node_tls is None:
        return None
    node = _quoted(hop.node, "node")
    alpn = _quoted(hop.alpn, "instance")
    return (
        f" ssl crt {_quoted(paths.mesh_pem, 'run_dir')}"
        f" ca-file {_quoted(str(settings.node_tls.ca), 'CA file')} verify required"
        f" verifyhost {node} sni str({node}) alpn {alpn} check-sni {node} check-alpn {alpn}"
    )


def _weight(backend: Backend) -> int:
    return max(0, min(MAX_WEIGHT, backend.weight))


# --- runtime changes -----------------------------------------------------------------------


def _shape(routes: ServiceRoutes) -> tuple[object, ...]:
    return (routes.route, routes.balance, routes.access)


def _mesh_shape(table: RoutingTable) -> dict[str, str]:
    """What the mesh frontend is rendered from: instance -> where it listens."""
    return {name: b.key for name, b in table.mesh_targets().items()}


def plan_runtime(
    old: RoutingTable | None,
    new: RoutingTable,
    slots: SlotMap,
    checks: Mapping[str, CheckSpec | None] | None = None,
) -> RuntimePlan | Reload:
    """Runtime API commands from ``old`` (as served now, with ``slots``) to ``new``.

    Reload when there is no old table, a service came or went, a route or a
    balance setting changed, or a service needs more slots than it has.
    ``checks`` (as rendered) decide whether a new instance is forced healthy."""
    if old is None:
        return Reload("first configuration")
    added = sorted(set(new.services) - set(old.services))
    removed = sorted(set(old.services) - set(new.services))
    if added or removed:
        what = [f"+{s}" for s in added] + [f"-{s}" for s in removed]
        return Reload(f"services changed: {' '.join(what)}")
    for name, routes in new.services.items():
        if _shape(routes) != _shape(old.services[name]):
            return Reload(f"service {name}: route, balance or access policy changed")
    if _mesh_shape(new).items() - _mesh_shape(old).items():
        # one leaving is left in the file until the next reload (it refuses)
        return Reload("a new mtls instance on this node (mesh listener)")
    commands: list[str] = []
    assigned: dict[str, dict[str, int]] = {}
    for name, routes in sorted(new.services.items()):
        be = backend_name(name)
        cap = slots.capacity.get(name, 0)
        current = dict(slots.assigned.get(name, {}))
        before = _unique(old.services[name].backends)
        after = _unique(routes.backends)
        if len(after) > cap:
            return Reload(f"service {name}: {len(after)} instances, {cap} slots")
        if routes.route.mtls and any(
            k not in current or before.get(k, b).mesh != b.mesh for k, b in after.items()
        ):
            # a slot's TLS options (sni, alpn) are not runtime settings
            return Reload(f"service {name}: a new mtls instance")
        sticky = routes.balance.sticky is not None
        checked = _uses_checks((checks or {}).get(name))
        freed = []
        for key in sorted(set(current) - set(after), key=current.__getitem__):
            slot = current.pop(key)
            freed.append(slot)
            commands.append(f"set server {be}/{server_name(slot)} state maint")
        for key, backend in after.items():
            held = current.get(key)
            if held is None:
                continue
            server = f"{be}/{server_name(held)}"
            was = before.get(key)
            if was is None or was.weight != backend.weight:
                commands.append(f"set server {server} weight {_weight(backend)}")
            if was is None or was.draining != backend.draining:
                commands.append(f"set server {server} state {_state(backend, sticky)}")
        # Never-used and long-free slots first; the ones freed now last, so an
        # instance that just left is not confused with its successor in the counters.
        free = sorted(set(range(1, cap + 1)) - set(current.values()) - set(freed)) + freed
        for key, backend in after.items():
            if key in current:
                continue
            slot = free.pop(0)
            current[key] = slot
            server = f"{be}/{server_name(slot)}"
            commands += [
                f"set server {server} addr {backend.address} port {backend.port}",
                f"set server {server} weight {_weight(backend)}",
            ]
            if checked and not backend.draining:
                # ninefold found it healthy already: no wait for `rise` checks
                commands.append(f"set server {server} health up")
            commands.append(f"set server {server} state {_state(backend, sticky)}")
        assigned[name] = current
    return RuntimePlan(commands, SlotMap(dict(slots.capacity), assigned))


def _state(backend: Backend, sticky: bool) -> str:
    """HAProxy's ``drain`` still takes clients whose sticky cookie names the
    server; for a sticky service a draining instance goes to ``maint`` instead
    (in-flight requests finish either way)."""
    if not backend.draining:
        return "ready"
    return "maint" if sticky else "drain"
