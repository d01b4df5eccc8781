"""Placement of service instances on nodes, as a pure function.

The leader calls :func:`schedule` with the desired services, the nodes it knows
and the assignments currently in the store, then writes the difference given by
:meth:`Plan.changes`. Nothing here does I/O or knows the spec models: the agent
converts its spec into these small types, so placement can be tested on its own
(Nomad's split between deciding and doing).

Priorities, highest first:

1. Correctness: a placed instance runs on a schedulable node, never a witness,
   that satisfies its service's constraints, not on a node it must avoid, and never shares a node
   with another instance of its service unless the service allows it.
2. Stability: an instance that is still correctly placed stays where it is, even
   when moving it would improve spread. A move costs a restart and a failover;
   imbalance costs little.
3. Spread: a new instance goes to the spread domain (zone or region) holding the
   fewest instances of its service, then to the least loaded node.
4. Determinism: the same inputs, in any order, give the same plan, so a newly
   elected leader computes what the old one would have and nothing flaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "Assignment",
    "NodeState",
    "Plan",
    "ServiceDemand",
    "Spread",
    "instance_name",
    "schedule",
]

Spread = Literal["zone", "region", "none"]
_SPREADS: frozenset[str] = frozenset({"zone", "region", "none"})


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so a frozen dataclass cannot change under the caller."""
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node as placement sees it.

    ``schedulable`` is false when the node is dead (its lease expired) or
    drained; its instances are then moved elsewhere. A ``witness`` only votes
    in the store (seed 001's quorum node): no instance is ever placed on it,
    alive or not. Labels are kept as a read-only mapping and left out of the
    hash (equality still compares them).
    """

    name: str
    zone: str = "default"
    region: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    schedulable: bool = True
    witness: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))

    @property
    def takes_instances(self) -> bool:
        """Whether an instance may run here now: schedulable and not a witness."""
        return self.schedulable and not self.witness

    def satisfies(self, constraints: Mapping[str, str]) -> bool:
        """True when every required label is present with the required value."""
        return all(self.labels.get(key) == value for key, value in constraints.items())


@dataclass(frozen=True, slots=True)
class ServiceDemand:
    """What one service asks of placement.

    ``spread`` names the failure domain to spread instances over. A zone is
    identified by its region and its name, so zone ``a`` of two regions are two
    zones. ``allow_colocate`` lets several instances share a node (useful when
    replicas exceed nodes, at the cost of losing them together).
    """

    name: str
    replicas: int
    spread: Spread = "zone"
    constraints: Mapping[str, str] = field(default_factory=dict, hash=False)
    allow_colocate: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"service {self.name!r}: replicas must be >= 0, got {self.replicas}")
        if self.spread not in _SPREADS:
            raise ValueError(f"service {self.name!r}: unknown spread {self.spread!r}")
        object.__setattr__(self, "constraints", _frozen(self.constraints))

    def instances(self) -> list[str]:
        """Instance names in ordinal order."""
        return [instance_name(self.name, ordinal) for ordinal in range(self.replicas)]


@dataclass(frozen=True, slots=True)
class Assignment:
    """One instance placed on one node (stored as ``assign/<node>/<instance>``).

    ``avoid`` holds nodes the instance must not go to, because it failed too
    often there; the agent adds to it, placement carries it along when moving
    the instance.
    """

    service: str
    instance: str
    node: str
    avoid: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.avoid, frozenset):
            object.__setattr__(self, "avoid", frozenset(self.avoid))


def instance_name(service: str, ordinal: int) -> str:
    """The name of a service's instance: ``web-0``, ``web-1``, ..."""
    return f"{service}-{ordinal}"


def _sort_key(a: Assignment) -> tuple[str, int, str, str, tuple[str, ...]]:
    """Order by service then ordinal; names that do not parse sort first."""
    suffix = a.instance.removeprefix(f"{a.service}-")
    ordinal = int(suffix) if suffix.isdigit() and suffix != a.instance else -1
    return (a.service, ordinal, a.instance, a.node, tuple(sorted(a.avoid)))


@dataclass(frozen=True, slots=True)
class Plan:
    """The placement :func:`schedule` decided.

    ``assignments`` is sorted by service then ordinal; ``unplaced`` lists, sorted,
    the instances no node can take right now (they are retried on the next
    pass, when nodes come back or constraints change).
    """

    assignments: tuple[Assignment, ...]
    unplaced: tuple[str, ...]

    def changes(self, current: Sequence[Assignment]) -> tuple[list[Assignment], list[Assignment]]:
        """What to write and what to remove to turn ``current`` into this plan.

        To write: planned assignments not in ``current`` with the same
        instance, node and avoid set. To remove: current assignments whose
        (instance, node) slot the plan no longer uses. An assignment whose avoid
        set changed on the same node is rewritten, not removed, because the store
        keys assignments by node and instance: removing it after the write would
        delete the new one.
        """
        have = {(a.instance, a.node, a.avoid) for a in current}
        slots = {(a.instance, a.node) for a in self.assignments}
        to_write = [a for a in self.assignments if (a.instance, a.node, a.avoid) not in have]
        to_remove = sorted({a for a in current if (a.instance, a.node) not in slots}, key=_sort_key)
        return to_write, to_remove


def _unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


def _domain(node: NodeState, spread: Spread) -> tuple[str, ...]:
    if spread == "zone":
        return (node.region, node.zone)
    if spread == "region":
        return (node.region,)
    return ()


class _Tally:
    """Running counts of the plan being built, for the placement rules."""

    def __init__(self) -> None:
        self.placed: dict[str, Assignment] = {}
        self.on_node: Counter[tuple[str, str]] = Counter()  # (service, node)
        self.in_domain: Counter[tuple[str, tuple[str, ...]]] = Counter()  # (service, domain)
        self.load: Counter[str] = Counter()  # node -> instances of any service

    def add(self, demand: ServiceDemand, node: NodeState, assignment: Assignment) -> None:
        self.placed[assignment.instance] = assignment
        self.on_node[(demand.name, node.name)] += 1
        self.in_domain[(demand.name, _domain(node, demand.spread))] += 1
        self.load[node.name] += 1

    def free_for(self, demand: ServiceDemand, node: NodeState) -> bool:
        return demand.allow_colocate or self.on_node[(demand.name, node.name)] == 0

    def preference(self, demand: ServiceDemand, node: NodeState) -> tuple[int, int, int, str]:
        """Smaller is better: emptier spread domain, then emptier node, then name."""
        return (
            self.in_domain[(demand.name, _domain(node, demand.spread))],
            self.on_node[(demand.name, node.name)],
            self.load[node.name],
            node.name,
        )


def schedule(
    services: Sequence[ServiceDemand],
    nodes: Sequence[NodeState],
    current: Sequence[Assignment],
) -> Plan:
    """Decide where every instance of every service runs.

    Service ``s`` with ``n`` replicas has instances ``s-0 .. s-(n-1)``; current
    assignments of removed services or of ordinals ``>= n`` are dropped, so
    scaling down removes the highest ordinals.

    First, every current assignment that is still valid is kept as it is: its
    node exists, is schedulable and no witness, satisfies the constraints, is not in its avoid
    set, and no lower ordinal of the service already kept that node (unless the
    service allows colocation). Running instances are never moved for balance.
    If ``current`` holds one instance several times, the first valid entry in
    node order is kept.

    Then the other instances are placed one by one, services by name and
    instances by ordinal. Candidates are the schedulable nodes (never a
    witness) satisfying the constraints, not yet hosting an instance of the
    service (unless colocation is allowed) and not in the instance's avoid
    set, carried over from its current assignment(s). The chosen node has the
    fewest instances of the service in its spread domain, then on itself, then
    of any service on itself, then the smallest name.

    If every candidate is in the avoid set, the avoid set is cleared and the
    instance placed among them anyway: running on a node where it failed
    before beats not running at all, and the cleared set lets the agent start
    counting failures afresh. An instance with no candidate at all goes to
    ``unplaced``.

    Raises ValueError on duplicate service or node names.
    """
    _unique((s.name for s in services), "service")
    _unique((n.name for n in nodes), "node")
    demands = sorted(services, key=lambda s: s.name)
    by_name = {n.name: n for n in nodes}
    ordered_nodes = sorted(nodes, key=lambda n: n.name)

    previous: dict[str, list[Assignment]] = {}
    for a in sorted(current, key=_sort_key):
        previous.setdefault(a.instance, []).append(a)

    tally = _Tally()
    eligible: dict[str, list[NodeState]] = {
        d.name: [n for n in ordered_nodes if n.takes_instances and n.satisfies(d.constraints)]
        for d in demands
    }

    # Keep everything still valid before placing anything, so that new
    # instances never take a node a running one could have stayed on.
    for demand in demands:
        for instance in demand.instances():
            for old in previous.get(instance, ()):
                node = by_name.get(old.node)
                if (
                    old.service == demand.name
                    and node is not None
                    and node.takes_instances
                    and node.satisfies(demand.constraints)
                    and node.name not in old.avoid
                    and tally.free_for(demand, node)
                ):
                    tally.add(demand, node, old)
                    break

    unplaced: list[str] = []
    for demand in demands:
        for instance in demand.instances():
            if instance in tally.placed:
                continue
            avoid = frozenset().union(
                *(a.avoid for a in previous.get(instance, ()) if a.service == demand.name)
            )
            candidates = [n for n in eligible[demand.name] if tally.free_for(demand, n)]
            allowed = [n for n in candidates if n.name not in avoid]
            if not allowed:
                allowed, avoid = candidates, frozenset()
            if not allowed:
                unplaced.append(instance)
                continue
            node = min(allowed, key=lambda n: tally.preference(demand, n))
            tally.add(demand, node, Assignment(demand.name, instance, node.name, avoid))

    return Plan(
        assignments=tuple(sorted(tally.placed.values(), key=_sort_key)),
        unplaced=tuple(sorted(unplaced)),
    )
