"""`read_view`: the cluster as `ninefold status` shows it, assembled from store records."""

from __future__ import annotations

from ninefold.spec import parse_spec
from ninefold.state.keys import (
    GATEWAY_VIP_LOCK,
    SPEC_KEY,
    active_lock,
    assign_key,
    drain_key,
    node_key,
    status_key,
)
from ninefold.state.records import AssignmentRecord, InstanceStatus, NodeRecord
from ninefold.state.view import ClusterView, read_view
from ninefold.store.memory import MemoryStore

SPEC = """\
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, zone: a, store: true}
  - {name: n2, address: 10.0.0.2, zone: b}
  - {name: n3, address: 10.0.0.3, zone: c}
  - {name: n4, address: 10.0.0.4, zone: d}
services:
  web:
    command: [web]
    replicas: 3
  db:
    command: [db]
    mode: active-passive
    replicas: 2
"""
FALLBACK = "cluster: other\nnodes: [{name: x1, address: 10.9.9.9, store: true}]\n"
ADDRESSES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3", "n4": "10.0.0.4"}


async def populated() -> tuple[MemoryStore, int]:
    """n1 up and leader, n2 down, n3 drained (still alive), n4 up.

    web-0 on n1 running and healthy, web-1 on n2 (dead, no status), web-2 on
    n4 without a status yet (an old status of it is left on n1); db-0 on n1 is
    the active, db-1 on n3 a standby. Returns the store and db's fencing token.
    """
    store = MemoryStore()
    await store.put(SPEC_KEY, SPEC.encode())
    lease = await store.grant_lease(10)
    for name in ("n1", "n3", "n4"):
        record = NodeRecord(
            name=name, address=ADDRESSES[name], zone="z", region="r", api_port=7070, pid=1
        )
        await store.put(node_key(name), record.encode(), lease)
    await store.put(drain_key("n3"), b"")
    assert await store.try_lock("leader", "n1", lease) is not None
    hold = await store.try_lock(active_lock("db"), "n1/db-0", lease)
    assert hold is not None

    for service, instance, node in [
        ("web", "web-0", "n1"),
        ("web", "web-1", "n2"),
        ("web", "web-2", "n4"),
        ("db", "db-0", "n1"),
        ("db", "db-1", "n3"),
    ]:
        record = AssignmentRecord(service=service, instance=instance, node=node)
        await store.put(assign_key(node, instance), record.encode())

    def status(instance: str, node: str, **fields: object) -> InstanceStatus:
        service = instance.split("-")[0]
        return InstanceStatus(
            service=service, instance=instance, node=node, address=ADDRESSES[node], **fields
        )

    statuses = [
        status("web-0", "n1", state="running", health="healthy", ports={"main": 20001}),
        status("web-2", "n1", state="running", health="healthy"),  # left from before a move
        status(
            "db-0",
            "n1",
            state="running",
            health="none",
            role="active",
            fencing_token=hold.fencing_token,
            restarts=2,
        ),
        status("db-1", "n3", state="running", health="none", role="standby"),
    ]
    for s in statuses:
        await store.put(status_key(s.node, s.instance), s.encode(), lease)
    return store, hold.fencing_token


async def view() -> tuple[ClusterView, int]:
    store, token = await populated()
    return await read_view(store, parse_spec(FALLBACK)), token


async def test_the_spec_in_the_store_wins_over_the_fallback() -> None:
    v, _ = await view()
    assert v.cluster == "shop"
    assert [n.name for n in v.nodes] == ["n1", "n2", "n3", "n4"]


async def test_empty_store_shows_the_fallback_spec() -> None:
    v = await read_view(MemoryStore(), parse_spec(SPEC))
    assert v.cluster == "shop" and v.leader is None and v.instances == []
    assert {n.name: n.state for n in v.nodes} == dict.fromkeys(["n1", "n2", "n3", "n4"], "down")
    assert [(s.name, s.desired, s.healthy, s.active) for s in v.services] == [
        ("db", 2, 0, None),
        ("web", 3, 0, None),
    ]


