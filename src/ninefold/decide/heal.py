"""The leader's healing decision for node pools: which dead machine to fence,
which store member to remove, which machine to create in which zone, which
rogue machine to destroy. Pure: agent/healer.py reads the view and does the
actions, one step at a time, and every step is an event.

A pool machine goes creating -> joined -> (dead for `replace_after`, or
quarantined) fenced -> forgotten. Only a fenced machine (the provider confirmed the power-off)
is removed from the store and the spec, and only then is it replaced: a
machine that is merely unreachable may still run its processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ninefold.spec.pools import PoolSpec, machine_name, machine_number

Phase = Literal["creating", "joined", "fenced"]


@dataclass(frozen=True)
class PoolMachine:
    """A machine a pool created, as the store tracks it."""

    pool: str
    node: str
    machine_id: str
    zone: str
    created_at: float
    phase: Phase
    store_member: bool = False


@dataclass(frozen=True)
class Listed:
    """A machine the provider lists with the cluster's tags."""

    pool: str
    machine_id: str
    node: str
    """Its node tag ("" when it has none)."""


@dataclass(frozen=True)
class HealView:
    now: float
    pools: Mapping[str, PoolSpec]
    machines: tuple[PoolMachine, ...]
    alive: frozenset[str]
    """Nodes whose agent holds a live lease."""
    dead_since: Mapping[str, float]
    """Node -> when the leader first saw it without a lease."""
    zone_nodes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Zone -> every node of the spec in it (pool and hand-written)."""
    voting: frozenset[str] = frozenset()
    """Nodes that are voting members of the embedded store."""
    store_voters: int = 0
    """How many voting members the store has (some may be nameless)."""
    created: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Pool -> when each of its recent machines was created (the budget)."""
    listed: Mapping[str, tuple[Listed, ...]] = field(default_factory=dict)
    """Pool -> what its provider listed last (absent: not listed yet)."""
    unknown_since: Mapping[str, float] = field(default_factory=dict)
    """Machine id -> when it was first listed without the store knowing it."""
    quarantined: frozenset[str] = frozenset()
    """Nodes an operator quarantined (`ninefold node quarantine`)."""


@dataclass(frozen=True)
class Fence:
    pool: str
    node: str
    machine_id: str
    why: str


@dataclass(frozen=True)
class RemoveMember:
    pool: str
    """"" for a quarantined node in no pool."""
    node: str


@dataclass(frozen=True)
class Forget:
    """Remove a fenced machine from the spec and the tracking, and destroy it."""

    pool: str
    node: str
    machine_id: str


@dataclass(frozen=True)
class Create:
    pool: str
    node: str
    zone: str
    store_member: bool
    why: str


@dataclass(frozen=True)
class DestroyRogue:
    pool: str
    machine_id: str
    node: str


@dataclass(frozen=True)
class Hold:
    """Something that should happen cannot now; said once by the doer."""

    pool: str
    reason: str


Action = Fence | RemoveMember | Forget | Create | DestroyRogue | Hold


def quorum(members: int) -> int:
    return members // 2 + 1


def removal_keeps_quorum(view: HealView, node: str) -> bool:
    """Whether the store still has a quorum of living voters once `node`
    (dead) stops being a voting member."""
    after = view.store_voters - 1
    living = len((view.voting - {node}) & view.alive)
    return after >= 1 and living >= quorum(after)


def zones_down(view: HealView) -> set[str]:
    """Zones that have nodes and none of them alive."""
    return {zone for zone, nodes in view.zone_nodes.items() if nodes and not nodes & view.alive}


def least_used_zone(view: HealView, pool: str, spec: PoolSpec) -> str | None:
    """The pool's zone with the fewest of its live machines, never a zone that
    is down; the order of `zones` breaks ties. None when every zone is down."""
    down = zones_down(view)
    live = [
        m for m in view.machines if m.pool == pool and m.phase != "fenced" and m.node in view.alive
    ]
    creating = [m for m in view.machines if m.pool == pool and m.phase == "creating"]
    usable = [z for z in spec.zones if z not in down]
    if not usable:
        return None
    counts = {z: sum(1 for m in [*live, *creating] if m.zone == z) for z in usable}
    return min(usable, key=lambda z: (counts[z], spec.zones.index(z)))


def next_name(pool: str, machines: Iterable[PoolMachine], taken: Iterable[str]) -> str:
    """A node name the pool has never used: one above the highest number seen."""
    numbers = [machine_number(pool, m.node) for m in machines]
    numbers += [machine_number(pool, name) for name in taken]
    return machine_name(pool, max((n for n in numbers if n is not None), default=0) + 1)


