"""Gateway to instance over mutual TLS (`route.mtls`): the spec, the routing
table's choice of path, and the builtin engine's mesh listener and client,
in process on loopback (n1 on 127.0.0.1, n2 on 127.0.0.2)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninefold.gateway.builtin import BuiltinEngine
from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.routes import Backend, MeshHop, RoutingTable, ServiceRoutes, build_table
from ninefold.security.ca import CertificateAuthority, create_ca
from ninefold.security.certs import issue_node_files
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import SpecError, load_spec, parse_spec
from ninefold.spec.routing import BalanceSpec, RouteSpec
from ninefold.state.records import InstanceStatus
from tests.helpers import PeerEcho
from tests.tls_probes import mesh_get, plain_refused

N1, N2 = "127.0.0.1", "127.0.0.2"

NODES = """\
cluster: t
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n2, address: 127.0.0.2, ports: {mesh: 9444}}
"""
SERVICES = """\
services:
  web:
    command: [x]
    replicas: 2
    route: {http: /web, mtls: true}
  plain:
    command: [x]
    route: {http: /plain}
  db:
    command: [x]
    route: {tcp: 5432, mtls: true}
"""
SECURITY = "security:\n  tls: {ca: /etc/ninefold/t/ca.crt}\n"


# --- spec --------------------------------------------------------------------------------


def test_mtls_needs_security_tls(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(NODES + SERVICES)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    lines = str(err.value).splitlines()
    assert f"{path}:9 services.web.route.mtls: mtls needs security.tls" in str(err.value)
    assert f"{path}:15 services.db.route.mtls: mtls needs security.tls" in str(err.value)
    assert len([line for line in lines if "mtls needs" in line]) == 2


def test_mtls_with_security_tls_is_accepted() -> None:
    spec = parse_spec(NODES + SERVICES + SECURITY, "s.yaml")
    web = spec.services["web"].route
    assert web is not None and web.mtls
    assert spec.services["plain"].route is not None and not spec.services["plain"].route.mtls
    assert spec.node("n1").ports.mesh == 8444 and spec.node("n2").ports.mesh == 9444
    assert spec.mesh_listens


def test_mesh_port_clashes_count_only_when_it_listens() -> None:
    nodes = NODES.replace("{mesh: 9444}", "{mesh: 9444, api: 9444}")
    parse_spec(nodes + SERVICES.replace("mtls: true", "mtls: false"), "s.yaml")  # no TLS: unused
    with pytest.raises(SpecError, match="port 9444 is also this node's api port"):
        parse_spec(nodes + SERVICES + SECURITY, "s.yaml")
    tcp = SERVICES.replace("tcp: 5432", "tcp: 8444")
    with pytest.raises(SpecError, match="port 8444 is a node's mesh port"):
        parse_spec(NODES + tcp + SECURITY, "s.yaml")
    gateway_off = "gateway: {enabled: false}\n"
    assert not parse_spec(NODES + tcp + SECURITY + gateway_off, "s.yaml").mesh_listens


# --- routing table -----------------------------------------------------------------------


def status(instance: str, node: str, port: int) -> InstanceStatus:
    return InstanceStatus(
        service=instance.rsplit("-", 1)[0],
        instance=instance,
        node=node,
        address={"n1": N1, "n2": N2}[node],
        ports={"main": port},
        state="running",
        health="healthy",
    )


def test_remote_mtls_backends_go_through_the_mesh() -> None:
    spec = parse_spec(NODES + SERVICES + SECURITY, "s.yaml")
    statuses = [
        status("web-0", "n1", 20000),
        status("web-1", "n2", 20001),
        status("plain-0", "n2", 20002),
        status("db-0", "n2", 20003),
    ]
    table = build_table(spec, statuses, node="n1")
    web = {b.instance: b for b in table.services["web"].backends}
    assert web["web-0"].mesh is None and web["web-0"].target == (N1, 20000)
    assert web["web-1"].mesh == MeshHop(N2, 9444, "n2", "web-1")
    assert web["web-1"].target == (N2, 9444)
    assert web["web-1"].key == f"{N2}:20001"  # still the instance: metrics, drains
    assert table.services["plain"].backends[0].mesh is None
    assert table.services["db"].backends[0].mesh == MeshHop(N2, 9444, "n2", "db-0")
    assert set(table.mesh_targets()) == {"web-0"}

    on_n2 = build_table(spec, statuses, node="n2")
    assert {b.instance: b.mesh for b in on_n2.services["web"].backends}["web-0"] == MeshHop(
        N1, 8444, "n1", "web-0"
    )
    assert set(on_n2.mesh_targets()) == {"web-1", "db-0"}
    assert on_n2.mesh_targets()["web-1"].target == (N2, 20001)


def test_draining_mesh_backends_keep_their_key() -> None:
    spec = parse_spec(NODES + SERVICES + SECURITY, "s.yaml")
    drain = status("web-1", "n2", 20001).model_copy(update={"draining": True})
    table = build_table(spec, [drain], node="n1")
    (backend,) = table.services["web"].backends
    assert backend.draining and backend.mesh is not None and backend.key == f"{N2}:20001"
    assert table.services["web"].live == ()


# --- the builtin engine ---------------------------------------------------------------------


def node_spec(name: str):  # type: ignore[no-untyped-def]
    return parse_spec(NODES, "n.yaml").node(name)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("t")


@pytest.fixture
async def mesh(
    tmp_path: Path, ca: CertificateAuthority
) -> AsyncIterator[tuple[BuiltinEngine, BuiltinEngine, PeerEcho, Path]]:
    """n1's and n2's gateways (n2 with a mesh listener) and a backend on n2."""
    files = {n: issue_node_files(ca, node_spec(n), tmp_path / n) for n in ("n1", "n2")}
    engines = []
    for name, address in (("n1", N1), ("n2", N2)):
        settings = GatewaySettings(
            name, address, 0, tmp_path / name / "run", tmp_path / name / "log",
            node_tls=files[name], mesh_port=0 if name == "n2" else None,
        )  # fmt: skip
        engines.append(BuiltinEngine(settings))
    echo = await PeerEcho(N2).start()
    n1, n2 = engines
    for engine in engines:
        await engine.start()
    try:
        yield n1, n2, echo, tmp_path
    finally:
        for engine in engines:
            await engine.stop()
        echo.stop()


def web_table(node: str, backend: Backend) -> RoutingTable:
    route = RouteSpec(http="/web", mtls=True)
    return RoutingTable({"web": ServiceRoutes("web", route, BalanceSpec(), (backend,))}, node)


async def test_through_the_mesh_from_n1_to_n2(
    mesh: tuple[BuiltinEngine, BuiltinEngine, PeerEcho, Path],
) -> None:
    n1, n2, echo, _ = mesh
    assert n2.mesh_port
    local = Backend("web-1", "n2", N2, echo.port)
    await n2.apply(web_table("n2", local))
    remote = Backend("web-1", "n2", N2, echo.port, mesh=MeshHop(N2, n2.mesh_port, "n2", "web-1"))
    await n1.apply(web_table("n1", remote))
    reader, writer = await asyncio.open_connection(N1, n1.port)
    try:
        for _ in range(3):  # keep-alive, and n1's pooled mesh connection reused
            writer.write(b"GET /web/x HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            # the local hop leaves from n2's own address, not n1's
            assert await reader.readexactly(length) == N2.encode()
    finally:
        writer.close()
    assert echo.connections == 1
    assert len(n1.pools[remote.key].idle) == 1
    assert n1.snapshot()["web"].backends[remote.key].requests == 3


async def test_mesh_port_refuses_strangers(
    mesh: tuple[BuiltinEngine, BuiltinEngine, PeerEcho, Path], ca: CertificateAuthority
) -> None:
    _, n2, echo, tmp = mesh
    port = n2.mesh_port
    assert port
    await n2.apply(web_table("n2", Backend("web-1", "n2", N2, echo.port)))
    ca_file = tmp / "n1" / "tls" / "ca.crt"
    good = NodeTlsFiles.of_data_dir(tmp / "n1")
    other = issue_node_files(create_ca("other"), node_spec("n1"), tmp / "other")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = issue_node_files(ca, node_spec("n1"), tmp / "expired", dt.timedelta(days=1), now=past)

    def probe(instance: str, files: NodeTlsFiles | None, tls12: bool = False) -> bytes | None:
        cert, key = (files.cert, files.key) if files is not None else (None, None)
        return mesh_get(N2, port, "n2", instance, ca_file, cert, key, tls12)

    for tls12 in (False, True):
        answer = await asyncio.to_thread(probe, "web-1", good, tls12)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200"), answer
        for files in (None, other, expired):
            refused = await asyncio.to_thread(probe, "web-1", files, tls12)
            assert refused is None if tls12 else not refused, (files, refused)
    assert echo.connections == 2  # the two good ones only
    assert await asyncio.to_thread(plain_refused, N2, port)
    # a good certificate, but no mtls instance of n2 named
    assert await asyncio.to_thread(probe, "web-9", good) == b""
    await n2.apply(RoutingTable({}, "n2"))  # the instance left the table
    assert await asyncio.to_thread(probe, "web-1", good) == b""
    assert echo.connections == 2


async def test_the_sender_checks_the_nodes_name(
    mesh: tuple[BuiltinEngine, BuiltinEngine, PeerEcho, Path],
) -> None:
    """n2's listener does not pass for n3: the request fails, nothing reaches the instance."""
    n1, n2, echo, _ = mesh
    assert n2.mesh_port
    await n2.apply(web_table("n2", Backend("web-1", "n2", N2, echo.port)))
    hop = MeshHop(N2, n2.mesh_port, "n3", "web-1")
    await n1.apply(web_table("n1", Backend("web-1", "n3", N2, echo.port, mesh=hop)))
    reader, writer = await asyncio.open_connection(N1, n1.port)
    try:
        writer.write(b"GET /web/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert echo.connections == 0


# --- the haproxy engine's configuration --------------------------------------------------------


def haproxy_settings(tmp: Path, node: str, address: str, mesh: bool) -> GatewaySettings:
    files = NodeTlsFiles.of_data_dir(tmp / node)
    return GatewaySettings(
        node, address, 8080, tmp / node / "run", tmp / node / "log",
        node_tls=files, mesh_port=9444 if mesh else None,
    )  # fmt: skip


def mesh_tables() -> tuple[RoutingTable, RoutingTable]:
    """n1's and n2's tables: web-0 on n1, web-1 on n2 (mtls), plain-0 on n2."""
    spec = parse_spec(NODES + SERVICES + SECURITY, "s.yaml")
    statuses = [
        status("web-0", "n1", 20000),
        status("web-1", "n2", 20001),
        status("plain-0", "n2", 20002),
    ]
    return build_table(spec, statuses, node="n1"), build_table(spec, statuses, node="n2")


@pytest.mark.process
def test_haproxy_renders_mesh_servers_and_listener(tmp_path: Path) -> None:
    from ninefold.gateway.haproxy import haproxy_binary, render
    from tests.unit.test_haproxy_config import section

    on_n1, on_n2 = mesh_tables()
    n1 = haproxy_settings(tmp_path, "n1", N1, mesh=True)
    cfg = render(on_n1, n1)
    pem, ca = tmp_path / "n1" / "run" / "mesh.pem", tmp_path / "n1" / "tls" / "ca.crt"
    web = section(cfg, "backend be_web")
    assert f"server s1 {N1}:20000 weight 100" in web  # its own node's: direct, plain
    assert (
        f"server s2 {N2}:9444 weight 100 ssl crt '{pem}' ca-file '{ca}' verify required"
        " verifyhost 'n2' sni str('n2') alpn 'ninefold/web-1' check-sni 'n2'"
        " check-alpn 'ninefold/web-1'"
    ) in web
    assert f"server s1 {N2}:20002 weight 100" in section(cfg, "backend be_plain")
    mesh = section(cfg, "frontend mesh")
    assert mesh[:2] == [
        "mode tcp",
        f"bind {N1}:9444 ssl crt '{pem}' ca-file '{ca}' verify required ssl-min-ver TLSv1.2"
        " alpn 'ninefold/web-0'",
    ]
    assert "acl nf_ours ssl_fc_alpn -m str 'ninefold/web-0'" in mesh
    assert "tcp-request content reject unless nf_ours" in mesh
    assert "use_backend mesh_web-0 if { ssl_fc_alpn -m str 'ninefold/web-0' }" in mesh
    assert section(cfg, "backend mesh_web-0")[-1] == f"server web-0 {N1}:20000 source {N1}"
    assert "backend mesh_web-1" not in cfg

    cfg2 = render(on_n2, haproxy_settings(tmp_path, "n2", N2, mesh=True))
    assert "server s2 127.0.0.2:20001 weight 100" in section(cfg2, "backend be_web")
    assert "sni str('n1') alpn 'ninefold/web-0'" in " ".join(section(cfg2, "backend be_web"))
    assert "use_backend mesh_web-1 if { ssl_fc_alpn -m str 'ninefold/web-1' }" in section(
        cfg2, "frontend mesh"
    )

    without = render(on_n1, haproxy_settings(tmp_path, "n1", N1, mesh=False))
    assert "frontend mesh" not in without
    nothing = render(RoutingTable({}, "n1"), n1)
    assert "tcp-request content reject" in section(nothing, "frontend mesh")

    binary = haproxy_binary()
    if binary is not None:  # HAProxy accepts both (with real files in place)
        ca_obj = create_ca("t")
        for name, text in (("n1", cfg), ("n2", cfg2), ("n1", nothing)):
            files = issue_node_files(ca_obj, node_spec(name), tmp_path / name)
            run = tmp_path / name / "run"
            run.mkdir(parents=True, exist_ok=True)
            (run / "mesh.pem").write_bytes(files.cert.read_bytes() + files.key.read_bytes())
            (run / "haproxy.cfg").write_text(text)
            result = subprocess.run(
                [binary, "-c", "-q", "-f", str(run / "haproxy.cfg")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_reloads_for_new_mtls_instances(tmp_path: Path) -> None:
    from ninefold.gateway.haproxy import Reload, RuntimePlan, allocate_slots, plan_runtime

    on_n1, _ = mesh_tables()
    spec = parse_spec(NODES + SERVICES + SECURITY, "s.yaml")
    slots = allocate_slots(on_n1)
    fewer = build_table(spec, [status("web-1", "n2", 20001)], node="n1")
    # an mtls instance leaving, or draining: runtime commands as usual
    plan = plan_runtime(on_n1, fewer, slots)
    assert isinstance(plan, RuntimePlan)
    assert sorted(plan.commands) == [
        "set server be_plain/s1 state maint",
        "set server be_web/s1 state maint",
    ]
    # one coming: its slot's TLS options are not runtime settings
    plan = plan_runtime(fewer, on_n1, allocate_slots(fewer))
    assert isinstance(plan, Reload) and "mtls" in plan.reason
    # a plain service's instance coming: runtime as before
    more = build_table(
        spec, [status("web-1", "n2", 20001), status("plain-0", "n2", 20002)], node="n1"
    )
    assert isinstance(plan_runtime(fewer, more, allocate_slots(fewer)), RuntimePlan)
    # a new mtls instance on this node: the mesh frontend is re-rendered
    on_n2 = build_table(spec, [status("web-1", "n2", 20001)], node="n2")
    gone = build_table(spec, [], node="n2")
    assert isinstance(plan_runtime(gone, on_n2, allocate_slots(gone)), Reload)