async def test_node_states_and_leader() -> None:
    v, _ = await view()
    assert {n.name: n.state for n in v.nodes} == {
        "n1": "up",
        "n2": "down",
        "n3": "drained",
        "n4": "up",
    }
    assert v.leader == "n1"
    assert [n.name for n in v.nodes if n.leader] == ["n1"]
    assert [n.name for n in v.nodes if n.store_member] == ["n1"]
    assert {n.name: n.address for n in v.nodes}["n2"] == "10.0.0.2"


async def test_services_count_healthy_against_desired_and_show_the_active() -> None:
    v, token = await view()
    services = {s.name: s for s in v.services}
    assert (services["web"].mode, services["web"].desired, services["web"].healthy) == (
        "replicated",
        3,
        1,
    )
    assert services["web"].active is None and services["web"].fencing_token is None
    db = services["db"]
    assert (db.mode, db.desired, db.healthy) == ("active-passive", 2, 2)
    assert (db.active, db.fencing_token) == ("n1/db-0", token)


async def test_instance_rows() -> None:
    v, token = await view()
    rows = {i.instance: i for i in v.instances}
    assert [i.instance for i in v.instances] == ["db-0", "db-1", "web-0", "web-1", "web-2"]
    web0 = rows["web-0"]
    assert (web0.node, web0.state, web0.health, web0.address, web0.ports) == (
        "n1",
        "running",
        "healthy",
        "10.0.0.1",
        {"main": 20001},
    )
    assert (rows["web-1"].node, rows["web-1"].state, rows["web-1"].health) == (
        "n2",
        "lost",
        "unknown",
    )
    # A status of web-2 under another node does not stand in for the assigned one.
    assert (rows["web-2"].node, rows["web-2"].state, rows["web-2"].health) == (
        "n4",
        "pending",
        "unknown",
    )
    db0 = rows["db-0"]
    assert (db0.role, db0.fencing_token, db0.restarts) == ("active", token, 2)
    assert (rows["db-1"].role, rows["db-1"].fencing_token) == ("standby", None)


async def test_to_json_is_plain_data() -> None:
    v, _ = await view()
    data = v.to_json()
    assert data["leader"] == "n1"
    assert {n["name"]: n["state"] for n in data["nodes"]}["n3"] == "drained"
    assert {i["instance"]: i["state"] for i in data["instances"]}["web-1"] == "lost"


async def test_vips_show_their_holders_and_unheld_ones_none() -> None:
    store, _ = await populated()
    with_vips = SPEC.replace("services:", "gateway: {vip: 10.0.0.10/24}\nservices:").replace(
        "    mode: active-passive\n", "    mode: active-passive\n    vip: 10.0.0.20/24\n"
    )
    await store.put(SPEC_KEY, with_vips.encode())
    v = await read_view(store, parse_spec(FALLBACK))
    assert [(x.address, x.service, x.holder) for x in v.vips] == [
        ("10.0.0.10/24", "gateway", None),
        ("10.0.0.20/24", "db", "n1"),
    ]
    lease = await store.grant_lease(10)
    assert await store.try_lock(GATEWAY_VIP_LOCK, "n4", lease) is not None
    v = await read_view(store, parse_spec(FALLBACK))
    assert v.vips[0].holder == "n4"
    assert v.to_json()["vips"][1] == {"address": "10.0.0.20/24", "service": "db", "holder": "n1"}


async def test_a_witness_shows_its_role_and_votes() -> None:
    store = MemoryStore()
    spec = SPEC.replace(
        "{name: n4, address: 10.0.0.4, zone: d}",
        "{name: n4, address: 10.0.0.4, zone: d, role: witness}",
    )
    await store.put(SPEC_KEY, spec.encode())
    v = await read_view(store, parse_spec(FALLBACK))
    roles = {n.name: (n.role, n.store_member) for n in v.nodes}
    assert roles["n4"] == ("witness", True)
    assert roles["n2"] == ("worker", False)
