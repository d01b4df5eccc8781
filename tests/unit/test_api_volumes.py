"""`GET /v1/volumes` against a MemoryStore seeded like tests/unit/test_api.py,
with a replicated volume on the active-passive `db` and its copies' records."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from ninefold.api import create_app
from ninefold.spec import ClusterSpec, dump_spec, parse_spec
from ninefold.state.keys import SPEC_KEY, copy_key
from ninefold.state.records import CopyRecord
from ninefold.store.memory import MemoryStore
from tests.unit.test_api import SPEC, error_of, seed

VOLUME_SPEC = SPEC.replace(
    "    command: [db]\n",
    '    command: [db, "{volume.data}"]\n'
    "    volumes: {data: {replicate: continuous}, scratch: {}}\n",
)


def volume_spec() -> ClusterSpec:
    return parse_spec(VOLUME_SPEC)


async def seed_copies(store: MemoryStore, now: float) -> None:
    """db's active on n1 sends its volume to n2 (in sync) and n5 (down, behind)."""
    records = [
        CopyRecord(node="n1", source="n1", token=3, seq=12, synced_at=now - 1),
        CopyRecord(
            node="n2", source="n1", token=3, seq=12, synced_at=now - 1, completed_at=now - 0.8
        ),
        CopyRecord(
            node="n5",
            source="n1",
            token=3,
            seq=4,
            synced_at=now - 90,
            completed_at=now - 89,
            behind_since=now - 60,
            bytes_behind=2048,
        ),
    ]
    for record in records:
        await store.put(copy_key("db", "data", record.node), record.encode())


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = await seed(MemoryStore())
    await s.put(SPEC_KEY, dump_spec(volume_spec()).encode())
    yield s
    await s.close()


@pytest.fixture
async def client(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, volume_spec(), "n1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_volumes_show_every_copy_with_its_state(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    before = time.time()
    await seed_copies(store, before)
    response = await client.get("/v1/volumes")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["time"] >= before
    assert [(v["service"], v["volume"], v["source"]) for v in body["volumes"]] == [
        ("db", "data", "n1")
    ]
    copies = body["volumes"][0]["copies"]
    assert [(c["node"], c["role"], c["state"], c["alive"]) for c in copies] == [
        ("n1", "source", "source", True),
        ("n2", "copy", "in-sync", True),
        ("n5", "copy", "down", False),  # n5 has no lease in the seeded store
    ]
    n2, n5 = copies[1], copies[2]
    assert n2["last_sync"] == pytest.approx(before - 0.8)
    assert n2["lag_seconds"] == 0 and n2["bytes_behind"] == 0
    assert n5["lag_seconds"] >= 60 and n5["bytes_behind"] == 2048
    assert n5["verified_at"] is None and n5["error"] == ""


async def test_a_replicated_volume_without_copies_yet(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/volumes")).json()
    assert body["volumes"] == [{"service": "db", "volume": "data", "source": None, "copies": []}]


async def test_one_service(client: httpx.AsyncClient, store: MemoryStore) -> None:
    await seed_copies(store, time.time())
    db = (await client.get("/v1/volumes", params={"service": "db"})).json()
    assert [v["volume"] for v in db["volumes"]] == ["data"]
    web = await client.get("/v1/volumes", params={"service": "web"})
    assert web.status_code == 200 and web.json()["volumes"] == []


async def test_unknown_service_is_404_naming_the_services(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/volumes", params={"service": "shop"}), 404, "not_found")
    assert error["message"] == "no service named 'shop' (services: db, web)"


async def test_an_unreadable_record_is_left_out(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await seed_copies(store, time.time())
    await store.put(copy_key("db", "data", "n3"), b"not json")
    response = await client.get("/v1/volumes")
    assert response.status_code == 200
    assert [c["node"] for c in response.json()["volumes"][0]["copies"]] == ["n1", "n2", "n5"]


async def test_the_route_is_described_with_its_role(client: httpx.AsyncClient) -> None:
    described = (await client.get("/v1/openapi.json")).json()["paths"]["/v1/volumes"]["get"]
    assert "read" in described["description"]
    assert {"200", "404", "503"} <= set(described["responses"])
