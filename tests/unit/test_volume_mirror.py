"""The mirror's rounds (volumes/mirror.py) with a push that copies in-process:
changes go out, failures are retried until they succeed, generations land in
the store, a flush waits, a stopped mirror sends nothing more."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ninefold.spec.models import VolumeSpec
from ninefold.state.keys import copy_key
from ninefold.state.records import CopyRecord
from ninefold.store.memory import MemoryStore
from ninefold.volumes.mirror import PushOptions, Target, VolumeMirror, parse_volume_id
from tests.helpers import eventually


@dataclass
class Pushed:
    ok: bool
    bytes_sent: int = 0
    seconds: float = 0.0
    error: str = ""
    sent_files: tuple[str, ...] = ()


def differing(source: Path, copy: Path) -> tuple[str, ...]:
    """What a checksum transfer would send: the files whose contents differ."""
    names = []
    for f in sorted(source.rglob("*")):
        there = copy / f.relative_to(source)
        if f.is_file() and not (there.is_file() and there.read_bytes() == f.read_bytes()):
            names.append(str(f.relative_to(source)))
    return tuple(names)


def size_of(source: Path) -> int:
    return sum(f.stat().st_size for f in source.rglob("*") if f.is_file())


class FakePeers:
    """Targets that are directories; `down` ones refuse."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.dirs = {n: root / n for n in names}
        for d in self.dirs.values():
            d.mkdir(parents=True)
        self.down: set[str] = set()
        self.hung: set[str] = set()
        """Targets whose transfers never end (a frozen peer)."""
        self.pushes: list[tuple[str, str]] = []
        self.options: list[tuple[str, PushOptions]] = []

    async def targets(self) -> list[Target]:
        return [Target(n, "127.0.0.1", 1) for n in sorted(self.dirs)]

    async def push(
        self, source: Path, target: Target, volume_id: str, options: PushOptions
    ) -> Pushed:
        self.pushes.append((target.node, volume_id))
        self.options.append((target.node, options))
        while target.node in self.hung:  # noqa: ASYNC110 (a frozen peer: polled)
            await asyncio.sleep(0.05)
        if target.node in self.down:
            return Pushed(False, error="connection refused")
        sent = differing(source, self.dirs[target.node])
        if options.progress is not None:
            options.progress(size_of(source))
        shutil.copytree(source, self.dirs[target.node], dirs_exist_ok=True)
        return Pushed(True, bytes_sent=1, sent_files=sent if options.checksum else ())


class Journal:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def record(self, kind: str, subject: str, reason: str = "", **data: Any) -> None:
        self.events.append((kind, subject, reason))


def mirror(
    tmp_path: Path,
    peers: FakePeers,
    store: MemoryStore,
    journal: Journal,
    volume: VolumeSpec | None = None,
) -> VolumeMirror:
    return VolumeMirror(
        store=store,
        node="n1",
        service="db",
        name="data",
        volume=volume or VolumeSpec(replicate="continuous"),
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
        kinds = [e[0] for e in journal.events]
        assert kinds == ["volume-sync-failed", "volume-sync-recovered", "volume-seeded"]
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
    await asyncio.sleep(0.3)
    assert len(peers.pushes) == sent
    assert not (peers.dirs["n2"] / "after-fence").exists()


def test_volume_ids_name_service_volume_and_token() -> None:
    assert parse_volume_id("db/data@40") == ("db", "data", 40)
    for bad in ("db/data", "db@40", "/data@40", "db/data@x", "db/@4"):
        assert parse_volume_id(bad) is None, bad


async def test_a_copy_that_cannot_be_reached_shows_its_lag_bytes_behind_and_error(
    tmp_path: Path,
) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        assert await m.flush(timeout=5)
        first = await eventually(lambda: copy_of(store, "n2"), 5, "n2's record")
        assert first.complete and first.error == "" and first.bytes_behind == 0
        peers.down.add("n2")
        (tmp_path / "src" / "big").write_bytes(b"x" * 5000)
        before = time.time()

        async def behind() -> CopyRecord | None:
            record = await copy_of(store, "n2")
            return record if record and record.bytes_behind >= 5000 and record.error else None

        record = await eventually(behind, 5, "n2's record to show it is behind")
        assert record.error == "connection refused"
        assert record.generation == first.generation  # a failure never makes it fresher
        assert before - 1 < record.behind_since <= time.time()
        assert record.lag(time.time()) >= 0
        peers.down.clear()

        async def caught_up() -> CopyRecord | None:
            record = await copy_of(store, "n2")
            return record if record and record.bytes_behind == 0 and not record.error else None

        record = await eventually(caught_up, 5, "n2's record once it caught up")
        assert record.behind_since == 0 and record.generation > first.generation
    finally:
        await m.stop()


async def test_records_are_written_at_most_once_a_second_per_copy(tmp_path: Path) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    puts: list[str] = []
    real_put = store.put

    async def counting_put(key: str, value: bytes, lease: int = 0) -> int:
        puts.append(key)
        return await real_put(key, value, lease)

    store.put = counting_put  # type: ignore[method-assign]
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        started = time.monotonic()
        for i in range(60):  # 3 s of a file every 50 ms: many rounds
            (tmp_path / "src" / f"f{i}").write_text("x")
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        assert m.seq > 10  # many transfers...
        per_copy = max(puts.count(copy_key("db", "data", n)) for n in ("n1", "n2"))
        assert per_copy <= seconds + 2  # ...but about one record a second per copy
    finally:
        await m.stop()


async def test_a_first_copy_reports_progress_and_is_not_fresher_until_complete(
    tmp_path: Path,
) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "site.html").write_bytes(b"y" * 3000)
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        record = await eventually(lambda: copy_of(store, "n2"), 5, "n2's record")
        assert record.complete and not record.seeding
        assert record.seed_total == 3000 and record.seed_done == 3000
        assert [e[0] for e in journal.events] == ["volume-seeded"]
        assert peers.options[0][1].progress is not None  # the first push reports progress
        assert all(o.progress is None for _, o in peers.options[1:])
    finally:
        await m.stop()


