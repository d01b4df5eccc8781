"""The API against its own OpenAPI description, with schemathesis: requests the
description allows (and some it does not) never get a server error, other than
a 503 where the description says the store may be unavailable, and every
answer matches the description."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from ninefold.api import create_app
from ninefold.store.base import (
    Compare,
    Delete,
    KeyValue,
    Listing,
    Put,
    Store,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
)
from ninefold.store.memory import MemoryStore
from tests.unit.test_api import cluster_spec, seed


class LoopFreeMemoryStore(MemoryStore):
    """schemathesis runs the app on event loops of its own, one after another:
    leases are then expired on access rather than by a task bound to one loop."""

    def _ensure_reaper(self) -> None:
        pass


class ReseededStore(Store):
    """The app's store, replaced by a freshly seeded one before every test."""

    def __init__(self) -> None:
        self.inner: Store = LoopFreeMemoryStore()

    def reseed(self) -> None:
        self.inner = asyncio.run(seed(LoopFreeMemoryStore()))

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def list(self, prefix: str) -> Listing:
        return await self.inner.list(prefix)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return await self.inner.put(key, value, lease)

    async def delete(self, key: str, prefix: bool = False) -> int:
        return await self.inner.delete(key, prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        return await self.inner.txn(compares, success, failure)

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        return self.inner.watch(prefix, start_revision)

    async def grant_lease(self, ttl: float) -> int:
        return await self.inner.grant_lease(ttl)

    async def keep_alive(self, lease: int) -> float:
        return await self.inner.keep_alive(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self.inner.revoke_lease(lease)

    async def close(self) -> None:
        await self.inner.close()


class DownStore(LoopFreeMemoryStore):
    """A store without quorum: every request fails."""

    async def get(self, key: str) -> KeyValue | None:
        raise StoreUnavailable("no store member answers")

    async def list(self, prefix: str) -> Listing:
        raise StoreUnavailable("no store member answers")

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        raise StoreUnavailable("no store member answers")

    async def delete(self, key: str, prefix: bool = False) -> int:
        raise StoreUnavailable("no store member answers")

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        raise StoreUnavailable("no store member answers")

    async def grant_lease(self, ttl: float) -> int:
        raise StoreUnavailable("no store member answers")


def load(app: FastAPI, **checks: dict[str, list[str]]) -> schemathesis.BaseSchema:
    config = {
        # A spec's validity is not something JSON Schema can say: a well-formed
        # body may still hold a bad spec (or replicas the nodes cannot hold), 422.
        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]},
        **checks,
    }
    loaded = schemathesis.openapi.from_asgi(
        "/v1/openapi.json", app, config=schemathesis.Config.from_dict({"checks": config})
    )
    # Event streams never end: nothing to fuzz there (test_api and
    # test_kv_watch read them).
    return loaded.exclude(path=["/v1/events/stream", "/v1/kv-watch"])


ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
STORE = ReseededStore()
schema = load(create_app(STORE, cluster_spec(), "n1", lambda: b"ninefold_up 1\n"))
# Without quorum, a 503 is the one server error allowed (and it must be documented).
down_schema = load(
    create_app(DownStore(), cluster_spec(), "n1"),
    not_a_server_error={"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
)

deterministic = settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def fresh_store() -> Iterator[None]:
    STORE.reseed()
    yield


@schema.parametrize()
@deterministic
def test_api_conforms_to_its_description(case: schemathesis.Case) -> None:
    case.call_and_validate()


@down_schema.parametrize()
@settings(deterministic, max_examples=3)
def test_api_without_store_answers_503_as_described(case: schemathesis.Case) -> None:
    case.call_and_validate()
