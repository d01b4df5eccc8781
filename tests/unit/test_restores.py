"""A volume's restore swaps the restored entries in, inside the volume."""

from __future__ import annotations

from pathlib import Path


def test_swap_in_replaces_a_volume_s_entries_in_place(tmp_path: Path) -> None:
    """A restore swaps entries inside the volume (which may be a mount point)."""
    from ninefold.agent.restores import _swap_in

    volume = tmp_path / "vol"
    (volume / "sub").mkdir(parents=True)
    (volume / "old.txt").write_text("old")
    (volume / "sub" / "x").write_text("old x")
    fresh, old = volume / ".ninefold-restore-1", volume / ".ninefold-before-restore-1"
    (fresh / "sub").mkdir(parents=True)
    (fresh / "sub" / "x").write_text("restored x")
    (fresh / "new.txt").write_text("restored")
    _swap_in(volume, fresh, old)
    assert sorted(p.name for p in volume.iterdir()) == sorted([fresh.name, old.name, "new.txt",
                                                                "sub"])  # fmt: skip
    assert (volume / "sub" / "x").read_text() == "restored x"
    assert not list(fresh.iterdir()) and (old / "old.txt").read_text() == "old"
