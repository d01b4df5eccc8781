"""Snapshot reads: what the agent, the API and the CLI read from the store to
see the cluster (the spec in force, the leader's ClusterState, the events)."""

from __future__ import annotations

import functools
import logging

from ninefold.spec import ClusterSpec, SpecError, parse_spec
from ninefold.state.keys import (
    ASSIGN,
    DRAIN,
    EVENTS,
    MOVES,
    NODES,
    RESTARTS,
    RESTORES,
    SPEC_KEY,
    STATUS,
    last_segment,
)
from ninefold.state.records import AssignmentRecord, Event, InstanceStatus, RestoreRecord
from ninefold.state.snapshot import ClusterState
from ninefold.store.base import Store

log = logging.getLogger("ninefold.state")


@functools.lru_cache(maxsize=4)
def _parse_stored_spec(raw: bytes) -> ClusterSpec:
    """The stored spec changes rarely but is read on every round of every
    loop (leader, reconciler, gateway feed, API): parse each text once."""
    return parse_spec(raw.decode(), "<store>")


async def read_spec(store: Store, fallback: ClusterSpec) -> ClusterSpec:
    """The spec in force. Read serializably (from the client's own member, see
    Store.list_serializable): every loop of every agent reads it each round,
    as linearizable reads that was most of a quiet cluster's peer traffic,
    and a spec a moment old is simply seen changed on the next round."""
    item = await store.get_serializable(SPEC_KEY)
    if item is None:
        return fallback
    try:
        return _parse_stored_spec(item.value)
    except SpecError as exc:
        log.error("the spec in the store does not load, keeping the last good one: %s", exc)
        return fallback


async def read_state(store: Store, spec: ClusterSpec) -> ClusterState:
    nodes = await store.list(NODES)
    drained = await store.list(DRAIN)
    assigns = await store.list(ASSIGN)
    statuses = await store.list(STATUS)
    restarts = await store.list(RESTARTS)
    moves = await store.list(MOVES)
    restores = await store.list(RESTORES)
    return ClusterState(
        spec=spec,
        alive=frozenset(last_segment(i.key) for i in nodes.items),
        drained=frozenset(last_segment(i.key) for i in drained.items),
        assignments=tuple(AssignmentRecord.decode(i.value) for i in assigns.items),
        statuses=tuple(InstanceStatus.decode(i.value) for i in statuses.items),
        restart_nonces={last_segment(i.key): i.value.decode() for i in restarts.items},
        moves={last_segment(i.key): i.value.decode() for i in moves.items},
        held=frozenset(
            last_segment(i.key) for i in restores.items if RestoreRecord.decode(i.value).holds
        ),
    )


async def read_events(store: Store, limit: int = 100) -> list[Event]:
    """The newest `limit` events, oldest first."""
    listing = await store.list(EVENTS)
    events = []
    for item in listing.items[-limit:] if limit > 0 else listing.items:
        try:
            events.append(Event.decode(item.value))
        except ValueError:
            continue
    return events
