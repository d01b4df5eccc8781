"""Witness nodes (`role: witness`, seed 001's quorum node): the spec's rules
and placement's promise that no instance ever goes to one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninefold.agent.instance import NodeContext, placeholder_values, process_env
from ninefold.decide.placement import Assignment, NodeState, ServiceDemand, schedule
from ninefold.decide.plan import plan
from ninefold.operations import Conflict, request_move
from ninefold.spec import ClusterSpec, SpecError, dump_spec, load_spec, parse_spec, render
from ninefold.state.keys import assign_key, node_key
from ninefold.state.records import AssignmentRecord
from ninefold.state.snapshot import ClusterState
from ninefold.store.memory import MemoryStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HA = """\
cluster: ha
nodes:
  - {name: n1, address: 10.99.0.11, zone: a, store: true}
  - {name: n2, address: 10.99.0.12, zone: b, store: true}
  - {name: w, address: 10.99.0.13, zone: c, role: witness}
"""

DB = """\
services:
  db:
    mode: active-passive
    replicas: 2
    command: [db, '{port}']
    volumes: {data: {replicate: continuous}}
    vip: 10.99.0.20/24
"""


def issues(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "s.yaml")
    return [str(issue) for issue in caught.value.issues]


def only(text: str) -> str:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


# --- the spec -------------------------------------------------------------------------


def test_a_witness_is_a_store_member_without_saying_so() -> None:
    spec = parse_spec(HA + DB)
    w = spec.node("w")
    assert w.witness and w.store
    assert not spec.node("n1").witness and spec.node("n1").role == "worker"
    assert [n.name for n in spec.store_nodes()] == ["n1", "n2", "w"]
    assert parse_spec(dump_spec(spec)) == spec
    explicit = HA.replace("role: witness}", "role: witness, store: true}")
    assert parse_spec(explicit + DB) == spec


def test_a_witness_that_is_no_store_member_is_refused() -> None:
    text = HA.replace("role: witness}", "role: witness, store: false}")
    assert only(text) == (
        "s.yaml:5 nodes[2].store: a witness is a store member: leave store out or set it to true"
    )


def test_an_unknown_role_is_refused() -> None:
    assert "nodes[2].role" in only(HA.replace("role: witness", "role: arbiter"))


def test_a_witness_needs_the_embedded_store() -> None:
    text = HA.replace(
        "cluster: ha\n", "cluster: ha\nstore: {mode: external, endpoints: [e:2379]}\n"
    )
    assert only(text) == (
        "s.yaml:6 nodes[2].role: a witness votes in the embedded store; "
        "with an external store it does nothing"
    )


def test_a_witness_listens_on_no_gateway_mesh_or_volume_port() -> None:
    spec = parse_spec(HA + DB)
    assert spec.replicates_volumes
    assert [kind for kind, _ in spec.listen_ports(spec.node("w"))] == [
        "api",
        "store_client",
        "store_peer",
    ]
    assert "gateway_http" in dict(spec.listen_ports(spec.node("n1")))
    assert "volumes" in dict(spec.listen_ports(spec.node("n1")))
    # So a witness may share its address with a worker, apart from the
    # ports both do listen on.
    shared = HA.replace(
        "address: 10.99.0.13, zone: c, role: witness",
        "address: 10.99.0.12, zone: c, role: witness, "
        "ports: {api: 7071, store_client: 2381, store_peer: 2382}",
    )
    assert parse_spec(shared + DB).node("w").address == "10.99.0.12"


def test_replicas_are_counted_without_witnesses() -> None:
    text = HA + DB.replace("replicas: 2", "replicas: 3")
    assert only(text) == (
        "s.yaml:9 services.db.replicas: 3 replicas need 3 nodes, the cluster has 2 "
        "that run instances (not counting witness w, which runs no instances) "
        "(or set placement.allow_colocate)"
    )


def test_constraints_only_a_witness_matches_are_refused() -> None:
    text = HA.replace("role: witness}", "role: witness, labels: {tier: quorum}}") + (
        "services:\n  db:\n    command: [db]\n    placement: {constraints: {tier: quorum}}\n"
    )
    assert only(text) == (
        "s.yaml:7 services.db.replicas: 1 replica needs 1 node matching {tier: quorum}, "
        "none match (not counting witness w, which runs no instances)"
    )
    colocated = text.replace(
        "placement: {constraints: {tier: quorum}}",
        "placement: {constraints: {tier: quorum}, allow_colocate: true}",
    )
    assert only(colocated).endswith(
        "services.db.placement.constraints: no node matches {tier: quorum} "
        "(not counting witness w, which runs no instances)"
    )


def test_the_gateway_vip_may_not_prefer_a_witness() -> None:
    text = HA + "gateway: {vip: {address: 10.99.0.10/24, prefer: [w, n1]}}\n"
    assert only(text) == (
        "s.yaml:6 gateway.vip.prefer[0]: node 'w' is a witness: "
        "it runs no gateway, so never holds the vip"
    )


def test_a_gateway_vip_needs_a_node_that_is_not_a_witness() -> None:
    text = (
        "cluster: q\nnodes:\n  - {name: w, address: 10.99.0.13, role: witness}\n"
        "gateway: {vip: 10.99.0.10/24}\n"
    )
    assert only(text) == (
        "s.yaml:4 gateway.vip: every node is a witness: no gateway runs to hold the vip"
    )


# --- placement --------------------------------------------------------------------------


def test_no_instance_goes_to_a_witness_even_when_nothing_else_can_take_it() -> None:
    nodes = [NodeState("n1", zone="a"), NodeState("w", zone="c", witness=True)]
    demands = [ServiceDemand("db", replicas=2)]
    result = schedule(demands, nodes, [])
    assert [(a.instance, a.node) for a in result.assignments] == [("db-0", "n1")]
    assert result.unplaced == ("db-1",)
    # One already there (a node that became a witness) is moved off it.
    moved = schedule([ServiceDemand("db", 1)], nodes, [Assignment("db", "db-0", "w")])
    assert [(a.instance, a.node) for a in moved.assignments] == [("db-0", "n1")]


nodes_st = st.lists(
    st.builds(
        NodeState,
        name=st.sampled_from([f"n{i}" for i in range(8)]),
        zone=st.sampled_from("abc"),
        schedulable=st.booleans(),
        witness=st.booleans(),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda n: n.name,
)


@settings(max_examples=200, deadline=None)
@given(
    nodes=nodes_st,
    replicas=st.integers(0, 5),
    colocate=st.booleans(),
    current_on=st.lists(st.sampled_from([f"n{i}" for i in range(8)]), max_size=4),
)
def test_placement_never_picks_a_witness(
    nodes: list[NodeState], replicas: int, colocate: bool, current_on: list[str]
) -> None:
    current = [Assignment("s", f"s-{i}", node) for i, node in enumerate(current_on)]
    demand = ServiceDemand("s", replicas, allow_colocate=colocate)
    result = schedule([demand], nodes, current)
    witnesses = {n.name for n in nodes if n.witness}
    assert not {a.node for a in result.assignments} & witnesses
    takers = [n for n in nodes if n.takes_instances]
    if takers and colocate:
        assert result.unplaced == ()


def test_the_leader_places_the_pair_on_the_workers_and_ignores_a_move_to_the_witness() -> None:
    spec = parse_spec(HA + DB)
    alive = frozenset({"n1", "n2", "w"})
    first = plan(ClusterState(spec, alive, frozenset(), ()))
    placed = {r.instance: r.node for r in first.write}
    assert placed == {"db-0": "n1", "db-1": "n2"}
    # The node of the active dies: its instance has nowhere to go but the
    # witness, and so waits unplaced rather than go there.
    state = ClusterState(spec, frozenset({"n2", "w"}), frozenset(), tuple(first.write))
    after = plan(state)
    assert after.unplaced == ("db-0",)
    assert all(r.node != "w" for r in after.write)
    moved = plan(ClusterState(spec, alive, frozenset(), tuple(first.write), moves={"db-0": "w"}))
    assert moved.empty


async def test_moving_an_instance_to_a_witness_is_refused_in_one_line() -> None:
    spec: ClusterSpec = parse_spec(HA + DB)
    store = MemoryStore()
    record = AssignmentRecord(service="db", instance="db-0", node="n1")
    await store.put(assign_key("n1", "db-0"), record.encode())
    await store.put(node_key("w"), b"{}")
    with pytest.raises(Conflict, match=r"^node w is a witness: it runs no instances$"):
        await request_move(store, spec, "db-0", "w")


# --- examples/ha-block.yaml ---------------------------------------------------------------


def test_the_example_is_a_pair_and_a_witness_in_three_zones(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "ha-block.yaml")
    assert [(n.name, n.zone, n.witness, n.store) for n in spec.nodes] == [
        ("n1", "a", False, True),
        ("n2", "b", False, True),
        ("w", "c", True, True),
    ]
    db = spec.services["db"]
    assert (db.mode, db.replicas, db.vip is not None) == ("active-passive", 2, True)
    assert db.volumes["data"].replicated and db.volumes["data"].backup is not None
    assert spec.alerts.channels
    # Its notes listen on the VIP, which the agent fills in ({vip}, NINEFOLD_VIP).
    ctx = cast(NodeContext, SimpleNamespace(node=spec.node("n1"), data_dir=tmp_path))
    values = placeholder_values(ctx, "db", "db-0", db, {"main": 25000})
    assert db.command is not None
    assert [render(word, values) for word in db.command][-1] == "10.99.0.20:5000"
    assert process_env(values)["NINEFOLD_VIP"] == "10.99.0.20"
