"""Placement: worked examples, then properties over generated clusters."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninefold.decide.placement import (
    Assignment,
    NodeState,
    Plan,
    ServiceDemand,
    instance_name,
    schedule,
)

FAST = settings(max_examples=150, derandomize=True, deadline=None)


def where(plan: Plan) -> dict[str, str]:
    return {a.instance: a.node for a in plan.assignments}


def zones(n: int) -> list[NodeState]:
    return [NodeState(f"n{i}", zone=f"z{i}") for i in range(n)]


# --- examples -----------------------------------------------------------------


def test_instance_name() -> None:
    assert instance_name("web", 3) == "web-3"


def test_two_replicas_over_three_zones_use_two_zones() -> None:
    nodes = [
        NodeState("a1", zone="a"),
        NodeState("a2", zone="a"),
        NodeState("b1", zone="b"),
        NodeState("c1", zone="c"),
    ]
    plan = schedule([ServiceDemand("web", 2)], nodes, [])
    zone_of = {n.name: n.zone for n in nodes}
    assert len({zone_of[n] for n in where(plan).values()}) == 2
    assert plan.unplaced == ()
    assert [a.instance for a in plan.assignments] == ["web-0", "web-1"]


def test_constraints_are_honoured() -> None:
    nodes = [
        NodeState("n0", labels={"disk": "hdd"}),
        NodeState("n1", labels={"disk": "ssd"}),
        NodeState("n2"),
    ]
    plan = schedule([ServiceDemand("db", 2, constraints={"disk": "ssd"})], nodes, [])
    assert where(plan) == {"db-0": "n1"}
    assert plan.unplaced == ("db-1",)


def test_drained_node_instances_move_others_stay() -> None:
    nodes = zones(4)
    service = ServiceDemand("web", 3)
    first = schedule([service], nodes, [])
    drained = where(first)["web-1"]
    nodes = [dataclasses.replace(n, schedulable=n.name != drained) for n in nodes]
    second = schedule([service], nodes, first.assignments)
    assert where(second)["web-0"] == where(first)["web-0"]
    assert where(second)["web-2"] == where(first)["web-2"]
    assert where(second)["web-1"] not in (drained, where(first)["web-0"], where(first)["web-2"])
    to_write, to_remove = second.changes(first.assignments)
    assert [a.instance for a in to_write] == ["web-1"]
    assert [(a.instance, a.node) for a in to_remove] == [("web-1", drained)]


def test_scale_down_drops_highest_ordinals() -> None:
    nodes = zones(4)
    first = schedule([ServiceDemand("web", 4)], nodes, [])
    second = schedule([ServiceDemand("web", 2)], nodes, first.assignments)
    assert where(second) == {i: n for i, n in where(first).items() if i in ("web-0", "web-1")}
    _, to_remove = second.changes(first.assignments)
    assert [a.instance for a in to_remove] == ["web-2", "web-3"]


def test_removed_service_disappears() -> None:
    nodes = zones(3)
    first = schedule([ServiceDemand("api", 1), ServiceDemand("web", 2)], nodes, [])
    second = schedule([ServiceDemand("web", 2)], nodes, first.assignments)
    assert {a.service for a in second.assignments} == {"web"}
    _, to_remove = second.changes(first.assignments)
    assert [a.instance for a in to_remove] == ["api-0"]


def test_avoid_is_respected_and_carried() -> None:
    nodes = zones(3)
    current = [Assignment("web", "web-0", "n0", frozenset({"n0", "n1"}))]
    plan = schedule([ServiceDemand("web", 1)], nodes, current)
    assert plan.assignments == (Assignment("web", "web-0", "n2", frozenset({"n0", "n1"})),)


def test_avoid_is_cleared_when_nothing_else_fits() -> None:
    nodes = zones(2)
    current = [Assignment("web", "web-0", "n0", frozenset({"n0", "n1"}))]
    plan = schedule([ServiceDemand("web", 1)], nodes, current)
    assert len(plan.assignments) == 1
    assert plan.assignments[0].avoid == frozenset()
    to_write, to_remove = plan.changes(current)
    assert to_write == list(plan.assignments)
    # Same node: the write replaces the stored entry, nothing to remove.
    assert to_remove == ([] if plan.assignments[0].node == "n0" else current)


def test_unplaced_when_too_few_nodes() -> None:
    plan = schedule([ServiceDemand("web", 5)], zones(3), [])
    assert len(plan.assignments) == 3
    assert plan.unplaced == ("web-3", "web-4")


def test_allow_colocate_packs_preferring_emptier_nodes() -> None:
    plan = schedule([ServiceDemand("web", 5, allow_colocate=True)], zones(2), [])
    assert plan.unplaced == ()
    assert sorted(Counter(where(plan).values()).values()) == [2, 3]


def test_prefers_least_loaded_node_then_name() -> None:
    nodes = [NodeState("n0"), NodeState("n1"), NodeState("n2")]
    plan = schedule([ServiceDemand("api", 1), ServiceDemand("web", 2)], nodes, [])
    assert where(plan) == {"api-0": "n0", "web-0": "n1", "web-1": "n2"}


def test_assignments_sorted_by_ordinal_not_text() -> None:
    plan = schedule([ServiceDemand("web", 12, allow_colocate=True)], zones(3), [])
    assert [a.instance for a in plan.assignments] == [f"web-{i}" for i in range(12)]


def test_keeping_never_colocates() -> None:
    current = [Assignment("web", "web-0", "n0"), Assignment("web", "web-1", "n0")]
    plan = schedule([ServiceDemand("web", 2)], zones(2), current)
    assert where(plan) == {"web-0": "n0", "web-1": "n1"}


def test_no_move_for_balance() -> None:
    nodes = [NodeState("a1", zone="a"), NodeState("a2", zone="a"), NodeState("b1", zone="b")]
    current = [Assignment("web", "web-0", "a1"), Assignment("web", "web-1", "a2")]
    plan = schedule([ServiceDemand("web", 2)], nodes, current)
    assert plan.assignments == tuple(current)


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValueError):
        schedule([ServiceDemand("a", 1), ServiceDemand("a", 2)], zones(1), [])
    with pytest.raises(ValueError):
        schedule([ServiceDemand("a", 1)], [NodeState("n"), NodeState("n")], [])
    with pytest.raises(ValueError):
        ServiceDemand("a", -1)


# --- generated clusters -------------------------------------------------------

LABELS = {"disk": ["ssd", "hdd"], "arch": ["x86", "arm"]}
NODE_NAMES = [f"n{i}" for i in range(7)]
SERVICE_NAMES = ["api", "db", "web", "web-1"]


@st.composite
def node_sets(draw: st.DrawFn) -> list[NodeState]:
    count = draw(st.integers(1, 7))
    nodes = []
    for name in NODE_NAMES[:count]:
        labels = {
            key: draw(st.sampled_from(values))
            for key, values in LABELS.items()
            if draw(st.booleans())
        }
        nodes.append(
            NodeState(
                name,
                zone=draw(st.sampled_from(["a", "b", "c"])),
                region=draw(st.sampled_from(["r1", "r2"])),
                labels=labels,
                schedulable=draw(st.sampled_from([True, True, True, False])),
            )
        )
    return nodes


@st.composite
def demands(draw: st.DrawFn, nodes: Sequence[NodeState]) -> list[ServiceDemand]:
    names = draw(st.lists(st.sampled_from(SERVICE_NAMES), min_size=1, max_size=4, unique=True))
    services = []
    for name in names:
        source = draw(st.sampled_from(nodes)).labels
        constraints = {k: v for k, v in source.items() if draw(st.booleans())}
        services.append(
            ServiceDemand(
                name,
                replicas=draw(st.integers(1, 5)),
                spread=draw(st.sampled_from(["zone", "region", "none"])),
                constraints=constraints,
                allow_colocate=draw(st.booleans()),
            )
        )
    return services


@st.composite
def currents(draw: st.DrawFn, with_avoid: bool = True) -> list[Assignment]:
    """Random, possibly stale or contradictory, stored assignments."""
    out = []
    for _ in range(draw(st.integers(0, 10))):
        service = draw(st.sampled_from([*SERVICE_NAMES, "gone"]))
        avoid = draw(st.frozensets(st.sampled_from(NODE_NAMES))) if with_avoid else frozenset()
        out.append(
            Assignment(
                service,
                instance_name(service, draw(st.integers(0, 6))),
                draw(st.sampled_from([*NODE_NAMES, "ghost"])),
                avoid,
            )
        )
    return out


@st.composite
def scenarios(
    draw: st.DrawFn, with_avoid: bool = True
) -> tuple[list[ServiceDemand], list[NodeState], list[Assignment]]:
    nodes = draw(node_sets())
    return draw(demands(nodes)), nodes, draw(currents(with_avoid))


def eligible(service: ServiceDemand, nodes: Sequence[NodeState]) -> list[NodeState]:
    return [n for n in nodes if n.schedulable and n.satisfies(service.constraints)]


@FAST
@given(scenarios())
def test_placements_are_valid(
    scenario: tuple[list[ServiceDemand], list[NodeState], list[Assignment]],
) -> None:
    """Every instance is placed xor unplaced; placements obey every hard rule.

    The avoid set is the current one (kept or moved), or empty only when it was
    cleared, i.e. the instance landed on a node it had to avoid. Unplaced means
    no node could take it.
    """
    services, nodes, current = scenario
    plan = schedule(services, nodes, current)
    by_node = {n.name: n for n in nodes}
    by_service = {s.name: s for s in services}

    wanted = {i for s in services for i in s.instances()}
    placed = [a.instance for a in plan.assignments]
    assert len(placed) == len(set(placed))
    assert set(placed) | set(plan.unplaced) == wanted
    assert not set(placed) & set(plan.unplaced)
    assert list(plan.unplaced) == sorted(plan.unplaced)

    per_node = Counter((a.service, a.node) for a in plan.assignments)
    for a in plan.assignments:
        service = by_service[a.service]
        node = by_node[a.node]
        assert node.schedulable
        assert node.satisfies(service.constraints)
        assert a.node not in a.avoid
        if not service.allow_colocate:
            assert per_node[(a.service, a.node)] == 1
        if a not in current:
            before = frozenset().union(
                *(c.avoid for c in current if (c.service, c.instance) == (a.service, a.instance))
            )
            assert a.avoid == before or (a.avoid == frozenset() and a.node in before)

    for instance in plan.unplaced:
        service = next(s for s in services if instance in s.instances())
        if service.allow_colocate:
            assert eligible(service, nodes) == []
        else:
            assert all(per_node[(service.name, n.name)] for n in eligible(service, nodes))


@FAST
@given(scenarios(), st.randoms(use_true_random=False))
def test_deterministic_in_any_order(
    scenario: tuple[list[ServiceDemand], list[NodeState], list[Assignment]],
    rnd: random.Random,
) -> None:
    services, nodes, current = scenario
    plan = schedule(services, nodes, current)
    for items in (services, nodes, current):
        rnd.shuffle(items)
    assert schedule(services, nodes, current) == plan


@FAST
@given(scenarios())
def test_spread_from_scratch(
    scenario: tuple[list[ServiceDemand], list[NodeState], list[Assignment]],
) -> None:
    """Placing from nothing, domain counts are balanced up to full domains.

    For each service spread over zones (or regions), take the domains holding
    at least one eligible node (schedulable, constraints met). For any two such
    domains A and B, count(A) <= count(B) + 1, unless B is full: every eligible
    node of B already hosts an instance of the service (never the case with
    allow_colocate, so there all counts differ by at most 1).
    """
    services, nodes, _ = scenario
    plan = schedule(services, nodes, [])
    for service in services:
        if service.spread == "none":
            continue

        def domain(node: NodeState, spread: str = service.spread) -> tuple[str, ...]:
            return (node.region, node.zone) if spread == "zone" else (node.region,)

        used = {a.node for a in plan.assignments if a.service == service.name}
        counts: Counter[tuple[str, ...]] = Counter()
        full: dict[tuple[str, ...], bool] = {}
        for node in eligible(service, nodes):
            full[domain(node)] = full.get(domain(node), True) and node.name in used
            counts[domain(node)] += 0
        for a in plan.assignments:
            if a.service == service.name:
                node = next(n for n in nodes if n.name == a.node)
                counts[domain(node)] += 1
        for a_dom in counts:
            for b_dom in counts:
                if service.allow_colocate or not full[b_dom]:
                    assert counts[a_dom] <= counts[b_dom] + 1, (service, counts)


@FAST
@given(scenarios())
def test_stable_once_placed(
    scenario: tuple[list[ServiceDemand], list[NodeState], list[Assignment]],
) -> None:
    services, nodes, current = scenario
    plan = schedule(services, nodes, current)
    again = schedule(services, nodes, plan.assignments)
    assert again == plan
    assert again.changes(plan.assignments) == ([], [])


@FAST
@given(scenarios(), st.data())
def test_losing_a_node_moves_only_its_instances(
    scenario: tuple[list[ServiceDemand], list[NodeState], list[Assignment]], data: st.DataObject
) -> None:
    services, nodes, current = scenario
    plan = schedule(services, nodes, current)
    lost = data.draw(st.sampled_from(nodes)).name
    nodes = [dataclasses.replace(n, schedulable=False) if n.name == lost else n for n in nodes]
    after = schedule(services, nodes, plan.assignments)
    for a in plan.assignments:
        if a.node != lost:
            assert a in after.assignments
    assert all(a.node != lost for a in after.assignments)


@FAST
@given(scenarios(with_avoid=False))
def test_placed_is_min_of_demand_and_capacity(
    scenario: tuple[list[ServiceDemand], list[NodeState], list[Assignment]],
) -> None:
    """Without avoid sets, a one-per-node service gets min(replicas, eligible nodes).

    A colocating service gets all its replicas as soon as one node is eligible.
    """
    services, nodes, current = scenario
    plan = schedule(services, nodes, current)
    placed = Counter(a.service for a in plan.assignments)
    for service in services:
        room = len(eligible(service, nodes))
        capacity = (service.replicas if room else 0) if service.allow_colocate else room
        assert placed[service.name] == min(service.replicas, capacity)
