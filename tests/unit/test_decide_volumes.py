"""Freshness of a replicated volume's copies (decide/volumes.py)."""

from __future__ import annotations

from ninefold.decide.volumes import Behind, behind, fresher_elsewhere, freshest
from ninefold.state.records import CopyRecord


def copy(node: str, token: int, seq: int, at: float) -> CopyRecord:
    return CopyRecord(node=node, source="n1", token=token, seq=seq, synced_at=at)


COPIES = [copy("n1", 40, 9, 109.0), copy("n2", 40, 9, 109.0), copy("n3", 40, 7, 107.0)]


def test_the_freshest_living_copy_wins() -> None:
    assert freshest(COPIES, ["n2", "n3"]) == {"n2"}
    assert freshest(COPIES, ["n3"]) == {"n3"}
    assert freshest(COPIES, ["n4"]) == set()
    assert fresher_elsewhere("n3", COPIES, ["n2", "n3"])
    assert not fresher_elsewhere("n2", COPIES, ["n2", "n3"])
    assert not fresher_elsewhere("n3", COPIES, ["n3"])  # the fresher one is dead


def test_a_later_actives_copy_beats_any_of_an_earlier_active() -> None:
    later = [*COPIES, copy("n3", 55, 1, 200.0)]
    assert freshest(later, ["n2", "n3"]) == {"n3"}


def test_how_far_behind_a_copy_is() -> None:
    assert behind("n2", COPIES) is None
    assert behind("n3", COPIES) == Behind(transfers=2, seconds=2.0)
    assert behind("n3", [*COPIES[:2], copy("n3", 30, 50, 90.0)]) == Behind(0, 19.0)
