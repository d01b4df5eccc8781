"""Access policies enforced by the builtin gateway, against real sockets: every
refusal is answered by the gateway (RFC 6750 header, JSON body) before any
backend connection; every success reaches the backend with the verified
subject (and without a subject header the client sent). Also: how the
gateway loads policies (AccessPolicies) and reports key problems."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ninefold.gateway import access
from ninefold.gateway.access import AccessPolicy
from ninefold.gateway.builtin import BuiltinEngine
from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.policies import AccessPolicies
from ninefold.gateway.routes import RoutingTable, ServiceRoutes, build_table
from ninefold.spec import parse_spec
from ninefold.spec.routing import BalanceSpec, RouteSpec
from tests.unit.test_access import REFUSALS, Issuer, policy_spec, refusal
from tests.unit.test_builtin_gateway import HOST, Upstream


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


class Echo(Upstream):
    """Answers with the request head it got, as JSON: the path and the header
    lines in order (duplicates kept)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                first, *lines = head.rstrip("\r\n").split("\r\n")
                pairs = [line.split(": ", 1) for line in lines]
                headers = {k: v for k, v in pairs}
                body = json.dumps(
                    {"path": first.split(" ")[1], "headers": headers, "lines": pairs}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Echo("shop-0").start()
    yield up
    up.kill()


@pytest.fixture
async def gateway(issuer: Issuer, upstream: Upstream) -> AsyncIterator[BuiltinEngine]:
    engine = BuiltinEngine(GatewaySettings("n1", HOST, 0, Path("/nonexistent"), Path("/x")))
    await engine.start()
    policy = AccessPolicy.load("shop", policy_spec(issuer))
    assert policy.error is None
    routes = ServiceRoutes(
        "shop", RouteSpec(http="/shop"), BalanceSpec(), (upstream.backend(),), policy
    )
    open_routes = ServiceRoutes(
        "open", RouteSpec(http="/open"), BalanceSpec(), (upstream.backend(),)
    )
    await engine.apply(RoutingTable({"shop": routes, "open": open_routes}))
    try:
        yield engine
    finally:
        await engine.stop()


def client(engine: BuiltinEngine) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{HOST}:{engine.port}", timeout=10)


class Answer:
    """A response read off a raw socket (httpx would normalise the paths under test)."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.content = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        self.status_code = int(status.split(" ")[1])
        self.header_list = [tuple(line.split(": ", 1)) for line in lines]
        self.headers = {k.lower(): v for k, v in self.header_list}
        self.text = self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


async def call(
    engine: BuiltinEngine, path: str, authorization: list[bytes], **headers: str
) -> Answer:
    """GET `/shop<path>` as written, with these Authorization values and headers."""
    lines = [f"GET /shop{path} HTTP/1.1".encode(), f"Host: {HOST}".encode(), b"Connection: close"]
    lines += [b"Authorization: " + value for value in authorization]
    lines += [f"{k.replace('_', '-')}: {v}".encode() for k, v in headers.items()]
    reader, writer = await asyncio.open_connection(HOST, engine.port)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        return Answer(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()


@pytest.mark.parametrize("case", REFUSALS)
async def test_each_refusal_is_answered_by_the_gateway(
    gateway: BuiltinEngine, upstream: Upstream, issuer: Issuer, case: str
) -> None:
    authorization, path, deny = refusal(issuer, case)
    r = await call(gateway, path, authorization)
    assert r.status_code == deny.status
    assert r.headers["content-type"] == "application/json"
    assert r.json() == access.body("shop", deny)
    assert r.headers["www-authenticate"] == access.challenge("shop", deny)
    assert upstream.connections == 0  # refused before any backend connection
    snap = gateway.snapshot()["shop"]
    assert snap.total.requests == 1
    assert snap.total.responses == {f"{deny.status // 100}xx": 1}


async def test_exact_answers(gateway: BuiltinEngine, issuer: Issuer) -> None:
    r = await call(gateway, "/", [])
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="shop"'
    assert r.text == '{"error": "unauthorized", "service": "shop", "detail": "no bearer token"}\n'
    r = await call(gateway, "/", [f"Bearer {issuer.token(exp=int(time.time()) - 100)}".encode()])
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        'Bearer realm="shop", error="invalid_token", error_description="token expired"'
    )
    assert r.text == '{"error": "unauthorized", "service": "shop", "detail": "token expired"}\n'
    r = await call(gateway, "/admin", [f"Bearer {issuer.token()}".encode()])
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == (
        'Bearer realm="shop", error="insufficient_scope", error_description="missing role", '
        'scope="ROLE_ADMIN"'
    )
    assert r.text == '{"error": "forbidden", "service": "shop", "detail": "missing role"}\n'


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_valid_token_reaches_the_backend_with_its_subject(
    gateway: BuiltinEngine, upstream: Upstream, issuer: Issuer, alg: str
) -> None:
    token = issuer.token(alg, sub=f"bob-{alg}", authorities=["ROLE_OTHER", "ROLE_ADMIN"])
    r = await call(
        gateway,
        "/admin/x?y=1",
        [f"Bearer {token}".encode()],
        X_Subject="root",
        x_subject="root2",
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/admin/x?y=1"
    assert seen["headers"]["X-Subject"] == f"bob-{alg}"
    subjects = [(k, v) for k, v in seen["lines"] if k.lower() == "x-subject"]
    assert subjects == [("X-Subject", f"bob-{alg}")]
    assert seen["headers"]["Authorization"] == f"Bearer {token}"  # the instance may want it
    assert seen["headers"]["X-Forwarded-Proto"] == "http"


async def test_client_subject_header_is_stripped_without_sub(
    gateway: BuiltinEngine, issuer: Issuer
) -> None:
    token = issuer.token(sub=None)
    r = await call(gateway, "/", [f"Bearer {token}".encode()], X_Subject="admin")
    assert r.status_code == 200
    assert not any(k.lower() == "x-subject" for k, _ in r.json()["lines"])


async def test_services_without_policy_are_untouched(gateway: BuiltinEngine) -> None:
    async with client(gateway) as c:
        r = await c.get("/open/x", headers={"X-Subject": "kept"})
    assert r.status_code == 200
    assert r.json()["headers"]["X-Subject"] == "kept"


async def test_keep_alive_survives_refusals(gateway: BuiltinEngine, issuer: Issuer) -> None:
    good = {"Authorization": f"Bearer {issuer.token()}"}
    async with client(gateway) as c:
        statuses = [(await c.get("/shop/", headers=h)).status_code for h in ({}, good, {}, good)]
    assert statuses == [401, 200, 401, 200]
    assert len(gateway.clients) <= 1


async def test_unavailable_policy_refuses_everything(
    issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    engine = BuiltinEngine(GatewaySettings("n1", HOST, 0, Path("/nonexistent"), Path("/x")))
    await engine.start()
    try:
        spec = policy_spec(issuer, keys=[str(tmp_path / "gone.pem")])
        policy = AccessPolicy.load("shop", spec)
        routes = ServiceRoutes(
            "shop", RouteSpec(http="/shop"), BalanceSpec(), (upstream.backend(),), policy
        )
        await engine.apply(RoutingTable({"shop": routes}))
        r = await call(engine, "/", [f"Bearer {issuer.token()}".encode()])
        assert r.status_code == 503
        assert r.json() == {"error": "access policy unavailable", "service": "shop"}
        assert upstream.connections == 0
        assert engine.snapshot()["shop"].total.responses == {"error": 1}
    finally:
        await engine.stop()


# --- loading policies for the gateway ---------------------------------------------------


class Journal:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def record(self, kind: str, subject: str, reason: str = "") -> None:
        self.events.append((kind, subject, reason))


def spec_text(key: Path) -> str:
    return f"""
cluster: c
nodes: [{{name: n1, address: 127.0.0.1, store: true}}]
services:
  shop:
    command: x {{port}}
    route: {{http: /shop}}
    access: {{jwt: {{keys: [{key}]}}, rules: [{{path: /, roles: [a]}}]}}
  open:
    command: x {{port}}
    route: {{http: /open}}
"""


async def test_policies_load_once_retry_and_report(issuer: Issuer, tmp_path: Path) -> None:
    key = tmp_path / "later.pem"
    spec = parse_spec(spec_text(key))
    journal = Journal()
    policies = AccessPolicies()
    first = await policies.update(spec, journal)
    assert set(first) == {"shop"}
    assert first["shop"].error == f"{key}: no such file on this node"
    assert journal.events == [("access-failed", "shop", first["shop"].error)]
    await policies.update(spec, journal)
    assert len(journal.events) == 1  # said once
    # the table never routes the service unprotected meanwhile
    table = build_table(spec, [], first)
    assert table.services["shop"].access is first["shop"]
    assert build_table(spec, []).services["shop"].access.error == "keys not loaded yet"  # type: ignore[union-attr]

    key.write_bytes(issuer.rsa_pem.read_bytes())
    loaded = await policies.update(spec, journal)
    assert loaded["shop"].error is None
    assert journal.events[-1] == ("access-loaded", "shop", "1 key(s)")
    again = await policies.update(spec, journal)
    assert again["shop"] is loaded["shop"]  # not read again: nothing changed

    key.write_bytes(issuer.ec_pem.read_bytes())  # the file changed on disk
    rotated = await policies.update(spec, journal)
    assert rotated["shop"] is not loaded["shop"]
    assert [k.algorithm for k in rotated["shop"].keys] == ["ES256"]

    gone = parse_spec(spec_text(key).replace("    access:", "    # access:"))
    assert await policies.update(gone, journal) == {}


def table_with(policy: AccessPolicy | None, **kw: Any) -> RoutingTable:
    routes = ServiceRoutes("shop", RouteSpec(http="/shop"), BalanceSpec(), (), policy, **kw)
    return RoutingTable({"shop": routes})


def test_tables_differ_when_policies_do(issuer: Issuer) -> None:
    one = AccessPolicy.load("shop", policy_spec(issuer))
    same = AccessPolicy.load("shop", policy_spec(issuer))
    other = AccessPolicy.load("shop", policy_spec(issuer, audience="x"))
    assert table_with(one) == table_with(same)
    assert table_with(one) != table_with(other)
    assert table_with(one) != table_with(None)
