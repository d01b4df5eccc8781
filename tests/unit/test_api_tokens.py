"""Bearer tokens: the records, join-token uses, and the API's 401 / 403."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.routing import APIRoute

from ninefold.api import create_app
from ninefold.api.auth import route_role
from ninefold.security.tokens import TokenError, check, new_token, parse_token, role_allows
from ninefold.state import tokens as token_records
from ninefold.store.memory import MemoryStore
from tests.unit.test_api import cluster_spec, seed

# --- records ------------------------------------------------------------------------------


def test_a_token_is_stored_only_as_a_hash() -> None:
    token, record = new_token("api", "operate", "ci", ttl=60, now=1000.0)
    ident, secret = parse_token(token)
    assert ident == record.id and secret not in record.model_dump_json()
    assert token not in record.model_dump_json()
    assert record.expires == 1060.0 and "digest" not in record.public()
    check(record, secret, "api", now=1059.0)


def test_the_public_record_is_every_field_but_the_digest() -> None:
    _, record = new_token("join", "admin", "n2", ttl=60, uses=2, now=1000.0)
    assert record.public() == record.model_dump(exclude={"digest"})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not a ninefold token"),
        ("Bearer abc", "not a ninefold token"),
        ("nf1.0123456789abcdef.short", "not a ninefold token"),
    ],
)
def test_malformed_tokens_are_refused(text: str, why: str) -> None:
    with pytest.raises(TokenError, match=why):
        parse_token(text)


def test_forged_expired_and_wrong_kind_tokens_are_refused() -> None:
    token, record = new_token("api", "admin", ttl=10, now=0.0)
    _, secret = parse_token(token)
    forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with pytest.raises(TokenError, match="unknown or revoked"):
        check(record, forged, "api", now=1.0)
    with pytest.raises(TokenError, match="expired"):
        check(record, secret, "api", now=10.0)
    with pytest.raises(TokenError, match="cannot be used as a join token"):
        check(record, secret, "join", now=1.0)
    with pytest.raises(TokenError, match="unknown or revoked"):
        check(None, secret, "api", now=1.0)


def test_roles_are_ordered() -> None:
    assert role_allows("admin", "operate") and role_allows("operate", "read")
    assert not role_allows("read", "operate") and not role_allows("operate", "admin")


async def test_a_join_token_allows_its_uses_then_says_used_up() -> None:
    store = MemoryStore()
    token, record = new_token("join", uses=2, ttl=3600)
    await token_records.store_token(store, record)
    assert (await token_records.consume_join_token(store, token)).uses == 1
    assert (await token_records.consume_join_token(store, token)).uses == 0
    with pytest.raises(TokenError, match="used up"):
        await token_records.consume_join_token(store, token)


async def test_concurrent_joins_cannot_both_take_the_last_use() -> None:
    store = MemoryStore()
    token, record = new_token("join", uses=1)
    await token_records.store_token(store, record)
    results = await asyncio.gather(
        *(token_records.consume_join_token(store, token) for _ in range(5)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1


async def test_an_api_token_is_not_a_join_token() -> None:
    store = MemoryStore()
    token, record = new_token("api", "admin")
    await token_records.store_token(store, record)
    with pytest.raises(TokenError, match="cannot be used as a join token"):
        await token_records.consume_join_token(store, token)


async def test_bootstrap_works_once() -> None:
    store = MemoryStore()
    first = await token_records.bootstrap(store)
    assert first is not None
    assert (await token_records.authenticate(store, first)).role == "admin"
    assert await token_records.bootstrap(store) is None


# --- the API ------------------------------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, MemoryStore]]:
    store = await seed(MemoryStore())
    app = create_app(store, cluster_spec(), "n1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://n1") as client:
        yield client, store


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_before_bootstrap_the_api_is_open(
    api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, _ = api
    assert (await client.get("/v1/status")).status_code == 200


async def test_after_bootstrap_every_route_but_health_needs_a_token(
    api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, _ = api
    created = await client.post("/v1/bootstrap")
    assert created.status_code == 201
    admin = created.json()["token"]
    again = await client.post("/v1/bootstrap")
    assert again.status_code == 409
    assert admin not in again.text

    assert (await client.get("/v1/health")).status_code == 200
    denied = await client.get("/v1/status")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="ninefold"'
    assert denied.json()["error"]["code"] == "unauthorized"
    assert (await client.get("/v1/status", headers=bearer(admin))).status_code == 200
    wrong = await client.get("/v1/status", headers=bearer(admin[:-2] + "xx"))
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["error"]["message"]
    assert admin[10:] not in wrong.text


async def test_roles_decide_what_a_token_may_do(
    api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, _ = api
    admin = (await client.post("/v1/bootstrap")).json()["token"]
    made = {}
    for role in ("read", "operate"):
        answer = await client.post(
            "/v1/tokens", json={"role": role, "name": f"{role} bot"}, headers=bearer(admin)
        )
        assert answer.status_code == 201, answer.text
        made[role] = answer.json()["token"]

    reader, operator = bearer(made["read"]), bearer(made["operate"])
    assert (await client.get("/v1/services", headers=reader)).status_code == 200
    scale = await client.post("/v1/services/web/scale", json={"replicas": 3}, headers=reader)
    assert scale.status_code == 403
    assert "needs role operate" in scale.json()["error"]["message"]
    ok = await client.post("/v1/services/web/scale", json={"replicas": 3}, headers=operator)
    assert ok.status_code == 202, ok.text
    spec = await client.put("/v1/spec", json={"yaml": "x"}, headers=operator)
    assert spec.status_code == 403
    assert (await client.get("/v1/tokens", headers=operator)).status_code == 403

    listed = (await client.get("/v1/tokens", headers=bearer(admin))).json()
    assert {t["role"] for t in listed} == {"admin", "read", "operate"}
    for secret in (admin, *made.values()):
        assert parse_token(secret)[1] not in str(listed)
    assert all("digest" not in t for t in listed)


async def test_a_revoked_token_stops_working_at_once(
    api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, _ = api
    admin = (await client.post("/v1/bootstrap")).json()["token"]
    made = await client.post("/v1/tokens", json={"role": "read"}, headers=bearer(admin))
    body = made.json()
    assert (await client.get("/v1/nodes", headers=bearer(body["token"]))).status_code == 200
    gone = await client.delete(f"/v1/tokens/{body['id']}", headers=bearer(admin))
    assert gone.status_code == 204
    assert (await client.get("/v1/nodes", headers=bearer(body["token"]))).status_code == 401
    again = await client.delete(f"/v1/tokens/{body['id']}", headers=bearer(admin))
    assert again.status_code == 404


async def test_the_event_stream_takes_the_token_in_the_query(
    api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, _ = api
    admin = (await client.post("/v1/bootstrap")).json()["token"]
    assert (await client.get("/v1/events")).status_code == 401
    assert (await client.get("/v1/events", params={"access_token": admin})).status_code == 200
    # Only reads take it from the query, so a link cannot change anything.
    scale = await client.post(
        "/v1/services/web/scale", params={"access_token": admin}, json={"replicas": 1}
    )
    assert scale.status_code == 401


async def test_an_expired_token_and_join_tokens_do_not_open_the_api(
    api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, store = api
    admin = (await client.post("/v1/bootstrap")).json()["token"]
    join = await client.post("/v1/tokens", json={"kind": "join", "uses": 1}, headers=bearer(admin))
    answer = await client.get("/v1/status", headers=bearer(join.json()["token"]))
    assert answer.status_code == 401 and "join token" in answer.json()["error"]["message"]
    token, record = new_token("api", "admin", now=0.0, ttl=1)
    await token_records.store_token(store, record)
    expired = await client.get("/v1/status", headers=bearer(token))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    bad = await client.post("/v1/tokens", json={"kind": "api", "uses": 2}, headers=bearer(admin))
    assert bad.status_code == 422


def test_every_route_declares_its_role_or_is_health() -> None:
    app = create_app(MemoryStore(), cluster_spec(), "n1")
    open_routes = {"/v1/health", "/v1/bootstrap", "/", "/v1/ca", "/v1/join"}
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path in open_routes:
            continue
        if route.path.startswith(("/v1/openapi", "/v1/docs")):
            continue
        assert route_role(route) is not None, f"{route.methods} {route.path} declares no role"
    schema = app.openapi()
    scale = schema["paths"]["/v1/services/{name}/scale"]["post"]
    assert "role `operate`" in scale["description"] and "403" in scale["responses"]
