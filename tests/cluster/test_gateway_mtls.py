"""Gateway to backend on another node over mTLS (`route.mtls`), each engine.

- In process: n1's and n2's gateways on 127.0.0.1 and 127.0.0.2 (a real
  HAProxy for the haproxy engine), a backend on n2; a request through n1
  reaches it through n2's mesh listener, and the mesh port refuses plain text,
  no client certificate, another CA's and an expired one, and names (ALPN)
  of instances that are none of n2's mtls instances.
- A real 2-node TLS cluster: an mtls HTTP and TCP service pinned to n2,
  reached through n1's gateway; the instance sees the connection come from
  its own node's address (n2's mesh listener), not from n1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from ninefold.gateway.builtin import BuiltinEngine
from ninefold.gateway.engine import Engine, GatewaySettings
from ninefold.gateway.haproxy import HaproxyEngine, haproxy_binary
from ninefold.gateway.routes import Backend, MeshHop, RoutingTable, ServiceRoutes
from ninefold.security.ca import CertificateAuthority, create_ca, write_ca
from ninefold.security.certs import issue_node_files
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import NodeSpec, load_spec
from ninefold.spec.routing import BalanceSpec, RouteSpec
from tests.cluster.harness import LocalCluster, until
from tests.cluster.test_mtls import TlsCluster
from tests.helpers import PeerEcho, free_port
from tests.tls_probes import mesh_get, plain_refused

pytestmark = pytest.mark.cluster

HAPROXY = pytest.mark.skipif(haproxy_binary() is None, reason="no haproxy binary")
ENGINES = ["builtin", pytest.param("haproxy", marks=HAPROXY)]
N1, N2 = "127.0.0.1", "127.0.0.2"
APPS = Path(__file__).parent / "apps"


def strangers(ca: CertificateAuthority, node: NodeSpec, root: Path) -> dict[str, NodeTlsFiles]:
    """Client certificates the mesh must refuse: another CA's, an expired one."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    return {
        "another CA": issue_node_files(create_ca("other"), node, root / "other"),
        "expired": issue_node_files(ca, node, root / "expired", dt.timedelta(days=1), now=past),
    }


def assert_mesh_refuses(
    host: str,
    port: int,
    node: str,
    instance: str,
    good: NodeTlsFiles,
    bad: dict[str, NodeTlsFiles],
) -> None:
    """Blocking: every stranger refused, a good client answered (so the
    refusals are about the certificate, not the instance named)."""

    def get(files: NodeTlsFiles | None, name: str = instance) -> bytes | None:
        cert, key = (files.cert, files.key) if files is not None else (None, None)
        return mesh_get(host, port, node, name, good.ca, cert, key)

    answer = get(good)
    assert answer is not None and answer.startswith(b"HTTP/1.1 200"), answer
    assert plain_refused(host, port), "plain text answered"
    assert get(None) is None, "no client certificate"
    for what, files in bad.items():
        assert get(files) is None, what
    assert get(good, "nobody-0") == b"", "an instance it does not have"


# --- in process ----------------------------------------------------------------------------


def node(name: str, address: str) -> NodeSpec:
    return NodeSpec(name=name, address=address)


@pytest.fixture
async def root() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nf-mesh-", dir="/tmp"))  # short: socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def table(node_name: str, backend: Backend) -> RoutingTable:
    routes = ServiceRoutes("web", RouteSpec(http="/web", mtls=True), BalanceSpec(), (backend,))
    return RoutingTable({"web": routes}, node_name)


