"""Deciding what the leader writes: a pure function of the cluster's state.

Kept apart from the leader loop (which only reads the store, calls `plan` and
writes the result) so it can be tested without a store or processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ninefold.agent.records import AssignmentRecord, InstanceStatus
from ninefold.scheduler import Assignment, NodeState, ServiceDemand, schedule
from ninefold.spec import ClusterSpec


@dataclass(frozen=True)
class ClusterState:
    """Everything the leader reads before deciding."""

    spec: ClusterSpec
    alive: frozenset[str]
    drained: frozenset[str]
    assignments: tuple[AssignmentRecord, ...]
    statuses: tuple[InstanceStatus, ...] = ()


@dataclass(frozen=True)
class Decision:
    write: list[AssignmentRecord] = field(default_factory=list)
    remove: list[AssignmentRecord] = field(default_factory=list)
    unplaced: tuple[str, ...] = ()
    moved: dict[str, tuple[str, str]] = field(default_factory=dict)
    """instance -> (from node, to node)"""
    failed_on: dict[str, str] = field(default_factory=dict)
    """instance -> node it gave up on (restart limit), now avoided"""

    @property
    def empty(self) -> bool:
        return not self.write and not self.remove


def demands(spec: ClusterSpec) -> list[ServiceDemand]:
    return [
        ServiceDemand(
            name=name,
            replicas=service.replicas,
            spread=service.placement.spread,
            constraints=dict(service.placement.constraints),
            allow_colocate=service.placement.allow_colocate,
        )
        for name, service in sorted(spec.services.items())
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
    result = schedule(
        demands(state.spec), node_states(state.spec, state.alive, state.drained), current
    )
    wanted = {
        a.instance: AssignmentRecord(
            service=a.service, instance=a.instance, node=a.node, avoid=sorted(a.avoid)
        )
        for a in result.assignments
    }
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
    )
