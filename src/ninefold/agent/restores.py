"""Restoring a volume from a snapshot, on the nodes holding its copies.

`POST /v1/restores` writes `restores/<service>` (a RestoreRecord naming the
snapshot and the nodes holding a copy of the volume). From then on the
leader places none of the service's instances, so they stop. Each node named
in the record waits until no instance of the service runs anywhere (no
assignment of it, none running here, no active lock), then restores its own
copy: restic restores the snapshot next to the volume's directory, the old
directory is moved aside, the restored one takes its place, and the old one
is deleted. Every copy ends up equal to the snapshot, so whichever copy the
mirror takes as its source when the service starts again, the standbys get
the restored data. The last node to finish marks the record done (or failed,
with each node's error), and the leader places the service again.

A restore never runs under a live instance of the same service: a node that
still runs one, or sees its assignment or its active lock, waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.agent.journal import EventJournal
from ninefold.backup.repository import RepositoryConfigError
from ninefold.backup.restic import Restic, ResticError
from ninefold.backup.targets import repository_of
from ninefold.spec import ClusterSpec
from ninefold.state.keys import ASSIGN, BACKUP_RUNS, RESTORES, active_lock, restore_key
from ninefold.state.reads import read_spec
from ninefold.state.records import AssignmentRecord, RestoreRecord
from ninefold.store.base import Compare, Put, Store, StoreError
from ninefold.tasks import KeyedTasks
from ninefold.volumes.layout import volume_dir

log = logging.getLogger("ninefold.restores")

RESTORE_TIMEOUT = 6 * 3600.0
RESYNC = 30.0
STOPPED_POLL = 0.5


class RestoreRunner:
    """Restores this node's copies of volumes, as `restores/` asks."""

    def __init__(
        self,
        store: Store,
        journal: EventJournal,
        node: str,
        spec: ClusterSpec,
        data_dir: Path,
        runs_here: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._journal = journal
        self._node = node
        self._spec = spec
        self._data_dir = data_dir
        self._runs_here = runs_here
        """service -> whether an instance of it runs on this node."""
        self._tasks = KeyedTasks()
        """Runs in progress here, by run id."""

    async def run(self) -> None:
        signal = ChangeSignal(self._store, RESTORES)
        try:
            await run_level_triggered(signal, self.step, "restores", every=RESYNC)
        finally:
            await self._tasks.stop()

    async def step(self) -> None:
        for item in (await self._store.list(RESTORES)).items:
            record = RestoreRecord.decode(item.value)
            mine = self._node in record.nodes and self._node not in record.done
            if not record.in_progress or not mine or self._node in record.errors:
                continue
            if record.run_id in self._tasks:
                continue
            self._tasks.start(record.run_id, self._restore(record), f"restore {record.service}")

    async def _stopped_everywhere(self, service: str, volume: str) -> bool:
        """No instance of the service runs or is assigned anywhere, none holds
        its active lock, and no backup of the volume is reading it."""
        if self._runs_here(service):
            return False
        for item in (await self._store.list(ASSIGN)).items:
            if AssignmentRecord.decode(item.value).service == service:
                return False
        if (await self._store.list(f"{BACKUP_RUNS}volume/{service}/{volume}/")).items:
            return False
        return await self._store.lock_holder(active_lock(service)) is None

    async def _restore(self, record: RestoreRecord) -> None:
        while True:  # the store and the local runners, polled: nothing to wait on
            if await self._stopped_everywhere(record.service, record.volume):
                break
            await asyncio.sleep(STOPPED_POLL)
        await self._update(record.service, record.run_id, lambda r: r.state == "stopping",
                           lambda r: setattr(r, "state", "restoring"))  # fmt: skip
        started = time.monotonic()
        error = ""
        try:
            await self._restore_copy(record)
        except (ResticError, RepositoryConfigError, OSError, KeyError) as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: said, and this node's restore fails
            log.exception("restore of %s/%s failed", record.service, record.volume)
            error = str(exc) or type(exc).__name__
        took = time.monotonic() - started

        def finish(r: RestoreRecord) -> None:
            if error:
                r.errors[self._node] = error
            else:
                r.done.append(self._node)
            if len(r.done) + len(r.errors) >= len(r.nodes):
                r.state = "failed" if r.errors else "done"
                r.finished_at = time.time()

        final = await self._update(record.service, record.run_id, lambda r: True, finish)
        what = f"{record.service}/{record.volume}"
        if error:
            await self._journal.record("restore-failed", what, f"on {self._node}: {error}",
                                       snapshot=record.snapshot[:8])  # fmt: skip
        else:
            await self._journal.record(
                "restored", what, f"snapshot {record.snapshot[:8]} into {self._node}'s copy "
                f"in {took:.1f}s", snapshot=record.snapshot[:8],
            )  # fmt: skip
        if final is not None and not final.holds:
            await self._journal.record(
                "restore-done" if final.state == "done" else "restore-failed", what,
                f"{len(final.done)} of {len(final.nodes)} copies restored from snapshot "
                f"{record.snapshot[:8]}; the service starts again",
            )  # fmt: skip

    async def _restore_copy(self, record: RestoreRecord) -> None:
        spec = await read_spec(self._store, self._spec)
        volume = spec.services[record.service].volumes[record.volume]
        target = volume_dir(self._data_dir, record.service, record.volume, volume)
        restic = Restic(
            repository_of(spec.backups.repositories[record.repository]),
            cache_dir=self._data_dir / "restic-cache",
            timeout=RESTORE_TIMEOUT,
        )
        # staged inside the volume: on its own filesystem (a volume may be a
        # mount point, which cannot be renamed), then swapped in entry by entry
        fresh = target / f".ninefold-restore-{record.run_id}"
        old = target / f".ninefold-before-restore-{record.run_id}"
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.rmtree, fresh, True)
        await asyncio.to_thread(fresh.mkdir)
        try:
            await restic.restore(record.snapshot, fresh)
            await asyncio.to_thread(_swap_in, target, fresh, old)
        finally:
            await asyncio.to_thread(shutil.rmtree, fresh, True)
            await asyncio.to_thread(shutil.rmtree, old, True)

    async def _update(
        self,
        service: str,
        run_id: str,
        when: Callable[[RestoreRecord], bool],
        change: Callable[[RestoreRecord], None],
    ) -> RestoreRecord | None:
        """Change the record (if it is still this run's and `when` holds),
        guarded by its revision; the record as written, or None."""
        for _ in range(20):
            with contextlib.suppress(StoreError):
                item = await self._store.get(restore_key(service))
                if item is None:
                    return None
                record = RestoreRecord.decode(item.value)
                if record.run_id != run_id or not when(record):
                    return record
                change(record)
                guard = Compare(restore_key(service), "mod", "==", item.mod_revision)
                put = Put(restore_key(service), record.encode())
                if (await self._store.txn([guard], [put])).succeeded:
                    return record
            await asyncio.sleep(0.2)
        return None


def _swap_in(target: Path, fresh: Path, old: Path) -> None:
    """Blocking: every entry of `target` but the two staging directories into
    `old`, then every entry of `fresh` into `target` (renames, one filesystem)."""
    old.mkdir(exist_ok=True)
    for entry in target.iterdir():
        if entry not in (fresh, old):
            entry.rename(old / entry.name)
    for entry in fresh.iterdir():
        entry.rename(target / entry.name)
