"""Freshness of a replicated volume's copies (decide/volumes.py)."""

from __future__ import annotations

from ninefold.decide.volumes import (
    Behind,
    behind,
    fresher_elsewhere,
    freshest,
    next_source_token,
    replicated_source,
)
from ninefold.state.records import CopyRecord


def copy(node: str, token: int, seq: int, at: float) -> CopyRecord:
    return CopyRecord(
        node=node, source="n1", token=token, seq=seq, synced_at=at, completed_at=at + 0.1
    )


def seeding(node: str, token: int) -> CopyRecord:
    """A first copy under way: no complete transfer yet."""
    return CopyRecord(node=node, source="n1", token=token, seq=0, synced_at=0.0, seeding=True)


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


def test_a_first_copy_under_way_is_not_a_copy_yet() -> None:
    copies = [*COPIES, seeding("n4", 99)]
    assert freshest(copies, ["n3", "n4"]) == {"n3"}
    assert freshest([seeding("n4", 99)], ["n4"]) == set()
    assert behind("n3", [seeding("n4", 99), copy("n3", 40, 7, 107.0)]) is None


def test_instance_0s_copy_is_the_source_of_a_replicated_service() -> None:
    synced = [copy("n1", 3, 5, 10.0), copy("n2", 3, 5, 10.0), copy("n3", 3, 5, 10.0)]
    assert replicated_source([(1, "n2"), (0, "n1"), (2, "n3")], synced) == "n1"
    assert replicated_source([], synced) is None


def test_a_first_deployment_sends_instance_0s_directory() -> None:
    assert replicated_source([(0, "n1"), (1, "n2")], []) == "n1"
    assert replicated_source([(0, "n1"), (1, "n2")], [seeding("n2", 1)]) == "n1"


def test_instance_0_on_a_node_without_a_copy_is_sent_one_first() -> None:
    # instance 0 was placed on n4 (no copy); n2 and n3 hold the data
    copies = [copy("n2", 3, 9, 10.0), copy("n3", 3, 8, 9.0), seeding("n4", 4)]
    assert replicated_source([(0, "n4"), (1, "n3"), (2, "n2")], copies) == "n2"
    # once n4's copy is as fresh as the freshest, instance 0 sends again
    caught_up = [copy("n2", 4, 2, 12.0), copy("n4", 4, 2, 12.0)]
    assert replicated_source([(0, "n4"), (2, "n2")], caught_up) == "n4"


def test_an_old_copy_on_instance_0s_node_does_not_overwrite_newer_data() -> None:
    copies = [copy("n1", 3, 50, 10.0), copy("n2", 6, 2, 20.0)]
    assert replicated_source([(0, "n1"), (1, "n2")], copies) == "n2"


def test_a_new_source_sends_with_a_token_above_every_generation() -> None:
    assert next_source_token([]) == 1
    assert next_source_token([copy("n1", 3, 50, 1.0), seeding("n2", 7)]) == 8
