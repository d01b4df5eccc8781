"""Which copy of a replicated volume is freshest, and how far behind another is.

A copy's generation is (fencing token of the active that sent it, that
active's transfer count): a copy made by a later active is fresher than any
made by an earlier one, and among one active's transfers the later is fresher.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ninefold.state.records import CopyRecord


def freshest(copies: Iterable[CopyRecord], alive: Iterable[str]) -> set[str]:
    """The living nodes whose copy is the freshest among the living (empty
    when none of them has a copy). A copy still being made for the first time
    does not count."""
    living = set(alive)
    mine = [c for c in copies if c.node in living and c.complete]
    if not mine:
        return set()
    best = max(c.generation for c in mine)
    return {c.node for c in mine if c.generation == best}


def fresher_elsewhere(node: str, copies: Iterable[CopyRecord], alive: Iterable[str]) -> bool:
    """Whether another living node holds a copy fresher than `node`'s."""
    copies = list(copies)
    best = freshest(copies, alive)
    return bool(best) and node not in best


@dataclass(frozen=True)
class Behind:
    transfers: int
    """Transfers of the same active the copy missed (0 when from another active)."""
    seconds: float
    """How much older its last transfer is than the freshest copy's."""


def behind(node: str, copies: Iterable[CopyRecord]) -> Behind | None:
    """How far `node`'s copy is behind the freshest copy known (dead nodes'
    included: what a failover may have lost); None when it is the freshest."""
    copies = [c for c in copies if c.complete]
    if not copies:
        return None
    best = max(copies, key=lambda c: c.generation)
    mine = next((c for c in copies if c.node == node), None)
    if mine is None:
        return Behind(best.seq, best.synced_at)
    if mine.generation >= best.generation:
        return None
    transfers = best.seq - mine.seq if mine.token == best.token else 0
    return Behind(transfers, max(0.0, best.synced_at - mine.synced_at))


def replicated_source(
    instances: Iterable[tuple[int, str]], copies: Iterable[CopyRecord]
) -> str | None:
    """The node whose instance sends a replicated service's volume to the
    other instances, from where the instances are placed, as (ordinal, node).

    Instance 0's copy is the source, unless a node of another instance holds
    a fresher complete copy (instance 0 was placed on a node with none, or
    with an old one): then the lowest ordinal among the freshest sends until
    instance 0's copy has caught up. When no instance's node has a complete
    copy (a first deployment), instance 0's node sends what it has."""
    placed = sorted(instances)
    if not placed:
        return None
    nodes = {node for _, node in placed}
    best = freshest(copies, nodes)
    for _ordinal, node in placed:
        if not best or node in best:
            return node
    return None


def next_source_token(copies: Iterable[CopyRecord]) -> int:
    """The token a new source of a replicated service's volume sends with:
    above every generation made before, so its copies are the freshest and an
    earlier source's pushes are refused."""
    return max((c.token for c in copies), default=0) + 1
