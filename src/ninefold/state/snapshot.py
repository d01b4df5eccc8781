"""The snapshot the leader decides on: everything it reads, in one value
(read by state/reads.py, decided on by decide/plan.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ninefold.spec import ClusterSpec
from ninefold.state.records import AssignmentRecord, InstanceStatus


@dataclass(frozen=True)
class ClusterState:
    """Everything the leader reads before deciding."""

    spec: ClusterSpec
    alive: frozenset[str]
    drained: frozenset[str]
    assignments: tuple[AssignmentRecord, ...]
    statuses: tuple[InstanceStatus, ...] = ()
    restart_nonces: Mapping[str, str] = field(default_factory=dict)
    """service -> token of the last `restart` asked for it"""
    moves: Mapping[str, str] = field(default_factory=dict)
    """instance -> node an operator asked it to move to"""
    held: frozenset[str] = frozenset()
    """services none of whose instances may run now (a volume being restored)"""
