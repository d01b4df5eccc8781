"""Gateway TLS and access policies with real processes.

- The haproxy engine (a real HAProxy) gives every refusal and every success
  exactly as the builtin engine does (the same cases as tests/unit/test_access*),
  and terminates TLS (combined PEM, mode 0600; redirect from plain HTTP).
- A real 3-node cluster, each engine: a service with `access:` behind
  `gateway.tls`, reached over https through another node's gateway; a changed
  policy applies without restarting an instance; a missing key file is one
  journal event, and the service is refused (503), never served unprotected.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ninefold.gateway import access
from ninefold.gateway.access import AccessPolicy
from ninefold.gateway.builtin import BuiltinEngine
from ninefold.gateway.engine import Engine, GatewaySettings
from ninefold.gateway.haproxy import HaproxyEngine, haproxy_binary
from ninefold.gateway.routes import RoutingTable, ServiceRoutes
from ninefold.spec.routing import BalanceSpec, GatewayTlsSpec, RouteSpec
from tests.cluster.harness import LocalCluster, until
from tests.helpers import free_port
from tests.unit.test_access import REFUSALS, Issuer, policy_spec, refusal
from tests.unit.test_access_gateway import Echo
from tests.unit.test_gateway_tls import issued

pytestmark = pytest.mark.cluster

HAPROXY = pytest.mark.skipif(haproxy_binary() is None, reason="no haproxy binary")
ENGINES = ["builtin", pytest.param("haproxy", marks=HAPROXY)]
HOST = "127.0.0.1"

ECHO_SCRIPT = """
import asyncio, json, sys
async def handle(reader, writer):
    try:
        while True:
            head = (await reader.readuntil(b"\\r\\n\\r\\n")).decode("latin-1")
            first, *lines = head.rstrip("\\r\\n").split("\\r\\n")
            pairs = [line.split(": ", 1) for line in lines]
            body = json.dumps({"path": first.split(" ")[1], "lines": pairs}).encode()
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                         b"Content-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
            await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    await server.serve_forever()
