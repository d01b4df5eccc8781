"""Deciding what the leader writes: a pure function of the cluster's state.

Kept apart from the leader loop (which only reads the store, calls `plan` and
writes the result) so it can be tested without a store or processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ninefold.decide.placement import Assignment, NodeState, ServiceDemand, schedule
from ninefold.spec import ClusterSpec
from ninefold.state.records import AssignmentRecord, InstanceStatus
from ninefold.state.snapshot import ClusterState


@dataclass(frozen=True)
class Decision:
    write: list[AssignmentRecord] = field(default_factory=list)
    remove: list[AssignmentRecord] = field(default_factory=list)
    unplaced: tuple[str, ...] = ()
    moved: dict[str, tuple[str, str]] = field(default_factory=dict)
    """instance -> (from node, to node)"""
    failed_on: dict[str, str] = field(default_factory=dict)
    """instance -> node it gave up on (restart limit), now avoided"""
    rolled: tuple[str, ...] = ()
    """instances told to restart with their service's new generation"""

    @property
    def empty(self) -> bool:
        return not self.write and not self.remove


def demands(spec: ClusterSpec, held: frozenset[str] = frozenset()) -> list[ServiceDemand]:
    """What each service asks for; a held service (a volume being restored)
    for no instance at all, an external one for none ever (not even a demand)."""
    return [
        ServiceDemand(
            name=name,
            replicas=0 if name in held else service.replicas,
            spread=service.placement.spread,
            constraints=dict(service.placement.constraints),
            allow_colocate=service.placement.allow_colocate,
        )
        for name, service in sorted(spec.services.items())
        if not service.is_external
    ]


def node_states(spec: ClusterSpec, alive: Iterable[str], drained: Iterable[str]) -> list[NodeState]:
    alive_set, drained_set = set(alive), set(drained)
    return [
        NodeState(
            name=node.name,
            zone=node.zone,
            region=node.region,
            labels=dict(node.labels),
            schedulable=node.name in alive_set and node.name not in drained_set,
            witness=node.witness,
        )
        for node in spec.nodes
    ]


def failed_instances(
    statuses: Iterable[InstanceStatus], assignments: Mapping[str, AssignmentRecord]
) -> dict[str, str]:
    """Instances that gave up on the node they are assigned to."""
    failed = {}
    for status in statuses:
        current = assignments.get(status.instance)
        if status.state == "failed" and current is not None and current.node == status.node:
            failed[status.instance] = status.node
    return failed


def generation(state: ClusterState, service: str) -> str:
    """A short digest of what an instance of `service` runs: its spec and the
    last restart asked for. An instance whose assignment carries another
    generation is restarted, one at a time (see `rolling`)."""
    spec = state.spec.services[service]
    # How many run and where is the scheduler's business, how traffic reaches
    # them the gateways', how their volumes are backed up the backups':
    # none changes what an instance runs.
    runs = spec.model_dump_json(
        exclude={
            "replicas": True, "placement": True, "route": True, "balance": True,
            "access": True, "volumes": {"__all__": {"backup"}},
            "external": True,  # never runs: and left out, older digests stay
        }
    )  # fmt: skip
    text = runs + "\0" + state.restart_nonces.get(service, "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rolling(
    state: ClusterState, wanted: dict[str, AssignmentRecord], generations: Mapping[str, str]
) -> list[str]:
    """Instances to move to their service's new generation now: at most one
    per service, and only while every instance of it is serving, so a rolling
    restart never takes more than one instance away. Standbys go before the
    active."""
    # Serving *the generation it is assigned*: an instance just told to roll
    # still shows its old process serving until its agent catches up.
    serving = {
        (s.node, s.instance, s.generation)
        for s in state.statuses
        if (s.serving or s.state == "standby") and not s.draining  # a cold standby is ready
    }
    active = {s.instance for s in state.statuses if s.role == "active"}
    chosen = []
    for service, gen in generations.items():
        mine = [a for a in wanted.values() if a.service == service]
        stale = [a for a in mine if a.generation != gen]
        if not stale or not all((a.node, a.instance, a.generation) in serving for a in mine):
            continue
        stale.sort(key=lambda a: (a.instance in active, a.instance))
        chosen.append(stale[0].instance)
    return chosen


def requested_moves(
    current: list[Assignment],
    moves: Mapping[str, str],
    nodes: list[NodeState],
    spec: ClusterSpec,
) -> list[Assignment]:
    """The current assignments with each feasible move request applied, as
    if the instance already were on its target: the scheduler then keeps it
    there. A request the target cannot take (down, drained, excluded by
    constraints, already running the service, a witness) changes nothing."""
    if not moves:
        return current
    usable = {n.name: n for n in nodes if n.takes_instances}
    out = list(current)
    for i, a in enumerate(out):
        target = moves.get(a.instance)
        if target is None or target == a.node or target not in usable:
            continue
        service = spec.services.get(a.service)
        if service is None or not usable[target].satisfies(service.placement.constraints):
            continue
        taken = any(o.service == a.service and o.node == target for o in out)
        if taken and not service.placement.allow_colocate:
            continue
        out[i] = Assignment(a.service, a.instance, target, a.avoid - {target})
    return out


def plan(state: ClusterState) -> Decision:
    by_instance = {a.instance: a for a in state.assignments}
    failed = failed_instances(state.statuses, by_instance)
    current = [
        Assignment(
            service=a.service,
            instance=a.instance,
            node=a.node,
            avoid=frozenset(a.avoid) | ({failed[a.instance]} if a.instance in failed else set()),
        )
        for a in state.assignments
    ]
    nodes = node_states(state.spec, state.alive, state.drained)
    current = requested_moves(current, state.moves, nodes, state.spec)
    result = schedule(demands(state.spec, state.held), nodes, current)
    generations = {name: generation(state, name) for name in state.spec.services}
    wanted = {}
    for a in result.assignments:
        current_record = by_instance.get(a.instance)
        kept = current_record if current_record and current_record.node == a.node else None
        wanted[a.instance] = AssignmentRecord(
            service=a.service,
            instance=a.instance,
            node=a.node,
            avoid=sorted(a.avoid),
            # A new or moved instance starts with the new generation; one that
            # stays keeps its own until `rolling` picks it.
            generation=kept.generation if kept is not None else generations[a.service],
        )
    rolled = rolling(state, wanted, generations)
    for instance in rolled:
        record = wanted[instance]
        wanted[instance] = record.model_copy(update={"generation": generations[record.service]})
    write = [rec for inst, rec in wanted.items() if by_instance.get(inst) != rec]
    remove = [
        rec
        for inst, rec in by_instance.items()
        if inst not in wanted or wanted[inst].node != rec.node
    ]
    moved = {
        inst: (by_instance[inst].node, rec.node)
        for inst, rec in wanted.items()
        if inst in by_instance and by_instance[inst].node != rec.node
    }
    return Decision(
        write=sorted(write, key=lambda r: r.instance),
        remove=sorted(remove, key=lambda r: r.instance),
        unplaced=result.unplaced,
        moved=moved,
        failed_on={i: n for i, n in failed.items() if i in moved or i not in wanted},
        rolled=tuple(rolled),
    )
