"""The REST API (docs/api.md) against a MemoryStore seeded with a small cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ninefold.agent.journal import EventJournal
from ninefold.api import ApiServer, create_app
from ninefold.api import app as app_module
from ninefold.spec import ClusterSpec, dump_spec, parse_spec
from ninefold.state.keys import SPEC_KEY, active_lock, assign_key, drain_key, node_key, status_key
from ninefold.state.records import AssignmentRecord, InstanceStatus, NodeRecord
from ninefold.store.base import Compare, Delete, Put, StoreUnavailable, TxnResult
from ninefold.store.memory import MemoryStore
from tests.helpers import free_port

SPEC = """\
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, zone: a, store: true, labels: {disk: ssd}}
  - {name: n2, address: 10.0.0.2, zone: b, labels: {disk: ssd}}
  - {name: n3, address: 10.0.0.3, zone: c, labels: {disk: ssd}}
  - {name: n4, address: 10.0.0.4, zone: d}
  - {name: n5, address: 10.0.0.5, zone: e, labels: {disk: ssd}}
services:
  web:
    command: [web, "{port}"]
    replicas: 2
  db:
    command: [db]
    mode: active-passive
    replicas: 2
    placement: {constraints: {disk: ssd}}
"""
ADDRESSES = {f"n{i}": f"10.0.0.{i}" for i in range(1, 6)}


def cluster_spec() -> ClusterSpec:
    return parse_spec(SPEC)


async def seed(store: MemoryStore) -> MemoryStore:
    """n1..n4 up (n5 down), n3 drained, n1 the leader. web-0 on n1 and web-1 on
    n2, both running and healthy; db-0 on n1 is the active (holder n1/db-0),
    db-1 on n2 a hot standby."""
    await store.put(SPEC_KEY, dump_spec(cluster_spec()).encode())
    lease = await store.grant_lease(600)
    for name in ("n1", "n2", "n3", "n4"):
        record = NodeRecord(
            name=name, address=ADDRESSES[name], zone="z", region="r", api_port=7070, pid=1
        )
        await store.put(node_key(name), record.encode(), lease)
    await store.put(drain_key("n3"), b"")
    assert await store.try_lock("leader", "n1", lease) is not None
    assert await store.try_lock(active_lock("db"), "n1/db-0", lease) is not None
    placed = [("web", "web-0", "n1"), ("web", "web-1", "n2"), ("db", "db-0", "n1")]
    placed.append(("db", "db-1", "n2"))
    for service, instance, node in placed:
        record = AssignmentRecord(service=service, instance=instance, node=node)
        await store.put(assign_key(node, instance), record.encode())
    statuses = [
        ("web-0", "n1", "running", "healthy", "replica"),
        ("web-1", "n2", "running", "healthy", "replica"),
        ("db-0", "n1", "running", "none", "active"),
        ("db-1", "n2", "running", "none", "standby"),
    ]
    for instance, node, state, health, role in statuses:
        status = InstanceStatus(
            service=instance.split("-")[0],
            instance=instance,
            node=node,
            address=ADDRESSES[node],
            ports={"main": 20000 + int(node[1:])},
            state=state,
            health=health,
            role=role,
            pid=100,
        )
        await store.put(status_key(node, instance), status.encode(), lease)
    return store


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = await seed(MemoryStore())
    yield s
    await s.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "web-0.log").write_text("".join(f"line {i}\n" for i in range(1, 6)))
    return logs


@pytest.fixture
def app(store: MemoryStore, log_dir: Path) -> FastAPI:
    return create_app(store, cluster_spec(), "n1", lambda: b"ninefold_up 1\n", log_dir)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


async def stored_spec(store: MemoryStore) -> ClusterSpec:
    item = await store.get(SPEC_KEY)
    assert item is not None
    return parse_spec(item.value.decode())


# --- reading ----------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    before = time.time()
    response = await client.get("/v1/health")
    after = time.time()
    assert response.status_code == 200
    body = response.json()
    assert before <= body.pop("time") <= after  # the agent's clock, for `ninefold doctor`
    assert body == {"node": "n1", "store": "ok", "version": "0.1.0"}


async def test_status_is_the_whole_picture(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/status")).json()
    assert body["cluster"] == "shop"
    assert body["leader"] == "n1"
    states = {n["name"]: n["state"] for n in body["nodes"]}
    assert states == {"n1": "up", "n2": "up", "n3": "drained", "n4": "up", "n5": "down"}
    assert {s["name"] for s in body["services"]} == {"web", "db"}
    assert [i["instance"] for i in body["instances"]] == ["db-0", "db-1", "web-0", "web-1"]


async def test_nodes(client: httpx.AsyncClient) -> None:
    nodes = (await client.get("/v1/nodes")).json()
    assert nodes[0] == {
        "name": "n1",
        "address": "10.0.0.1",
        "zone": "a",
        "state": "up",
        "leader": True,
        "store_member": True,
        "role": "worker",
    }
    one = await client.get("/v1/nodes/n3")
    assert one.json()["state"] == "drained"
    error = error_of(await client.get("/v1/nodes/n9"), 404, "not_found")
    assert "n9" in error["message"]


async def test_services(client: httpx.AsyncClient) -> None:
    services = {s["name"]: s for s in (await client.get("/v1/services")).json()}
    assert services["db"] == {
        "name": "db",
        "mode": "active-passive",
        "desired": 2,
        "healthy": 2,
        "active": "n1/db-0",
        "fencing_token": services["db"]["fencing_token"],
    }
    assert isinstance(services["db"]["fencing_token"], int)
    assert services["web"]["active"] is None
    web = (await client.get("/v1/services/web")).json()
    assert web["desired"] == 2
    assert [i["instance"] for i in web["instances"]] == ["web-0", "web-1"]
    error_of(await client.get("/v1/services/nope"), 404, "not_found")


async def test_instances(client: httpx.AsyncClient) -> None:
    instances = (await client.get("/v1/instances")).json()
    assert len(instances) == 4
    one = (await client.get("/v1/instances/db-1")).json()
    assert one == {
        "instance": "db-1",
        "service": "db",
        "node": "n2",
        "state": "running",
        "health": "none",
        "role": "standby",
        "address": "10.0.0.2",
        "ports": {"main": 20002},
        "restarts": 0,
        "fencing_token": None,
        "pid": 100,
        "draining": False,
        "detail": "",
    }
    error_of(await client.get("/v1/instances/nope-0"), 404, "not_found")


async def test_instance_log_here(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/instances/web-0/log", params={"lines": 2})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "line 4\nline 5\n"
    everything = await client.get("/v1/instances/web-0/log")
    assert everything.text.splitlines() == [f"line {i}" for i in range(1, 6)]
    # Runs here but wrote nothing yet: empty, not an error.
    assert (await client.get("/v1/instances/db-0/log")).text == ""


async def test_instance_log_elsewhere_names_the_node(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/instances/web-1/log"), 404, "not_found")
    assert "n2" in error["message"]
    assert "10.0.0.2:7070" in error["message"]
    error_of(await client.get("/v1/instances/nope-0/log"), 404, "not_found")
    error_of(await client.get("/v1/instances/web-0/log?lines=0"), 422, "invalid")


async def test_spec(client: httpx.AsyncClient, store: MemoryStore) -> None:
    body = (await client.get("/v1/spec")).json()
    item = await store.get(SPEC_KEY)
    assert item is not None
    assert body == {"yaml": item.value.decode(), "revision": item.mod_revision}


async def test_spec_falls_back_to_the_agents_own() -> None:
    app = create_app(MemoryStore(), cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = (await c.get("/v1/spec")).json()
    assert body["revision"] == 0
    assert parse_spec(body["yaml"]) == cluster_spec()


async def test_events_newest_oldest_first(client: httpx.AsyncClient, store: MemoryStore) -> None:
    journal = EventJournal(store, "n1")
    for i in range(3):
        await journal.record("placed", f"web-{i}", "scheduled", node="n2")
    events = (await client.get("/v1/events", params={"limit": 2})).json()
    assert [e["subject"] for e in events] == ["web-1", "web-2"]
    assert set(events[0]) == {"time", "kind", "subject", "reason", "node", "data"}
    assert events[0]["data"] == {"node": "n2"}
    assert len((await client.get("/v1/events")).json()) == 3
    error_of(await client.get("/v1/events", params={"limit": 0}), 422, "invalid")


# --- event stream -----------------------------------------------------------------


class AsgiStream:
    """Drives one streaming request through the ASGI app by hand (httpx's
    ASGITransport reads a response whole, which an event stream never is)."""

    def __init__(self, app: FastAPI, path: str) -> None:
        self.app = app
        self.path = path
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.disconnect = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiStream:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"test"), (b"accept", b"text/event-stream")],
            "client": ("127.0.0.1", 1234),
            "server": ("test", 80),
        }
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await self.messages.put(message)

        self.task = asyncio.create_task(self.app(scope, receive, send))
        return self

    async def next_message(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), 5)

    async def next_data(self) -> dict[str, Any]:
        """The JSON of the next `data:` line (skipping keepalive comments)."""
        while True:
            message = await self.next_message()
            assert message["type"] == "http.response.body"
            for line in message.get("body", b"").decode().splitlines():
                if line.startswith("data: "):
                    return json.loads(line[len("data: ") :])

    async def __aexit__(self, *exc: object) -> None:
        self.disconnect.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


async def test_event_stream_sends_new_events(app: FastAPI, store: MemoryStore) -> None:
    journal = EventJournal(store, "n1")
    await journal.record("old", "before the stream")
    async with AsgiStream(app, "/v1/events/stream") as stream:
        start = await stream.next_message()
        assert start["type"] == "http.response.start"
        assert start["status"] == 200
        assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
        await journal.record("failover", "db", "active lost", to="n2")
        event = await stream.next_data()
        assert event["kind"] == "failover"
        assert event["subject"] == "db"
        assert event["data"] == {"to": "n2"}
    # The client went away: the stream and its watch are gone.
    assert not store._watchers


async def test_event_stream_ends_when_the_server_stops(app: FastAPI) -> None:
    async with AsgiStream(app, "/v1/events/stream") as stream:
        assert (await stream.next_message())["type"] == "http.response.start"
        app.state.event_streams.close()
        while (await stream.next_message()).get("more_body", False):
            pass
        assert stream.task is not None
        await asyncio.wait_for(stream.task, 5)


# --- changing ---------------------------------------------------------------------


def changed_spec(**web: Any) -> str:
    spec = cluster_spec()
    services = dict(spec.services)
    services["web"] = services["web"].model_copy(update=web)
    return dump_spec(spec.model_copy(update={"services": services}))


async def test_spec_dry_run_shows_the_diff_and_applies_nothing(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    before = await store.get(SPEC_KEY)
    assert before is not None
    response = await client.put(
        "/v1/spec", params={"dry_run": "true"}, json={"yaml": changed_spec(replicas=3)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["applied"] is False
    assert body["revision"] == before.mod_revision
    assert "-    replicas: 2" in body["diff"]
    assert "+    replicas: 3" in body["diff"]
    assert body["diff"][0].startswith("--- ")
    after = await store.get(SPEC_KEY)
    assert after == before


async def test_spec_apply_writes(client: httpx.AsyncClient, store: MemoryStore) -> None:
    response = await client.put("/v1/spec", json={"yaml": changed_spec(replicas=3)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["applied"] is True
    assert "+    replicas: 3" in body["diff"]
    item = await store.get(SPEC_KEY)
    assert item is not None
    assert body["revision"] == item.mod_revision
    assert (await stored_spec(store)).services["web"].replicas == 3
    again = (await client.put("/v1/spec", json={"yaml": changed_spec(replicas=3)})).json()
    assert again == {"diff": [], "applied": False, "revision": item.mod_revision}


async def test_bad_spec_lists_issues(client: httpx.AsyncClient, store: MemoryStore) -> None:
    before = await store.get(SPEC_KEY)
    bad = SPEC.replace("replicas: 2\n  db:", "replicas: two\n  db:").replace(
        "command: [db]", "comand: [db]"
    )
    error = error_of(await client.put("/v1/spec", json={"yaml": bad}), 422, "invalid")
    assert len(error["issues"]) >= 2
    assert any("services.web.replicas" in issue for issue in error["issues"])
    assert all(issue.startswith("<spec>:") for issue in error["issues"])
    assert await store.get(SPEC_KEY) == before
    renamed = SPEC.replace("cluster: shop", "cluster: other")
    error = error_of(await client.put("/v1/spec", json={"yaml": renamed}), 422, "invalid")
    assert "cluster" in error["issues"][0]
    error_of(await client.put("/v1/spec", json={"yml": SPEC}), 422, "invalid")
    error_of(await client.put("/v1/spec", content=b"not json"), 422, "invalid")


async def test_scale(client: httpx.AsyncClient, store: MemoryStore) -> None:
    response = await client.post("/v1/services/web/scale", json={"replicas": 3})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] is True
    assert (await stored_spec(store)).services["web"].replicas == 3
    error_of(await client.post("/v1/services/nope/scale", json={"replicas": 3}), 404, "not_found")
    error = error_of(
        await client.post("/v1/services/web/scale", json={"replicas": 0}), 422, "invalid"
    )
    assert error["issues"] == ["body.replicas: Input should be greater than or equal to 1"]
    error_of(await client.post("/v1/services/web/scale", json={}), 422, "invalid")
    # Valid as a number, but the cluster's five nodes cannot hold nine replicas.
    error = error_of(
        await client.post("/v1/services/web/scale", json={"replicas": 9}), 422, "invalid"
    )
    assert any("services.web.replicas" in issue for issue in error["issues"])
    assert (await stored_spec(store)).services["web"].replicas == 3


class RacingStore(MemoryStore):
    """Someone rewrites the spec before every compare-and-swap of ours."""

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        if any(c.key == SPEC_KEY for c in compares):
            current = await self.get(SPEC_KEY)
            assert current is not None
            await self.put(SPEC_KEY, current.value)
        return await super().txn(compares, success, failure)


async def test_scale_conflict_when_the_spec_keeps_changing() -> None:
    store = await seed(RacingStore())
    app = create_app(store, cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/services/web/scale", json={"replicas": 3})
        error_of(response, 409, "conflict")
        error_of(await c.put("/v1/spec", json={"yaml": changed_spec(replicas=3)}), 409, "conflict")
    assert (await stored_spec(store)).services["web"].replicas == 2
    await store.close()


async def test_restart(client: httpx.AsyncClient, store: MemoryStore) -> None:
    response = await client.post("/v1/services/web/restart")
    assert response.status_code == 202
    token = await store.get("restarts/web")
    assert token is not None and int(token.value) > 0
    error_of(await client.post("/v1/services/nope/restart"), 404, "not_found")


async def test_move(client: httpx.AsyncClient, store: MemoryStore) -> None:
    response = await client.post("/v1/instances/web-0/move", json={"node": "n4"})
    assert response.status_code == 202, response.text
    assert "n1" in response.json()["message"]
    move = await store.get("moves/web-0")
    assert move is not None and move.value == b"n4"


@pytest.mark.parametrize(
    ("instance", "node", "why"),
    [
        ("web-0", "n1", "already runs on n1"),
        ("web-0", "n2", "already runs web-1"),
        ("web-0", "n3", "drained"),
        ("web-0", "n5", "down"),
        ("db-0", "n4", "constraints"),
    ],
)
async def test_move_to_a_node_that_cannot_take_it(
    client: httpx.AsyncClient, store: MemoryStore, instance: str, node: str, why: str
) -> None:
    response = await client.post(f"/v1/instances/{instance}/move", json={"node": node})
    assert why in error_of(response, 409, "conflict")["message"]
    assert await store.get(f"moves/{instance}") is None


async def test_move_colocation_allowed() -> None:
    spec_text = SPEC.replace(
        "    replicas: 2\n  db:", "    replicas: 2\n    placement: {allow_colocate: true}\n  db:"
    )
    store = await seed(MemoryStore())
    await store.put(SPEC_KEY, spec_text.encode())
    app = create_app(store, cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/instances/web-0/move", json={"node": "n2"})
    assert response.status_code == 202, response.text
    await store.close()


async def test_move_unknown_or_malformed(client: httpx.AsyncClient) -> None:
    error_of(await client.post("/v1/instances/nope-0/move", json={"node": "n4"}), 404, "not_found")
    error_of(await client.post("/v1/instances/web-0/move", json={"node": "n9"}), 404, "not_found")
    error_of(await client.post("/v1/instances/web-0/move", json={}), 422, "invalid")
    error_of(await client.post("/v1/instances/web-0/move", json={"node": 4}), 422, "invalid")


async def test_switchover(client: httpx.AsyncClient, store: MemoryStore) -> None:
    response = await client.post("/v1/services/db/switchover", json={"to": "n2"})
    assert response.status_code == 202, response.text
    item = await store.get("switchover/db")
    assert item is not None
    assert json.loads(item.value) == {"to": "n2", "from": "n1/db-0"}
    assert item.lease != 0  # lapses unless the active acts on it
    for body in ({}, None):
        response = await client.post("/v1/services/db/switchover", json=body)
        assert response.status_code == 202, response.text
        item = await store.get("switchover/db")
        assert item is not None
        assert json.loads(item.value) == {"to": None, "from": "n1/db-0"}


@pytest.mark.parametrize(
    ("service", "body", "status", "why"),
    [
        ("web", {}, 409, "not active-passive"),
        ("db", {"to": "n4"}, 409, "no running standby"),
        ("db", {"to": "n1"}, 409, "already runs on n1"),
        ("db", {"to": "n9"}, 404, "n9"),
        ("nope", {}, 404, "nope"),
    ],
)
async def test_switchover_refused(
    client: httpx.AsyncClient,
    store: MemoryStore,
    service: str,
    body: dict[str, Any],
    status: int,
    why: str,
) -> None:
    response = await client.post(f"/v1/services/{service}/switchover", json=body)
    code = "conflict" if status == 409 else "not_found"
    assert why in error_of(response, status, code)["message"]
    assert await store.get(f"switchover/{service}") is None


async def test_switchover_needs_an_active(client: httpx.AsyncClient, store: MemoryStore) -> None:
    await store.delete("locks/active/db")
    response = await client.post("/v1/services/db/switchover", json={})
    assert "no active" in error_of(response, 409, "conflict")["message"]


async def test_drain_and_undrain(client: httpx.AsyncClient, store: MemoryStore) -> None:
    assert (await client.post("/v1/nodes/n4/drain")).status_code == 202
    assert await store.get(drain_key("n4")) is not None
    assert (await client.get("/v1/nodes/n4")).json()["state"] == "drained"
    assert (await client.post("/v1/nodes/n4/undrain")).status_code == 202
    assert await store.get(drain_key("n4")) is None
    error_of(await client.post("/v1/nodes/n9/drain"), 404, "not_found")
    error_of(await client.post("/v1/nodes/n9/undrain"), 404, "not_found")


# --- key-value --------------------------------------------------------------------


async def test_kv_put_get_list(client: httpx.AsyncClient, store: MemoryStore) -> None:
    put = await client.put("/v1/kv/app/b", json={"value": "two"})
    assert put.status_code == 200, put.text
    revision = put.json()["revision"]
    assert put.json() == {"key": "app/b", "revision": revision}
    await client.put("/v1/kv/app/a", json={"value": "one"})
    await client.put("/v1/kv/other", json={"value": "x"})
    got = (await client.get("/v1/kv/app/b")).json()
    assert got == {"key": "app/b", "value": "two", "revision": revision}
    listed = (await client.get("/v1/kv", params={"prefix": "app/"})).json()
    assert [(i["key"], i["value"]) for i in listed] == [("app/a", "one"), ("app/b", "two")]
    assert len((await client.get("/v1/kv")).json()) == 3
    assert (await store.get("kv/app/a")) is not None  # under the users' own prefix
    error_of(await client.get("/v1/kv/absent"), 404, "not_found")
    error_of(await client.get("/v1/kv/"), 422, "invalid")
    error_of(await client.put("/v1/kv/k", json={"value": 1}), 422, "invalid")


async def test_kv_compare_and_swap(client: httpx.AsyncClient) -> None:
    first = await client.put("/v1/kv/k", params={"cas": 0}, json={"value": "a"})
    assert first.status_code == 200
    rev = first.json()["revision"]
    # 0: only if absent.
    error_of(await client.put("/v1/kv/k", params={"cas": 0}, json={"value": "b"}), 409, "conflict")
    second = await client.put("/v1/kv/k", params={"cas": rev}, json={"value": "b"})
    assert second.status_code == 200
    new_rev = second.json()["revision"]
    assert new_rev > rev
    stale = await client.put("/v1/kv/k", params={"cas": rev}, json={"value": "c"})
    error_of(stale, 409, "conflict")
    assert (await client.get("/v1/kv/k")).json()["value"] == "b"
    error_of(await client.delete("/v1/kv/k", params={"cas": rev}), 409, "conflict")
    deleted = await client.delete("/v1/kv/k", params={"cas": new_rev})
    assert deleted.status_code == 200
    assert deleted.json()["key"] == "k"
    error_of(await client.get("/v1/kv/k"), 404, "not_found")
    error_of(await client.delete("/v1/kv/k"), 404, "not_found")
    error_of(await client.delete("/v1/kv/k", params={"cas": 0}), 404, "not_found")
    await client.put("/v1/kv/k", json={"value": "again"})
    assert (await client.delete("/v1/kv/k")).status_code == 200
    error_of(await client.put("/v1/kv/k", params={"cas": -1}, json={"value": "x"}), 422, "invalid")


# --- store down -------------------------------------------------------------------


class DownStore(MemoryStore):
    """A store without quorum: every request fails."""

    async def get(self, key: str) -> Any:
        raise StoreUnavailable("no store member answers")

    async def list(self, prefix: str) -> Any:
        raise StoreUnavailable("no store member answers")

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        raise StoreUnavailable("no store member answers")

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("no store member answers")


async def test_store_unavailable_is_503() -> None:
    app = create_app(DownStore(), cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        health = await c.get("/v1/health")
        assert health.status_code == 503
        body = health.json()
        assert isinstance(body.pop("time"), float)  # the clock is told even without a store
        assert body == {"node": "n1", "store": "unavailable", "version": "0.1.0"}
        for method, path, body in [
            ("GET", "/v1/status", None),
            ("GET", "/v1/nodes", None),
            ("GET", "/v1/instances/web-0", None),
            ("GET", "/v1/spec", None),
            ("GET", "/v1/events", None),
            ("GET", "/v1/events/stream", None),
            ("PUT", "/v1/spec", {"yaml": SPEC}),
            ("POST", "/v1/services/web/scale", {"replicas": 2}),
            ("POST", "/v1/services/web/restart", None),
            ("POST", "/v1/nodes/n1/drain", None),
            ("PUT", "/v1/kv/k", {"value": "v"}),
            ("GET", "/v1/kv", None),
        ]:
            response = await c.request(method, path, json=body)
            error = error_of(response, 503, "store_unavailable")
            assert "no store member answers" in error["message"], path


# --- the rest ---------------------------------------------------------------------


async def test_metrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.text == "ninefold_up 1\n"
    assert response.headers["content-type"].startswith("text/plain")
    bare = create_app(MemoryStore(), cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare), base_url="http://t") as c:
        empty = await c.get("/metrics")
    assert empty.status_code == 200
    assert empty.content == b""


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/v1/openapi.json")).json()
    assert "/v1/services/{name}/switchover" in schema["paths"]
    assert "/v1/kv/{key}" in schema["paths"]
    assert (await client.get("/v1/docs")).status_code == 200


async def test_unknown_routes_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    error_of(await client.get("/v1/nothing"), 404, "not_found")
    error_of(await client.delete("/v1/status"), 405, "method_not_allowed")


async def test_dashboard_when_present(
    store: MemoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<h1>ninefold</h1>")
    monkeypatch.setattr(app_module, "STATIC_DIR", static)
    app = create_app(store, cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        root = await c.get("/")
        assert root.status_code in (302, 307)
        assert root.headers["location"] == "/ui/"
        assert (await c.get("/ui/")).text == "<h1>ninefold</h1>"
    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path / "absent")
    app = create_app(store, cluster_spec(), "n1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        error_of(await c.get("/"), 404, "not_found")


# --- served by uvicorn ------------------------------------------------------------


async def test_server_serves_and_stops_with_a_stream_open(app: FastAPI, store: MemoryStore) -> None:
    port = free_port()
    server = ApiServer(app, "127.0.0.1", port)
    assert await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(100):
                with contextlib.suppress(httpx.ConnectError):
                    if (await c.get("/v1/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            assert (await c.get("/v1/health")).json()["store"] == "ok"
            async with c.stream("GET", "/v1/events/stream") as stream:
                assert stream.status_code == 200
                await EventJournal(store, "n1").record("restart", "web-0", "asked")
                lines = stream.aiter_lines()
                line = await asyncio.wait_for(anext(lines), 5)
                while not line.startswith("data: "):
                    line = await asyncio.wait_for(anext(lines), 5)
                assert json.loads(line[6:])["subject"] == "web-0"
                # Stopping the server ends the open stream rather than waiting for it.
                await asyncio.wait_for(server.stop(), 3)
    finally:
        await server.stop()


async def test_server_that_cannot_bind_is_reported_not_fatal(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ApiServer(app, "127.0.0.1", port)
        with caplog.at_level(logging.ERROR, logger="ninefold.api"):
            assert await server.start() is False
        assert f"127.0.0.1:{port}" in caplog.text
        await server.stop()  # nothing to stop: no error