asyncio.run(main())
"""


async def raw_get(
    port: int, path: str, authorization: list[bytes], **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """GET as written (no client-side path normalisation); (status, headers, body)."""
    lines = [f"GET {path} HTTP/1.1".encode(), f"Host: {HOST}".encode(), b"Connection: close"]
    lines += [b"Authorization: " + value for value in authorization]
    lines += [f"{k.replace('_', '-')}: {v}".encode() for k, v in headers.items()]
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    return int(status.split(" ")[1]), {k.lower(): v for k, v in parsed.items()}, body


MakeEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def engines() -> AsyncIterator[MakeEngine]:
    """Factory of started engines (builtin or haproxy) on 127.0.0.1, stopped afterwards."""
    made: list[tuple[Engine, Path]] = []

    async def make(kind: str, table: RoutingTable, tls: GatewayTlsSpec | None = None) -> Engine:
        root = Path(tempfile.mkdtemp(prefix="nf-gs-", dir="/tmp"))  # short: socket paths
        settings = GatewaySettings("n1", HOST, free_port(), root / "run", root / "log", tls=tls)
        settings.run_dir.mkdir(parents=True)
        engine: Engine = BuiltinEngine(settings) if kind == "builtin" else HaproxyEngine(settings)
        made.append((engine, root))
        await engine.apply(table)
        await engine.start()
        if kind == "builtin":
            await engine.apply(table)
        return engine

    yield make
    for engine, root in made:
        await engine.stop()
        shutil.rmtree(root, ignore_errors=True)


def port_of(engine: Engine) -> int:
    return getattr(engine, "port", engine.settings.http_port)


def shop(echo: Echo, policy: AccessPolicy) -> RoutingTable:
    routes = ServiceRoutes(
        "shop", RouteSpec(http="/shop"), BalanceSpec(), (echo.backend(),), policy
    )
    return RoutingTable({"shop": routes})


# --- the same answers from both engines ----------------------------------------------------


@pytest.mark.parametrize("kind", ENGINES)
async def test_every_refusal_and_success(kind: str, engines: MakeEngine, tmp_path: Path) -> None:
    issuer = Issuer(tmp_path)
    echo = await Echo("shop-0").start()
    try:
        policy = AccessPolicy.load("shop", policy_spec(issuer))
        engine = await engines(kind, shop(echo, policy))
        port = port_of(engine)
        for case in REFUSALS:
            authorization, path, deny = refusal(issuer, case)
            status, headers, body = await raw_get(port, f"/shop{path}", authorization)
            assert status == deny.status, (case, body)
            assert headers["content-type"] == "application/json", case
            assert headers["www-authenticate"] == access.challenge("shop", deny), case
            assert json.loads(body) == access.body("shop", deny), case
        assert echo.connections == 0  # no refused request reached the backend

        for alg in ("RS256", "ES256"):
            token = issuer.token(alg, sub=f"bob-{alg}", authorities=["X", "ROLE_ADMIN"])
            status, _, body = await raw_get(
                port, "/shop/admin/1?q=2", [f"Bearer {token}".encode()], X_Subject="root"
            )
            assert status == 200, body
            seen = json.loads(body)
            assert seen["path"] == "/admin/1?q=2"
            subjects = [v for k, v in seen["lines"] if k.lower() == "x-subject"]
            assert subjects == [f"bob-{alg}"]
        # any of the rule's roles; no rule: any valid token
        user = f"Bearer {issuer.token(authorities=['ROLE_USER'])}".encode()
        assert (await raw_get(port, "/shop/orders/7", [user]))[0] == 200
        assert (await raw_get(port, "/shop/public", [user]))[0] == 200
        nobody = f"Bearer {issuer.token(sub=None)}".encode()
        status, _, body = await raw_get(port, "/shop/x", [nobody], X_Subject="root")
        assert status == 200
        assert not [k for k, _ in json.loads(body)["lines"] if k.lower() == "x-subject"]
    finally:
        echo.kill()


TIMES = [  # (claim, offset from now in seconds, allowed?) with the 30 s leeway
    ("iat", -86400, True),
    ("iat", 20, True),
    ("iat", 100, False),
    ("nbf", -86400, True),
    ("nbf", 20, True),
    ("nbf", 100, False),
    ("exp", 86400, True),
    ("exp", -20, True),
    ("exp", -100, False),
]


@pytest.mark.parametrize("kind", ENGINES)
async def test_time_claims_with_leeway(kind: str, engines: MakeEngine, tmp_path: Path) -> None:
    issuer = Issuer(tmp_path)
    echo = await Echo("shop-0").start()
    try:
        engine = await engines(kind, shop(echo, AccessPolicy.load("shop", policy_spec(issuer))))
        for claim, offset, allowed in TIMES:
            token = issuer.token(**{claim: int(time.time()) + offset})
            status, _, body = await raw_get(
                port_of(engine), "/shop/x", [f"Bearer {token}".encode()]
            )
            assert (status == 200) == allowed, (claim, offset, body)
    finally:
        echo.kill()


@pytest.mark.parametrize("kind", ENGINES)
async def test_roles_beyond_the_haproxy_array_limit(
    kind: str, engines: MakeEngine, tmp_path: Path
) -> None:
    """HAProxy reads the first 16 entries of the roles claim: a role after
    them is refused there (never allowed wrongly); the builtin engine reads all."""
    issuer = Issuer(tmp_path)
    echo = await Echo("shop-0").start()
    try:
        engine = await engines(kind, shop(echo, AccessPolicy.load("shop", policy_spec(issuer))))
        roles = [f"R{i}" for i in range(16)] + ["ROLE_ADMIN"]
        token = f"Bearer {issuer.token(authorities=roles)}".encode()
        status, _, _ = await raw_get(port_of(engine), "/shop/admin", [token])
        assert status == (200 if kind == "builtin" else 403)
    finally:
        echo.kill()


@pytest.mark.parametrize("kind", ENGINES)
async def test_policy_changes_and_unavailable_keys(
    kind: str, engines: MakeEngine, tmp_path: Path
) -> None:
    issuer = Issuer(tmp_path)
    echo = await Echo("shop-0").start()
    try:
        engine = await engines(kind, shop(echo, AccessPolicy.load("shop", policy_spec(issuer))))
        port = port_of(engine)
        user = f"Bearer {issuer.token(authorities=['ROLE_USER'])}".encode()
        assert (await raw_get(port, "/shop/admin", [user]))[0] == 403
        looser = policy_spec(issuer)
        looser.rules[0].roles.append("ROLE_USER")
        await engine.apply(shop(echo, AccessPolicy.load("shop", looser)))
        assert (await raw_get(port, "/shop/admin", [user]))[0] == 200
        broken = AccessPolicy.load("shop", policy_spec(issuer, keys=[str(tmp_path / "no.pem")]))
        await engine.apply(shop(echo, broken))
        status, _, body = await raw_get(port, "/shop/admin", [user])
        assert status == 503
        assert json.loads(body) == {"error": "access policy unavailable", "service": "shop"}
    finally:
        echo.kill()


# --- TLS -----------------------------------------------------------------------------------


@HAPROXY
async def test_haproxy_terminates_tls(engines: MakeEngine, tmp_path: Path) -> None:
    ca, cert, key = issued(tmp_path, "gw")
    tls = GatewayTlsSpec(cert=str(cert), key=str(key), port=free_port(), redirect_http=True)
    echo = await Echo("shop-0").start()
    try:
        web = ServiceRoutes("web", RouteSpec(http="/web"), BalanceSpec(), (echo.backend(),))
        engine = await engines("haproxy", RoutingTable({"web": web}), tls)
        pem = engine.settings.run_dir / "gateway-tls.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_bytes().startswith(cert.read_bytes().rstrip(b"\n"))
        context = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(verify=context, timeout=10) as c:
            r = await c.get(f"https://{HOST}:{tls.port}/web/x")
        assert r.status_code == 200
        lines = {k.lower(): v for k, v in r.json()["lines"]}
        assert lines["x-forwarded-proto"] == "https"
        async with httpx.AsyncClient(timeout=10) as c:
            plain = await c.get(f"http://{HOST}:{engine.settings.http_port}/web/x?y=1")
            posted = await c.post(f"http://{HOST}:{engine.settings.http_port}/web/x")
        assert plain.status_code == 301
        assert plain.headers["location"] == f"https://{HOST}:{tls.port}/web/x?y=1"
        assert posted.status_code == 308
        reader, writer = await asyncio.open_connection(HOST, tls.port)
        writer.write(b"GET /web/x HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 200")
    finally:
        echo.kill()


# --- a real cluster --------------------------------------------------------------------------


def services_yaml(engine: str, tls_port: int, cert: Path, key: Path, keys: str, roles: str) -> str:
    script = cert.parent / "echo.py"
    script.write_text(ECHO_SCRIPT)
    return f"""
