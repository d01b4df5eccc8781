"""The built-in gateway engine: asyncio (uvloop when the agent runs it),
HTTP/1.1 parsed with httptools, keep-alive to clients and pooled keep-alive
connections to backends, TCP routes spliced byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections.abc import Collection
from dataclasses import dataclass, field

from ninefold import defaults
from ninefold.gateway import balance
from ninefold.gateway.builtin.http import ClientConnection
from ninefold.gateway.builtin.mesh import MeshListener
from ninefold.gateway.builtin.pool import Pool
from ninefold.gateway.builtin.tcp import TcpClient
from ninefold.gateway.engine import (
    Counters,
    Engine,
    GatewaySettings,
    MetricsSnapshot,
    ServiceMetrics,
    freebind_socket,
)
from ninefold.gateway.mesh import MeshClientContext, mesh_server_context
from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
from ninefold.gateway.tls import (
    CertificateWatch,
    GatewayTlsError,
    TlsSettings,
    load_chain,
    resolve_tls,
    server_context,
)

log = logging.getLogger("ninefold.gateway")

MATCH_CACHE_SIZE = 1024
MATCH_CACHE_URL_MAX = 512


class ServiceState:
    """What the engine keeps per service of the applied table."""

    __slots__ = (
        "access",
        "balancer",
        "client_timeout",
        "connect_timeout",
        "cookie_headers",
        "live",
        "metrics",
        "name",
        "retries",
        "routes",
        "server_timeout",
        "sticky",
        "subject_header",
        "subject_lname",
        "total",
    )

    def __init__(
        self, routes: ServiceRoutes, metrics: ServiceMetrics, balancer: balance.Balancer
    ) -> None:
        self.name = routes.service
        self.routes = routes
        self.live = routes.live
        self.metrics = metrics
        self.total = metrics.total
        self.balancer = balancer
        spec = routes.balance
        self.retries = spec.retries
        self.connect_timeout = spec.timeouts.connect
        self.server_timeout = spec.timeouts.server
        self.client_timeout = spec.timeouts.client
        self.sticky = balance.Sticky(spec.sticky.cookie, self.live) if spec.sticky else None
        self.cookie_headers: dict[str, bytes] = {}
        self.access = routes.access
        self.subject_header = (
            routes.access.spec.jwt.subject_header.encode() if routes.access is not None else b""
        )
        self.subject_lname = self.subject_header.lower()
        """What the client's own subject header is matched by (once per table)."""
        for backend in routes.backends:
            metrics.backends.setdefault(backend.key, Counters())

    def backend_counters(self, key: str) -> Counters:
        counters = self.metrics.backends.get(key)
        if counters is None:
            counters = self.metrics.backends[key] = Counters()
        return counters

    def set_cookie_header(self, backend: Backend) -> bytes:
        header = self.cookie_headers.get(backend.key)
        if header is None:
            assert self.sticky is not None
            header = b"Set-Cookie: %s\r\n" % self.sticky.set_cookie(backend).encode("latin-1")
            self.cookie_headers[backend.key] = header
        return header


@dataclass
class _Routing:
    """Everything one apply() sets, swapped in at once."""

    table: RoutingTable = field(default_factory=RoutingTable)
    services: dict[str, ServiceState] = field(default_factory=dict)
    tcp: dict[int, ServiceState] = field(default_factory=dict)
    live_keys: frozenset[str] = frozenset()
    mesh_targets: dict[str, Backend] = field(default_factory=dict)
    """This node's mtls instances by name: what the mesh listener pipes to."""
    matches: dict[tuple[bytes | None, bytes], tuple[ServiceState, bytes] | None] = field(
        default_factory=dict
    )
    """Routing decisions already taken with this table, by (Host, URL)."""


class _Miss(enum.Enum):
    """Not in the match cache (None there is a cached "no route")."""

    MISS = enum.auto()


_MISS = _Miss.MISS


