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
    when none of them has a copy)."""
    living = set(alive)
    mine = [c for c in copies if c.node in living]
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
    copies = list(copies)
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