def heal(view: HealView, taken_names: Iterable[str] = ()) -> list[Action]:
    """What to do now, per pool: fence the dead, remove fenced store members
    while quorum allows, forget the fenced, create what is missing within the
    budget, destroy rogue machines after their grace. `taken_names`: node
    names in the spec (a new machine never reuses one)."""
    taken = [*taken_names, *view.quarantined]  # a quarantined name never comes back
    actions: list[Action] = []
    for pool, spec in sorted(view.pools.items()):
        actions += _pool_actions(view, pool, spec, taken)
    return actions + _quarantined_outside_pools(view)


def _quarantined_outside_pools(view: HealView) -> list[Action]:
    """A quarantined node in no pool: no provider can fence it, but its store
    member goes (while the quorum allows), so its etcd member can neither
    vote nor serve."""
    in_pools = {m.node for m in view.machines}
    out: list[Action] = []
    for node in sorted(view.quarantined - in_pools):
        if node not in view.voting:
            continue
        if removal_keeps_quorum(view, node):
            out.append(RemoveMember("", node))
        else:
            out.append(Hold("", f"quarantined store member {node} kept: removing it "
                                "would lose the store's quorum"))  # fmt: skip
    return out


def _pool_actions(view: HealView, pool: str, spec: PoolSpec, taken: list[str]) -> list[Action]:
    out: list[Action] = []
    mine = [m for m in view.machines if m.pool == pool]
    for m in mine:
        if m.node in view.quarantined and m.phase != "fenced":
            out.append(Fence(pool, m.node, m.machine_id, "quarantined"))
        elif m.phase == "joined" and m.node not in view.alive:
            since = view.dead_since.get(m.node)
            if since is not None and view.now - since >= spec.replace_after:
                why = f"dead for {view.now - since:.0f}s (replace_after {spec.replace_after:g}s)"
                out.append(Fence(pool, m.node, m.machine_id, why))
        elif m.phase == "creating" and m.node not in view.alive:
            if view.now - m.created_at >= spec.boot_timeout:
                why = f"not joined {view.now - m.created_at:.0f}s after it was created"
                out.append(Fence(pool, m.node, m.machine_id, why))
        elif m.phase == "fenced":
            if m.node in view.voting:
                if removal_keeps_quorum(view, m.node):
                    out.append(RemoveMember(pool, m.node))
                else:
                    out.append(Hold(pool, f"store member {m.node} kept: removing it would "
                                          "lose the store's quorum"))  # fmt: skip
                continue
            out.append(Forget(pool, m.node, m.machine_id))
    out += _creations(view, pool, spec, mine, taken)
    out += _rogues(view, pool, spec, mine)
    return out


def _creations(
    view: HealView, pool: str, spec: PoolSpec, mine: list[PoolMachine], taken: list[str]
) -> list[Action]:
    working = [m for m in mine if m.phase != "fenced"]
    missing = spec.count - len(working)
    if missing <= 0:
        return []
    recent = [t for t in view.created.get(pool, ()) if view.now - t < spec.budget.window]
    if len(recent) >= spec.budget.replacements:
        return [Hold(pool, (
            f"{missing} machine(s) missing, but {len(recent)} were created in the last "
            f"{spec.budget.window:g}s (budget {spec.budget.replacements}): waiting"
        ))]  # fmt: skip
    zone = least_used_zone(view, pool, spec)
    if zone is None:
        return [Hold(pool, f"{missing} machine(s) missing, but every zone of the pool is down")]
    members = sum(1 for m in working if m.store_member)
    name = next_name(pool, mine, taken)
    why = "replacing a fenced machine" if len(mine) > len(working) else "the pool is short"
    return [Create(pool, name, zone, members < spec.store_members, why)]


def _rogues(view: HealView, pool: str, spec: PoolSpec, mine: list[PoolMachine]) -> list[Action]:
    known = {m.machine_id for m in mine}
    out: list[Action] = []
    for machine in view.listed.get(pool, ()):
        if machine.machine_id in known:
            continue
        first = view.unknown_since.get(machine.machine_id)
        if first is not None and view.now - first >= spec.rogue_grace:
            out.append(DestroyRogue(pool, machine.machine_id, machine.node))
    return out


def unknown_machines(view: HealView) -> set[str]:
    """Ids the providers list that the store does not know (the doer keeps
    when each was first seen, for the grace period)."""
    known = {m.machine_id for m in view.machines}
    return {
        listed.machine_id
        for machines in view.listed.values()
        for listed in machines
        if listed.machine_id not in known
    }
