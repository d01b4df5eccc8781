"""The leader's healing decision (decide/heal.py): a dead pool machine is
fenced, then forgotten and replaced, once; dead zones are never used; the
budget holds; a store member is removed only while quorum holds; a rogue
machine is destroyed only after its grace period."""

from __future__ import annotations

from dataclasses import replace

from ninefold.decide.heal import (
    Create,
    DestroyRogue,
    Fence,
    Forget,
    HealView,
    Hold,
    Listed,
    PoolMachine,
    RemoveMember,
    heal,
    least_used_zone,
    removal_keeps_quorum,
    unknown_machines,
)
from ninefold.spec.pools import PoolSpec

POOL = PoolSpec(provider="lab", count=2, zones=["a", "b"], replace_after=10.0)


def machine(node: str, zone: str, phase: str = "joined", member: bool = False) -> PoolMachine:
    return PoolMachine("web", node, f"id-{node}", zone, 0.0, phase, member)  # type: ignore[arg-type]


def view(**changes: object) -> HealView:
    base = HealView(
        now=100.0,
        pools={"web": POOL},
        machines=(machine("web-1", "a"), machine("web-2", "b")),
        alive=frozenset({"n1", "web-1", "web-2"}),
        dead_since={},
        zone_nodes={"a": frozenset({"n1", "web-1"}), "b": frozenset({"web-2"})},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_healthy_pool_needs_nothing() -> None:
    assert heal(view()) == []


def test_a_dead_machine_is_fenced_only_after_replace_after() -> None:
    dead = view(alive=frozenset({"n1", "web-1"}), dead_since={"web-2": 95.0})
    assert heal(dead) == []  # dead for 5 s of 10
    later = replace(dead, now=106.0)
    assert heal(later) == [Fence("web", "web-2", "id-web-2", "dead for 11s (replace_after 10s)")]


def test_a_fenced_machine_is_forgotten_and_replaced_once() -> None:
    fenced = view(
        machines=(machine("web-1", "a"), machine("web-2", "b", "fenced")),
        alive=frozenset({"n1", "web-1"}),
        dead_since={"web-2": 80.0},
        zone_nodes={"a": frozenset({"n1", "web-1"}), "b": frozenset({"web-2", "n2"})},
    )
    fenced = replace(fenced, alive=fenced.alive | {"n2"})
    actions = heal(fenced, taken_names=["n1", "web-1", "web-2"])
    assert actions == [
        Forget("web", "web-2", "id-web-2"),
        Create("web", "web-3", "b", False, "replacing a fenced machine"),
    ]
    # once the replacement is being created, nothing more is created
    creating = replace(
        fenced, now=101.0,
        machines=(machine("web-1", "a"), machine("web-3", "b", "creating")),
        created={"web": (100.0,)},
    )  # fmt: skip
    assert heal(creating, taken_names=["n1", "web-1"]) == []


def test_a_dead_zone_is_never_used() -> None:
    fenced = view(
        machines=(machine("web-1", "a"), machine("web-2", "b", "fenced")),
        alive=frozenset({"n1", "web-1"}),
    )
    [forget, create] = heal(fenced)
    assert isinstance(forget, Forget)
    assert isinstance(create, Create) and create.zone == "a"  # b is down: web-2 was its only node
    everything_down = replace(fenced, alive=frozenset())
    assert least_used_zone(everything_down, "web", POOL) is None
    holds = [a for a in heal(everything_down) if isinstance(a, Hold)]
    assert holds and "every zone of the pool is down" in holds[0].reason


def test_the_budget_holds() -> None:
    fenced = view(
        machines=(machine("web-1", "a"), machine("web-2", "b", "fenced")),
        created={"web": (20.0, 50.0, 90.0)},
    )
    actions = heal(fenced)
    assert not [a for a in actions if isinstance(a, Create)]
    assert any(isinstance(a, Hold) and "budget 3" in a.reason for a in actions)
    # outside the window (600 s) the old creations no longer count
    assert [a for a in heal(replace(fenced, now=700.0)) if isinstance(a, Create)]


def test_a_store_member_is_removed_only_while_quorum_holds() -> None:
    members = (machine("web-1", "a", member=True), machine("web-2", "b", "fenced", member=True))
    three = view(
        pools={"web": POOL.model_copy(update={"store_members": 2})},
        machines=members,
        voting=frozenset({"n1", "web-1", "web-2"}),
        store_voters=3,
    )
    assert removal_keeps_quorum(three, "web-2")  # 2 voters left, both alive
    actions = heal(three)
    assert actions[0] == RemoveMember("web", "web-2")
    # the replacement of a fenced member is a store member again
    created = [a for a in actions if isinstance(a, Create)]
    assert created and created[0].store_member
    # with n1 dead too, removing web-2 would leave 1 of 2 alive: no quorum
    lost = replace(three, alive=frozenset({"web-1"}))
    assert not removal_keeps_quorum(lost, "web-2")
    assert not [a for a in heal(lost) if isinstance(a, RemoveMember)]
    assert any(isinstance(a, Hold) and "quorum" in a.reason for a in heal(lost))


def test_a_machine_never_joined_is_fenced_after_the_boot_timeout() -> None:
    booting = view(machines=(machine("web-1", "a"), replace(machine("web-2", "b", "creating"),
                   created_at=10.0)), alive=frozenset({"n1", "web-1"}))  # fmt: skip
    assert heal(replace(booting, now=100.0)) == []
    [fence] = heal(replace(booting, now=131.0))
    assert isinstance(fence, Fence) and "not joined" in fence.why


def test_a_rogue_machine_is_destroyed_only_after_the_grace_period() -> None:
    listed = {"web": (Listed("web", "id-web-1", "web-1"), Listed("web", "i-rogue", "web-2"))}
    seen = view(listed=listed, unknown_since={"i-rogue": 90.0})
    assert unknown_machines(seen) == {"i-rogue"}
    assert heal(seen) == []  # seen 10 s ago, grace 60 s
    assert heal(replace(seen, now=151.0)) == [DestroyRogue("web", "i-rogue", "web-2")]
    # the machine the store knows is kept, whatever its tags
    assert all(
        a.machine_id != "id-web-1" for a in heal(replace(seen, now=999.0))
        if isinstance(a, DestroyRogue)
    )  # fmt: skip


def test_a_short_pool_creates_in_the_least_used_zone_one_step_at_a_time() -> None:
    empty = view(machines=(), alive=frozenset({"n1"}), zone_nodes={"a": frozenset({"n1"})})
    [first] = heal(empty, taken_names=["n1"])
    assert first == Create("web", "web-1", "a", False, "the pool is short")
    one = replace(empty, machines=(machine("web-1", "a", "creating"),), created={"web": (100.0,)})
    [second] = heal(one, taken_names=["n1"])
    assert isinstance(second, Create) and (second.node, second.zone) == ("web-2", "b")


def test_a_quarantined_machine_is_fenced_at_once_though_alive() -> None:
    quarantined = view(quarantined=frozenset({"web-1"}))
    assert heal(quarantined) == [Fence("web", "web-1", "id-web-1", "quarantined")]
    # fenced: forgotten and replaced like any fenced machine, in the least-used zone
    fenced = replace(quarantined, machines=(machine("web-1", "a", "fenced"), machine("web-2", "b")))
    actions = heal(fenced, ["n1", "web-1", "web-2"])
    assert Forget("web", "web-1", "id-web-1") in actions
    assert [a for a in actions if isinstance(a, Create)] == [
        Create("web", "web-3", "a", False, "replacing a fenced machine")
    ]


def test_a_quarantined_node_in_no_pool_loses_its_store_member_while_quorum_allows() -> None:
    members = view(
        pools={},
        machines=(),
        alive=frozenset({"n1", "n2", "n3"}),
        voting=frozenset({"n1", "n2", "n3"}),
        store_voters=3,
        quarantined=frozenset({"n3"}),
    )
    assert heal(members) == [RemoveMember("", "n3")]
    one_down = replace(members, alive=frozenset({"n1", "n3"}))
    actions = heal(one_down)
    assert len(actions) == 1 and isinstance(actions[0], Hold)
    assert "quorum" in actions[0].reason
    removed = replace(members, voting=frozenset({"n1", "n2"}), store_voters=2)
    assert heal(removed) == []


def test_a_quarantined_name_is_never_given_again() -> None:
    """web-2 quarantined, fenced and forgotten (no longer in the spec or the
    records): its replacement is web-3, never web-2 again (its join would be
    refused, and it would be fenced and made again, for good)."""
    forgotten = view(machines=(machine("web-1", "a"),), quarantined=frozenset({"web-2"}))
    creates = [a for a in heal(forgotten, ["n1", "web-1"]) if isinstance(a, Create)]
    assert [c.node for c in creates] == ["web-3"]
