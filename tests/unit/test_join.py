"""`GET /v1/ca` and `POST /v1/join` against the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from ninefold.agent.records import SPEC_KEY
from ninefold.api import create_app
from ninefold.api.join import fingerprint
from ninefold.security import tokens
from ninefold.security.ca import create_ca, new_key, write_ca
from ninefold.security.certs import node_csr
from ninefold.spec import parse_spec
from ninefold.store.memory import MemoryStore
from tests.unit.test_api import cluster_spec, seed


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    write_ca(create_ca("shop"), tmp_path / "ca.key", tmp_path / "ca.crt")
    return tmp_path


async def client_for(
    store: MemoryStore, files: tuple[Path, Path | None] | None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, cluster_spec(), "n1", ca_files=lambda: files)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://n1") as client:
        yield client


def join_body(token: str, name: str = "n9", address: str = "10.0.0.9") -> dict[str, str]:
    return {
        "token": token,
        "name": name,
        "address": address,
        "csr": node_csr(name, new_key()).decode(),
    }


async def test_a_join_adds_the_node_signs_its_key_and_uses_the_token(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("join", uses=2)
    await tokens.store_token(store, record)
    async for client in client_for(store, (ca_dir / "ca.crt", ca_dir / "ca.key")):
        ca = (await client.get("/v1/ca")).json()
        assert ca["fingerprint"] == fingerprint((ca_dir / "ca.crt").read_bytes())
        assert ca["cluster"] == "shop"
        answer = await client.post("/v1/join", json=join_body(token))
        assert answer.status_code == 201, answer.text
        cert = x509.load_pem_x509_certificate(answer.json()["cert"].encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "n9" in names.get_values_for_type(x509.DNSName)
        stored = parse_spec((await store.get(SPEC_KEY)).value.decode())  # type: ignore[union-attr]
        assert stored.node("n9").address == "10.0.0.9" and not stored.node("n9").store
        assert (await tokens.read_record(store, record.id)).uses == 1  # type: ignore[union-attr]

        again = await client.post("/v1/join", json=join_body(token, "n9", "10.0.0.10"))
        assert again.status_code == 409 and "n9" in again.json()["error"]["message"]
        assert (await tokens.read_record(store, record.id)).uses == 1  # type: ignore[union-attr]


async def test_joins_without_a_ca_key_or_a_ca_are_refused(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("join")
    await tokens.store_token(store, record)
    async for client in client_for(store, (ca_dir / "ca.crt", None)):
        answer = await client.post("/v1/join", json=join_body(token))
        assert answer.status_code == 409 and "cannot sign" in answer.json()["error"]["message"]
    async for client in client_for(store, None):
        assert (await client.get("/v1/ca")).status_code == 404
        assert (await client.post("/v1/join", json=join_body(token))).status_code == 404


async def test_an_api_token_is_no_join_token(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("api", "admin")
    await tokens.store_token(store, record)
    async for client in client_for(store, (ca_dir / "ca.crt", ca_dir / "ca.key")):
        answer = await client.post("/v1/join", json=join_body(token))
        assert answer.status_code == 401 and "join token" in answer.json()["error"]["message"]
