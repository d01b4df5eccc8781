"""The mirror's rounds (volumes/mirror.py) with a push that copies in-process:
changes go out, failures are retried until they succeed, generations land in
the store, a flush waits, a stopped mirror sends nothing more."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ninefold.spec.models import VolumeSpec
from ninefold.state.keys import copy_key
from ninefold.state.records import CopyRecord
from ninefold.store.memory import MemoryStore
from ninefold.volumes.mirror import Target, VolumeMirror, parse_volume_id
from tests.helpers import eventually


@dataclass
class Pushed:
    ok: bool
    bytes_sent: int = 0
    seconds: float = 0.0
    error: str = ""


class FakePeers:
    """Targets that are directories; `down` ones refuse."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.dirs = {n: root / n for n in names}
        for d in self.dirs.values():
            d.mkdir(parents=True)
        self.down: set[str] = set()
        self.pushes: list[tuple[str, str]] = []

    async def targets(self) -> list[Target]:
        return [Target(n, "127.0.0.1", 1) for n in sorted(self.dirs)]

    async def push(self, source: Path, target: Target, volume_id: str) -> Pushed:
        self.pushes.append((target.node, volume_id))
        if target.node in self.down:
            return Pushed(False, error="connection refused")
        shutil.copytree(source, self.dirs[target.node], dirs_exist_ok=True)
        return Pushed(True, bytes_sent=1)


class Journal:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def record(self, kind: str, subject: str, reason: str = "", **data: Any) -> None:
        self.events.append((kind, subject, reason))


def mirror(tmp_path: Path, peers: FakePeers, store: MemoryStore, journal: Journal) -> VolumeMirror:
    return VolumeMirror(
        store=store,
        node="n1",
        service="db",
        name="data",
        volume=VolumeSpec(replicate="continuous"),
        directory=tmp_path / "src",
        token=40,
        push=peers.push,
        record=journal.record,
        targets=peers.targets,
    )


async def copy_of(store: MemoryStore, node: str) -> CopyRecord | None:
    item = await store.get(copy_key("db", "data", node))
    return CopyRecord.decode(item.value) if item else None


async def test_a_change_reaches_every_target_and_its_generation_is_stored(tmp_path: Path) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2", "n3"])
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        (tmp_path / "src" / "a").write_text("1")

        async def arrived() -> bool:
            return all((d / "a").exists() for d in peers.dirs.values())

        await eventually(arrived, 5, "the file on both targets")
        record = await eventually(lambda: copy_of(store, "n2"), 5, "n2's copy record")
        assert (record.token, record.source) == (40, "n1")
        own = await copy_of(store, "n1")
        assert own is not None and own.generation >= record.generation
        assert m.volume_id == "db/data@40"
        assert peers.pushes[0][1] == "db/data@40"
    finally:
        await m.stop()


async def test_a_failed_target_is_retried_until_it_gets_it(tmp_path: Path) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    peers.down.add("n2")
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        (tmp_path / "src" / "a").write_text("1")

        async def refused_twice() -> bool:
            return sum(1 for n, _ in peers.pushes if n == "n2") >= 2

        await eventually(refused_twice, 5, "retries")
        assert [e[0] for e in journal.events] == ["volume-sync-failed"]  # said once
        assert m.lag() > 0
        peers.down.clear()

        async def arrived() -> bool:
            return (peers.dirs["n2"] / "a").exists()

        await eventually(arrived, 5, "the file after the target came back")
        assert journal.events[-1][0] == "volume-sync-recovered"
    finally:
        await m.stop()


async def test_flush_waits_for_every_target_and_says_when_it_cannot(tmp_path: Path) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        (tmp_path / "src" / "last").write_text("x")
        assert await m.flush(timeout=5)
        assert (peers.dirs["n2"] / "last").read_text() == "x"
        peers.down.add("n2")
        (tmp_path / "src" / "later").write_text("y")
        assert not await m.flush(timeout=0.5)
    finally:
        await m.stop()


async def test_a_stopped_mirror_sends_nothing_more(tmp_path: Path) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    assert await m.flush(timeout=5)
    await m.stop()
    sent = len(peers.pushes)
    (tmp_path / "src" / "after-fence").write_text("z")
    import asyncio

    await asyncio.sleep(0.3)
    assert len(peers.pushes) == sent
    assert not (peers.dirs["n2"] / "after-fence").exists()


def test_volume_ids_name_service_volume_and_token() -> None:
    assert parse_volume_id("db/data@40") == ("db", "data", 40)
    for bad in ("db/data", "db@40", "/data@40", "db/data@x", "db/@4"):
        assert parse_volume_id(bad) is None, bad
