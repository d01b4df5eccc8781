"""What every gateway engine does, whichever way it does it.

The agent builds a `RoutingTable` (routes.py) and hands each new one to its
engine with `apply`; the engine sends clients to the table's backends. Draining
is visible through `inflight`: the agent stops an instance only once no
gateway has a request in flight to it (or the drain timeout passed).
"""

from __future__ import annotations

import abc
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ninefold.gateway.routes import RoutingTable
from ninefold.security.files import NodeTlsFiles
from ninefold.spec.routing import GatewayTlsSpec

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histogram every engine reports."""


@dataclass
class Counters:
    """Traffic counters of one service or one backend (monotonic)."""

    requests: int = 0
    responses: dict[str, int] = field(default_factory=dict)
    """By class: '1xx' .. '5xx', and 'error' for requests answered by the
    gateway itself because nothing could serve them."""
    retries: int = 0
    active: int = 0
    """Requests (HTTP) or connections (TCP) in flight now."""
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    """Per bucket of LATENCY_BUCKETS, not cumulative; the +Inf bucket is
    requests minus their sum."""
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_counts[i] += 1
                return

    def answered(self, status: int | str) -> None:
        key = status if isinstance(status, str) else f"{status // 100}xx"
        self.responses[key] = self.responses.get(key, 0) + 1


@dataclass
class ServiceMetrics:
    total: Counters = field(default_factory=Counters)
    backends: dict[str, Counters] = field(default_factory=dict)
    """By backend key (address:port)."""


MetricsSnapshot = dict[str, ServiceMetrics]
"""By service name."""


@dataclass(frozen=True)
class GatewaySettings:
    """Where a node's gateway listens and keeps its files."""

    node: str
    address: str
    http_port: int
    run_dir: Path
    """Sockets, pid files, rendered configuration."""
    log_dir: Path
    vips: tuple[str, ...] = ()
    """Floating addresses to listen on as well, whether or not this node holds
    them now (IP_FREEBIND): traffic arrives once the VIP does."""
    node_cert: Path | None = None
    node_key: Path | None = None
    """This node's certificate and key from the cluster CA: what `gateway.tls`
    without cert and key serves."""
    tls: GatewayTlsSpec | None = None
    """`gateway.tls` (make_engine takes it from the spec); the engine resolves
    its files when it starts (gateway/tls.py)."""
    node_tls: NodeTlsFiles | None = None
    """This node's files from the cluster CA (with `security.tls`): the client
    certificate towards other nodes' mesh listeners, and this node's own."""
    mesh_port: int | None = None
    """Listen on address:mesh_port for other gateways' mutual-TLS connections
    to this node's `route.mtls` instances (gateway/mesh.py); None: do not."""


def freebind_socket(address: str, port: int) -> socket.socket:
    """A listening TCP socket bound to `address` even while no interface has it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


class Engine(abc.ABC):
    name: str

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin listening on the HTTP port (routes arrive with apply)."""

    @abc.abstractmethod
    async def apply(self, table: RoutingTable) -> None:
        """Route by this table from now on. Called on every change; must not
        drop established connections (draining backends keep theirs)."""

    @abc.abstractmethod
    def inflight(self, backend_key: str) -> int:
        """Requests (HTTP) or connections (TCP) open to this backend now."""

    @abc.abstractmethod
    def snapshot(self) -> MetricsSnapshot:
        """Counters since start, per service and backend."""

    @abc.abstractmethod
    async def stop(self) -> None: ...
