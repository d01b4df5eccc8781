"""`GET /v1/ca` and `POST /v1/join` against the in-memory store."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from ninefold.agent.store_join import promote_when_caught_up
from ninefold.api import create_app
from ninefold.api.join import fingerprint, initial_cluster
from ninefold.security import tokens
from ninefold.security.ca import create_ca, new_key, write_ca
from ninefold.security.certs import node_csr
from ninefold.spec import parse_spec
from ninefold.state import tokens as token_records
from ninefold.state.keys import SPEC_KEY, token_key
from ninefold.state.reads import read_events
from ninefold.store.base import StoreError
from ninefold.store.embedded import JoinRecordError, StoreJoin, member_argv
from ninefold.store.etcd import StoreMember
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
    await token_records.store_token(store, record)
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
        assert (await token_records.read_record(store, record.id)).uses == 1  # type: ignore[union-attr]

        again = await client.post("/v1/join", json=join_body(token, "n9", "10.0.0.10"))
        assert again.status_code == 409 and "n9" in again.json()["error"]["message"]
        assert (await token_records.read_record(store, record.id)).uses == 1  # type: ignore[union-attr]


async def test_joins_without_a_ca_key_or_a_ca_are_refused(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("join")
    await token_records.store_token(store, record)
    async for client in client_for(store, (ca_dir / "ca.crt", None)):
        answer = await client.post("/v1/join", json=join_body(token))
        assert answer.status_code == 409 and "cannot sign" in answer.json()["error"]["message"]
    async for client in client_for(store, None):
        assert (await client.get("/v1/ca")).status_code == 404
        assert (await client.post("/v1/join", json=join_body(token))).status_code == 404


async def test_an_api_token_is_no_join_token(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("api", "admin")
    await token_records.store_token(store, record)
    async for client in client_for(store, (ca_dir / "ca.crt", ca_dir / "ca.key")):
        answer = await client.post("/v1/join", json=join_body(token))
        assert answer.status_code == 401 and "join token" in answer.json()["error"]["message"]


async def test_a_damaged_token_record_is_refused_as_unknown(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("join")
    await store.put(token_key(record.id), b"{not a record")
    async for client in client_for(store, (ca_dir / "ca.crt", ca_dir / "ca.key")):
        answer = await client.post("/v1/join", json=join_body(token))
        assert answer.status_code == 401 and "unknown" in answer.json()["error"]["message"]


async def test_a_store_member_needs_an_embedded_etcd_store(ca_dir: Path) -> None:
    store = await seed(MemoryStore())
    token, record = tokens.new_token("join", uses=1)
    await token_records.store_token(store, record)
    async for client in client_for(store, (ca_dir / "ca.crt", ca_dir / "ca.key")):
        answer = await client.post("/v1/join", json={**join_body(token), "store": True})
        assert answer.status_code == 409, answer.text
        assert "cannot become a store member" in answer.json()["error"]["message"]
        # Nothing half-applied: no node added, no use spent.
        stored = parse_spec((await store.get(SPEC_KEY)).value.decode())  # type: ignore[union-attr]
        assert "n9" not in [n.name for n in stored.nodes]
        assert (await token_records.read_record(store, record.id)).uses == 1  # type: ignore[union-attr]


def test_the_added_member_goes_by_the_name_it_will_start_with() -> None:
    peer = "https://10.0.0.9:2380"
    members = [
        StoreMember(1, "n1", ("https://10.0.0.1:2380",), ("https://10.0.0.1:2379",), False),
        StoreMember(2, "", (peer,), (), True),
        StoreMember(3, "", ("https://10.0.0.8:2380",), (), True),  # someone else's, not started
    ]
    assert initial_cluster(members, "n9", peer) == "n1=https://10.0.0.1:2380,n9=" + peer


def test_a_joined_member_starts_into_the_existing_store(tmp_path: Path) -> None:
    spec = cluster_spec()
    node = spec.nodes[0]
    fresh = member_argv(spec, node, tmp_path / "etcd", "etcd")
    assert fresh[fresh.index("--initial-cluster-state") + 1] == "new"

    assert StoreJoin.read(tmp_path) is None
    StoreJoin(0xABC, "n1=http://10.0.0.1:2380,n9=http://10.0.0.9:2380").write(tmp_path)
    joined = StoreJoin.read(tmp_path)
    assert joined is not None and joined.member_id == 0xABC
    argv = member_argv(spec, node, tmp_path / "etcd", "etcd", joined=joined)
    assert argv[argv.index("--initial-cluster-state") + 1] == "existing"
    assert argv[argv.index("--initial-cluster") + 1] == joined.initial_cluster

    (tmp_path / "store-join.json").write_text("{not json")
    with pytest.raises(JoinRecordError, match=r"store-join\.json is damaged"):
        StoreJoin.read(tmp_path)


class LearnerStore(MemoryStore):
    """A memory store with one etcd learner that catches up after `lag` tries."""

    def __init__(self, lag: int) -> None:
        super().__init__()
        self.lag = lag
        self.member = StoreMember(7, "n9", ("http://10.0.0.9:2380",), (), True)

    async def members(self) -> list[StoreMember]:
        return [self.member]

    async def promote_member(self, member_id: int) -> None:
        assert member_id == self.member.id
        if self.lag > 0:
            self.lag -= 1
            raise StoreError("can only promote a learner member which is in sync with leader")
        self.member = dataclasses.replace(self.member, learner=False)


async def test_a_learner_is_promoted_once_it_has_caught_up() -> None:
    store = LearnerStore(lag=2)
    joined = StoreJoin(7, "n9=http://10.0.0.9:2380")
    assert await promote_when_caught_up(store, joined, "n9", every=0.01)  # type: ignore[arg-type]
    assert not store.member.learner and store.lag == 0
    events = await read_events(store)
    assert [(e.kind, e.subject) for e in events] == [("store-member-promoted", "n9")]
    # A voter already: nothing to do, no second event.
    assert await promote_when_caught_up(store, joined, "n9", every=0.01)  # type: ignore[arg-type]
    assert len(await read_events(store)) == 1
    # Removed from the store meanwhile: give up (the agent logs it).
    gone = StoreJoin(8, "")
    assert not await promote_when_caught_up(store, gone, "n9", every=0.01)  # type: ignore[arg-type]