class BuiltinEngine(Engine):
    name = "builtin"

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._routing = _Routing()
        self._metrics: dict[str, ServiceMetrics] = {}
        self.inflight_counts: dict[str, int] = {}
        self._down: dict[str, float] = {}
        self.pools: dict[str, Pool] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._listeners: dict[int, list[asyncio.AbstractServer]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.clients: set[ClientConnection] = set()
        self.tunnels: set[TcpClient] = set()
        self.tasks: set[asyncio.Task[object]] = set()
        self.port = settings.http_port
        """The HTTP port listened on (the one chosen when settings ask for 0)."""
        self.tls: TlsSettings | None = None
        self.tls_port: int | None = None
        """The TLS port listened on, when gateway.tls is set."""
        self._tls_context: ssl.SSLContext | None = None
        self._tls_watcher: asyncio.Task[None] | None = None
        files = settings.node_tls
        self.mesh_client = MeshClientContext(files) if files is not None else None
        """This node's client side towards other nodes' mesh listeners."""
        self.mesh: MeshListener | None = None
        self.mesh_port: int | None = None
        """The mesh port listened on, when settings ask for one."""

    # --- Engine -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        settings = self.settings
        tls = resolve_tls(settings.tls, settings.node_cert, settings.node_key)
        if tls is not None:
            self._tls_context = await asyncio.to_thread(server_context, tls)
        self.tls = tls
        redirect = tls.port if tls is not None and tls.redirect_http else None
        try:
            await self._listen_http(redirect)
            if tls is not None:
                await self._listen_https(tls)
            if settings.mesh_port is not None:
                await self._listen_mesh(settings.mesh_port)
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            raise
        if tls is not None:
            self._tls_watcher = self.loop.create_task(self._watch_certificate(tls))
        self._sweeper = self.loop.call_later(defaults.GATEWAY_SWEEP_EVERY, self._sweep)
        for port in self._routing.tcp:
            await self._listen_tcp(port)
        log.debug("builtin gateway listening on %s:%s", self.settings.address, self.port)

    async def apply(self, table: RoutingTable) -> None:
        old = self._routing
        services: dict[str, ServiceState] = {}
        for name, routes in table.services.items():
            metrics = self._metrics.setdefault(name, ServiceMetrics())
            prev = old.services.get(name)
            algorithm = routes.balance.algorithm
            if prev is not None and prev.routes.balance.algorithm == algorithm:
                balancer = prev.balancer
            else:
                balancer = balance.make_balancer(algorithm, self.inflight)
            services[name] = ServiceState(routes, metrics, balancer)
        tcp = {port: services[routes.service] for port, routes in table.tcp().items()}
        live = {b.key: b for s in table.services.values() for b in s.live}
        live_keys = frozenset(live)
        self._routing = _Routing(table, services, tcp, live_keys, table.mesh_targets())
        if self.mesh is not None:
            self.mesh.set_targets(self._routing.mesh_targets)

        # Backends that take no new requests keep no idle connections; the
        # connections of requests in flight to them close when those end. So
        # do those now reached another way (direct <-> through the mesh).
        for key, pool in list(self.pools.items()):
            backend = live.get(key)
            if backend is None or backend.mesh != pool.backend.mesh:
                self.pools.pop(key).close()

        for port in [p for p in self._listeners if p not in tcp]:
            # Stops accepting; connections already spliced stay up.
            for server in self._listeners.pop(port):
                server.close()
        for port in tcp:
            if port not in self._listeners and self.loop is not None:
                await self._listen_tcp(port)

    def inflight(self, backend_key: str) -> int:
        return self.inflight_counts.get(backend_key, 0)

    def snapshot(self) -> MetricsSnapshot:
        return {
            name: ServiceMetrics(
                total=_copy(m.total), backends={k: _copy(c) for k, c in m.backends.items()}
            )
            for name, m in self._metrics.items()
        }

    async def stop(self) -> None:
        if self._tls_watcher is not None:
            self._tls_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_watcher
            self._tls_watcher = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        servers = [*self._servers, *(s for group in self._listeners.values() for s in group)]
        self._servers = []
        self._listeners.clear()
        for server in servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.mesh is not None:
            self.mesh.close()
        for client in list(self.clients):
            client.abort()
        for tunnel in list(self.tunnels):
            tunnel.abort()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        for server in servers:
            await server.wait_closed()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    # --- used by connections -------------------------------------------------------------

    def match(self, host: bytes | None, url: bytes) -> tuple[ServiceState, bytes] | None:
        """The service for a request and the path to pass on (None: no route)."""
        routing = self._routing
        cache = routing.matches
        hit = cache.get((host, url), _MISS)
        if hit is not _MISS:
            return hit
        path = url.decode("latin-1")
        found = routing.table.match(host.decode("latin-1") if host is not None else None, path)
        result = None
        if found is not None:
            path_out = url if found[1] == path else found[1].encode("latin-1")
            result = routing.services[found[0].service], path_out
        if len(url) <= MATCH_CACHE_URL_MAX:
            if len(cache) >= MATCH_CACHE_SIZE:
                cache.clear()
            cache[(host, url)] = result
        return result

    def tcp_service(self, port: int) -> ServiceState | None:
        return self._routing.tcp.get(port)

    def choose(self, svc: ServiceState, client_ip: str, tried: Collection[str]) -> Backend | None:
        down = self._down
        if not down:
            return svc.balancer.pick(svc.live, client_ip, tried)
        now = self.loop.time()
        for key in [k for k, until in down.items() if until <= now]:
            del down[key]
        return balance.choose(svc.balancer, svc.live, client_ip, tried, down)

    def is_down(self, key: str) -> bool:
        until = self._down.get(key)
        return until is not None and until > self.loop.time()

    def mark_down(self, key: str) -> None:
        """Passive check: a refused or reset connection takes the backend out
        of rotation for BACKEND_DOWN_FOR seconds."""
        if key not in self._down:
            log.info(
                "backend %s refused or reset a connection: down for %gs",
                key,
                defaults.BACKEND_DOWN_FOR,
            )
        self._down[key] = self.loop.time() + defaults.BACKEND_DOWN_FOR
        pool = self.pools.get(key)
        if pool is not None:
            pool.close_idle()

    def inflight_add(self, key: str, n: int) -> None:
        inflight = self.inflight_counts
        count = inflight.get(key, 0) + n
        if count:
            inflight[key] = count
        else:
            inflight.pop(key, None)

    def pool_for(self, backend: Backend) -> Pool:
        key = backend.key
        pool = self.pools.get(key)
        if pool is None:
            pool = Pool(backend, self.mesh_client)
            if key in self._routing.live_keys:
                self.pools[key] = pool
            else:
                pool.open = False
        return pool

    # --- internals --------------------------------------------------------------------------

    async def _listen_http(self, redirect: int | None) -> None:
        """The plain HTTP listener (redirecting to https on port `redirect` if set)."""

        def factory() -> ClientConnection:
            return ClientConnection(self, redirect=redirect)

        main = await self.loop.create_server(
            factory,
            self.settings.address,
            self.settings.http_port,
            reuse_address=True,
            backlog=defaults.GATEWAY_LISTEN_BACKLOG,
        )
        self._servers.append(main)
        if main.sockets:
            self.port = main.sockets[0].getsockname()[1]
        for vip in self.settings.vips:
            sock = freebind_socket(vip, self.port)
            self._servers.append(
                await self.loop.create_server(
                    factory, sock=sock, backlog=defaults.GATEWAY_LISTEN_BACKLOG
                )
            )

    async def _listen_https(self, tls: TlsSettings) -> None:
        def factory() -> ClientConnection:
            return ClientConnection(self, scheme=b"https")

        context = self._tls_context
        handshake = defaults.GATEWAY_TLS_HANDSHAKE_TIMEOUT
        server = await self.loop.create_server(
            factory,
            self.settings.address,
            tls.port,
            reuse_address=True,
            ssl=context,
            ssl_handshake_timeout=handshake,
            backlog=defaults.GATEWAY_LISTEN_BACKLOG,
        )
        self._servers.append(server)
        self.tls_port = server.sockets[0].getsockname()[1] if server.sockets else tls.port
        for vip in self.settings.vips:
            sock = freebind_socket(vip, self.tls_port)
            self._servers.append(
                await self.loop.create_server(
                    factory,
                    sock=sock,
                    ssl=context,
                    ssl_handshake_timeout=handshake,
                    backlog=defaults.GATEWAY_LISTEN_BACKLOG,
                )
            )

    async def _listen_mesh(self, port: int) -> None:
        """The mesh listener: mutual TLS with the node's certificate (reloaded
        when it changes), piping to this node's mtls instances."""
        files = self.settings.node_tls
        if files is None:
            raise GatewayTlsError("mesh listener: this agent knows no node certificate")
        tls = await asyncio.to_thread(mesh_server_context, files)
        self.mesh = MeshListener(self.loop, tls, self.settings.address)
        self.mesh.set_targets(self._routing.mesh_targets)
        server = await self.loop.create_server(
            self.mesh.protocol,
            self.settings.address,
            port,
            ssl=tls.context,
            ssl_handshake_timeout=defaults.GATEWAY_TLS_HANDSHAKE_TIMEOUT,
            reuse_address=True,
            backlog=defaults.GATEWAY_LISTEN_BACKLOG,
        )
        self._servers.append(server)
        self.mesh_port = server.sockets[0].getsockname()[1] if server.sockets else port

    async def _watch_certificate(self, tls: TlsSettings) -> None:
        """Serve a rotated certificate from the next connection on."""
        watch = CertificateWatch(tls)
        while True:
            await asyncio.sleep(defaults.GATEWAY_TLS_CHECK_INTERVAL)
            if not await asyncio.to_thread(watch.changed):
                continue
            assert self._tls_context is not None
            try:
                # In the loop's thread: handshakes use the context meanwhile
                # (two small files, once per rotation).
                load_chain(self._tls_context, tls)
            except GatewayTlsError as exc:
                log.error("gateway keeps its old certificate: %s", exc)
            else:
                log.info("gateway certificate reloaded from %s", tls.cert)

    async def _listen_tcp(self, port: int) -> None:
        servers = self._listeners.setdefault(port, [])
        try:
            servers.append(
                await self.loop.create_server(
                    lambda: TcpClient(self, port),
                    self.settings.address,
                    port,
                    reuse_address=True,
                    backlog=defaults.GATEWAY_LISTEN_BACKLOG,
                )
            )
            for vip in self.settings.vips:
                servers.append(
                    await self.loop.create_server(
                        lambda: TcpClient(self, port),
                        sock=freebind_socket(vip, port),
                        backlog=defaults.GATEWAY_LISTEN_BACKLOG,
                    )
                )
        except OSError as exc:
            log.error("gateway cannot listen on %s:%s: %s", self.settings.address, port, exc)

    def _sweep(self) -> None:
        now = self.loop.time()
        for pool in self.pools.values():
            pool.sweep(now)
        down = self._down
        for key in [k for k, until in down.items() if until <= now]:
            del down[key]
        self._sweeper = self.loop.call_later(defaults.GATEWAY_SWEEP_EVERY, self._sweep)


def _copy(c: Counters) -> Counters:
    return Counters(
        requests=c.requests,
        responses=dict(c.responses),
        retries=c.retries,
        active=c.active,
        latency_counts=list(c.latency_counts),
        latency_sum=c.latency_sum,
    )