async def test_verification_repairs_and_reports_a_copy_changed_behind_its_back(
    tmp_path: Path,
) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2"])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "kept").write_text("good")
    m = mirror(tmp_path, peers, store, journal, VolumeSpec(replicate="continuous", verify=1.0))
    await m.start()
    try:
        assert await m.flush(timeout=5)
        (peers.dirs["n2"] / "kept").write_text("BAD!")  # diverged; the source did not change

        async def reported() -> list[tuple[str, str, str]]:
            return [e for e in journal.events if e[0] == "volume-diverged"]

        event = (await eventually(reported, 5, "a volume-diverged event"))[0]
        assert "1 file(s) on n2" in event[2] and "kept" in event[2]
        assert (peers.dirs["n2"] / "kept").read_text() == "good"

        async def recorded() -> CopyRecord | None:
            record = await copy_of(store, "n2")
            return record if record and record.verified_at and record.diverged == 1 else None

        await eventually(recorded, 5, "n2's record with the divergence")
        # a change made at the source is not a divergence
        (tmp_path / "src" / "kept").write_text("new!")
        assert await m.flush(timeout=5)
        verified = len(await reported())
        await eventually(lambda: _verified_again(store), 5, "another verification")
        assert len(await reported()) == verified
    finally:
        await m.stop()


async def _verified_again(store: MemoryStore) -> bool:
    record = await copy_of(store, "n2")
    return bool(record and record.diverged == 0 and record.verified_at)


async def test_a_hung_target_holds_up_only_its_own_copy(tmp_path: Path) -> None:
    store, journal = MemoryStore(), Journal()
    peers = FakePeers(tmp_path / "peers", ["n2", "n3"])
    m = mirror(tmp_path, peers, store, journal)
    await m.start()
    try:
        assert await m.flush(timeout=5)
        peers.hung.add("n2")  # frozen: its transfer neither ends nor fails
        for i in range(5):
            (tmp_path / "src" / f"late-{i}").write_text("x")

            async def on_n3(name: str = f"late-{i}") -> bool:
                return (peers.dirs["n3"] / name).exists()

            await eventually(on_n3, 3, f"late-{i} on n3 while n2 hangs")
        assert not (peers.dirs["n2"] / "late-0").exists()
        assert not await m.flush(timeout=0.5)  # n2 has not got it: a handover says so
        peers.hung.clear()

        async def on_n2() -> bool:
            return all((peers.dirs["n2"] / f"late-{i}").exists() for i in range(5))

        await eventually(on_n2, 5, "every file on n2 once it answers again")
        assert await m.flush(timeout=5)
    finally:
        await m.stop()