@pytest.mark.parametrize("kind", ENGINES)
async def test_engines_route_through_the_mesh(kind: str, root: Path) -> None:
    ca = create_ca("t")
    files = {n: issue_node_files(ca, node(n, a), root / n) for n, a in (("n1", N1), ("n2", N2))}
    echo = await PeerEcho(N2).start()
    mesh_port = free_port(N2)
    local = Backend("web-1", "n2", N2, echo.port)
    remote = Backend("web-1", "n2", N2, echo.port, mesh=MeshHop(N2, mesh_port, "n2", "web-1"))
    engines: list[Engine] = []
    try:
        for name, address, mesh, routes in (
            ("n2", N2, mesh_port, table("n2", local)),
            ("n1", N1, free_port(N1), table("n1", remote)),
        ):
            settings = GatewaySettings(
                name, address, free_port(address), root / name / "run", root / name / "log",
                node_tls=files[name], mesh_port=mesh,
            )  # fmt: skip
            settings.run_dir.mkdir(parents=True)
            engine = BuiltinEngine(settings) if kind == "builtin" else HaproxyEngine(settings)
            engines.append(engine)
            await engine.apply(routes)
            await engine.start()
            await engine.apply(routes)
        n1 = engines[1]
        url = f"http://{N1}:{getattr(n1, 'port', n1.settings.http_port)}/web/x"
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(3):
                answer = await client.get(url)
                assert answer.status_code == 200, answer.text
                assert answer.text == N2  # from n2's mesh listener, not from n1
        stats = n1.snapshot()["web"].backends
        assert remote.key in stats  # counted per instance, as a direct backend is
        bad = strangers(ca, node("n1", N1), root)
        await asyncio.to_thread(assert_mesh_refuses, N2, mesh_port, "n2", "web-1", files["n1"], bad)
    finally:
        for engine in engines:
            await engine.stop()
        echo.stop()


# --- a real cluster --------------------------------------------------------------------------


SERVICES = f"""\
services:
  echo:
    command: [{sys.executable}, {APPS / "whoami.py"}, "{{address}}", "{{port}}"]
    route: {{http: /echo, mtls: true}}
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
    placement: {{constraints: {{role: backend}}}}
  lines:
    command: [{sys.executable}, {APPS / "tcp_echo.py"}, "{{address}}", "{{port}}"]
    route: {{tcp: @TCPPORT@, mtls: true}}
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
    placement: {{constraints: {{role: backend}}}}
"""


class MeshCluster(TlsCluster):
    """A TLS cluster whose gateways run `engine`."""

    engine = "builtin"

    def spec_text(self, services_yaml: str) -> str:
        text = super().spec_text(services_yaml)
        return text.replace("gateway:\n", f"gateway:\n  engine: {self.engine}\n", 1)


def tcp_line(host: str, port: int, line: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(line)
        return sock.recv(4096)


@pytest.mark.parametrize("engine", ENGINES)
def test_cluster_mtls_hop_through_the_instances_node(
    engine: str, local_cluster: Callable[..., LocalCluster]
) -> None:
    c = local_cluster(SERVICES, nodes=2, labels={"n2": {"role": "backend"}})
    c.__class__ = MeshCluster
    c.engine = engine  # type: ignore[attr-defined]
    c.write_spec(SERVICES)
    ca = create_ca(c.name)
    write_ca(ca, c.root / "ca" / "ca.key", c.root / "ca" / "ca.crt")
    spec = load_spec(c.spec_path)
    assert spec.mesh_listens and spec.node("n2").ports.mesh == c.mesh_port
    for n in spec.nodes:
        issue_node_files(ca, n, c.data_dir(n.name))
    c.start_all()
    until("echo and lines on n2", lambda: c.serving("echo").keys() == {"echo-0"}, 60)
    until("lines on n2", lambda: c.serving("lines") == {"lines-0": "n2"}, 30)
    assert c.serving("echo") == {"echo-0": "n2"}

    def through(node_name: str) -> str | None:
        r = httpx.get(f"http://{c.addresses[node_name]}:{c.base + 3}/echo/?peer=1", timeout=5)
        return r.text if r.status_code == 200 else None

    # through n1: n1 -> n2's mesh port (mTLS) -> the instance, from n2's address
    assert until("echo through n1", lambda: through("n1"), 30) == f"echo-0 {N2}\n"
    # through n2's own gateway: direct and plain, as before (no source address set)
    assert until("echo through n2", lambda: through("n2"), 30) == f"echo-0 {N1}\n"
    line = until("lines through n1", lambda: tcp_line(N1, c.tcp_port, b"hello\n"), 30)
    assert line == b"lines-0 hello\n"

    files = NodeTlsFiles.of_data_dir(c.data_dir("n1"))
    bad = strangers(ca, spec.node("n1"), c.root)
    assert_mesh_refuses(N2, c.mesh_port, "n2", "echo-0", files, bad)
    # n1's mesh port has no mtls instance to pipe to
    assert mesh_get(N1, c.mesh_port, "n1", "echo-0", files.ca, files.cert, files.key) == b""