gateway:
  engine: {engine}
  tls: {{cert: {cert}, key: {key}, port: {tls_port}, redirect_http: true}}
services:
  shop:
    command: [{sys.executable}, {script}, "{{address}}", "{{port}}"]
    replicas: 2
    route: {{http: /shop}}
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
    placement: {{constraints: {{role: backend}}}}
    access:
      jwt: {{keys: [{keys}], issuer: "https://login.example", audience: shop}}
      rules: [{{path: /admin, roles: [{roles}]}}]
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_cluster_access_behind_tls(
    engine: str, local_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    issuer = Issuer(secrets)
    ca, cert, key = issued(secrets, "gateway")
    tls_port = 0  # set once the cluster picked its ports

    def yaml(keys: str, roles: str) -> str:
        return services_yaml(engine, tls_port, cert, key, keys, roles)

    c = local_cluster("", labels={"n2": {"role": "backend"}, "n3": {"role": "backend"}})
    tls_port = c.base + 4
    c.services_yaml = yaml(str(issuer.rsa_pem), "ROLE_ADMIN")
    c.write_spec(c.services_yaml)
    c.start_all()
    until("shop serving on n2 and n3", lambda: len(c.serving("shop")) == 2, timeout=60)
    base = f"https://{c.addresses['n1']}:{tls_port}"
    context = ssl.create_default_context(cafile=str(ca))
    admin = {"Authorization": f"Bearer {issuer.token(authorities=['ROLE_ADMIN'], sub='ann')}"}
    user = {"Authorization": f"Bearer {issuer.token(authorities=['ROLE_USER'])}"}

    def get(path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        with httpx.Client(verify=context, timeout=5) as client:
            return client.get(base + path, headers=headers or {})

    def answered(path: str, headers: dict[str, str], status: int) -> httpx.Response | None:
        r = get(path, headers)
        return r if r.status_code == status else None

    r = until("an admin served over https", lambda: answered("/shop/admin", admin, 200))
    assert {k.lower(): v for k, v in r.json()["lines"]}["x-subject"] == "ann"
    assert get("/shop/admin").status_code == 401
    assert get("/shop/admin", user).status_code == 403
    assert get("/shop/other", user).status_code == 200
    plain = httpx.get(f"http://{c.addresses['n1']}:{c.base + 3}/shop/x", timeout=5)
    assert plain.status_code == 301
    assert plain.headers["location"] == f"https://{c.addresses['n1']}:{tls_port}/shop/x"
    instances = {i["instance"]: i.get("pid") for i in c.status()["instances"]}

    # a new policy applies at once on every gateway, without restarting an instance
    changed = c.write_spec(yaml(str(issuer.rsa_pem), "ROLE_ADMIN, ROLE_USER"), tmp_path / "b.yaml")
    result = c.cli("apply", str(changed), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    until("the user let into /admin", lambda: answered("/shop/admin", user, 200))
    assert {i["instance"]: i.get("pid") for i in c.status()["instances"]} == instances

    # a key file missing on the nodes: refused (503) everywhere, and said once per node
    missing = secrets / "rotated.pem"
    broken = c.write_spec(yaml(str(missing), "ROLE_ADMIN"), tmp_path / "c.yaml")
    result = c.cli("apply", str(broken), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    until("the service refused", lambda: answered("/shop/admin", admin, 503))

    def failed_events() -> list[dict[str, Any]]:
        events = [e for e in c.events() if e.get("kind") == "access-failed"]
        return events if len({e.get("node") for e in events}) == 3 else []

    events = until("access-failed from every node", failed_events)
    assert {e["reason"] for e in events} == {f"{missing}: no such file on this node"}
    missing.write_bytes(issuer.rsa_pem.read_bytes())  # the operator copies it in
    until("the service served again", lambda: answered("/shop/admin", admin, 200), timeout=30)
