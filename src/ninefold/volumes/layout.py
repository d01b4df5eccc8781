"""Where a volume lives on a node."""

from __future__ import annotations

from pathlib import Path

from ninefold.spec.models import VolumeSpec


def volume_dir(data_dir: Path, service: str, name: str, volume: VolumeSpec) -> Path:
    """The volume's directory on this node: its `path`, else one under the
    node's data directory, shared by whichever instance of the service runs here."""
    if volume.path:
        return Path(volume.path)
    return data_dir / "volumes" / service / name
