"""Backups, as the agent does them: the leader's scheduler starts runs, and
the agent of the node a run was given to carries it out with restic.

The scheduler (leader only) reads the spec's targets, the runs in progress
(`backups/runs/<target>`: a run's record is its lock), how each target's last
run ended (`backups/last/<target>`) and the runs asked for now
(`backups/asked/<target>`); `decide/backup.py` says what to start where; it
writes each run's record guarded by the leader lock's fencing token and by
the record's absence (or, for a retry, by the interrupted run's revision), so
one run per target at a time, cluster-wide. A run whose node dies is retried
at once on the node that holds the target now.

The runner (every agent) starts the runs given to its node: a volume's
backup (after its `snapshot` hook, through the local instance), the
cluster's backup (an etcd snapshot, the CA certificate and the spec, and the
CA key into its own repository when asked for), or `restic check`. After a
backup it applies the target's keep rules (`restic forget --prune`). It then
writes the result and deletes the run's record in one transaction, guarded
by the record's revision: a run the leader already gave to another node
writes nothing. Every start, end, failure and wait is an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.agent.journal import EventJournal
from ninefold.agent.leader import LeaderLoop
from ninefold.backup.repository import RepositoryConfigError
from ninefold.backup.restic import ErrorKind, Restic, ResticError
from ninefold.backup.targets import (
    CA_KEY_TARGET,
    keep_policy,
    repository_of,
    target_host,
    target_tags,
)
from ninefold.decide.backup import (
    BackupTarget,
    LastRun,
    Running,
    Start,
    Wait,
    backup_targets,
    decide_runs,
)
from ninefold.spec import ClusterSpec
from ninefold.spec.backups import RepositorySpec, Scheduled
from ninefold.state.keys import (
    ASSIGN,
    BACKUP_ASKED,
    BACKUP_LAST,
    BACKUP_RUNS,
    BACKUPS,
    LEADER_LOCK,
    NODES,
    RESTORES,
    SPEC_KEY,
    active_lock,
    backup_asked_key,
    backup_last_key,
    backup_run_key,
    last_segment,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import (
    AssignmentRecord,
    BackupResultRecord,
    BackupRun,
    RestoreRecord,
)
from ninefold.store.base import Compare, Delete, LockHold, Put, Store, StoreError, lock_key
from ninefold.tasks import KeyedTasks
from ninefold.volumes.layout import volume_dir

log = logging.getLogger("ninefold.backups")

SCHEDULE_EVERY = 1.0
"""Seconds between two looks of the leader's scheduler."""
RUNNER_RESYNC = 30.0
"""Seconds between two full looks of a runner (its watch wakes it sooner)."""
RUN_TIMEOUT = 6 * 3600.0
"""Seconds one restic call of a run may take."""
RESTORE_NODE_GRACE = 30.0
"""Seconds a node of a restore in progress may be down before its copy counts as failed."""
FINISH_TRIES = 10
"""Tries to write a run's result while the store does not answer."""

SnapshotHook = Callable[[str, str], Callable[[], Awaitable[int]] | None]
"""(service, volume) -> the local instance's snapshot hook, or None."""


@dataclass(frozen=True)
class _AskedOnce:
    """The schedule of a check asked for by hand on a repository without a
    `check:` schedule: due when asked, never again by itself."""

    every: float | None = 1e12
    cron: str | None = None


def target_key(key: str) -> str:
    """The part of a store key under backups/runs/, last/ or asked/."""
    for prefix in (BACKUP_RUNS, BACKUP_LAST, BACKUP_ASKED):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


# -- the leader's scheduler -----------------------------------------------------------


class BackupScheduler:
    def __init__(self, store: Store, journal: EventJournal, leader: LeaderLoop) -> None:
        self._store = store
        self._journal = journal
        self._leader = leader
        self._said: dict[str, str] = {}
        self._down_since: dict[tuple[str, str], float] = {}

    async def run(self) -> None:
        """A look a second while this agent leads (nothing otherwise: no watch,
        no read), so a run asked for starts within a second."""
        while True:
            await asyncio.sleep(SCHEDULE_EVERY)
            try:
                await self.step()
            except StoreError as exc:
                log.debug("backup scheduling put off: %s", exc)
            except Exception:  # a bug here must not stop the agent: said, tried again
                log.exception("backup scheduling failed")
                await asyncio.sleep(5.0)

    async def step(self) -> None:
        hold = self._leader.hold
        if hold is None:
            self._said.clear()
            return
        spec = self._leader.spec  # the leader loop reads it every round
        targets: dict[BackupTarget, Scheduled] = dict(backup_targets(spec))
        if not targets and not spec.backups.repositories:
            return  # no backups: no store read either
        alive = {last_segment(i.key) for i in (await self._store.list(NODES)).items}
        await self._watch_restores(hold, alive)
        listing = (await self._store.list(BACKUPS)).items
        asked = {target_key(i.key) for i in listing if i.key.startswith(BACKUP_ASKED)}
        for key in asked:
            with contextlib.suppress(ValueError):
                target = BackupTarget.from_key(key)
                if target.kind == "check" and target.repository in spec.backups.repositories:
                    targets.setdefault(target, _AskedOnce())
        if not targets:
            return
        history: dict[str, LastRun] = {}
        running: list[Running] = []
        revisions: dict[str, int] = {}
        for item in listing:
            key = target_key(item.key)
            if item.key.startswith(BACKUP_LAST):
                last = BackupResultRecord.decode(item.value)
                history[key] = LastRun(last.started_at, last.finished_at, last.ok)
            elif item.key.startswith(BACKUP_RUNS):
                run = BackupRun.decode(item.value)
                with contextlib.suppress(ValueError):
                    running.append(
                        Running(BackupTarget.from_key(key), run.run_id, run.node, run.started_at)
                    )
                    revisions[run.run_id] = item.mod_revision
        for key in asked:  # asked for now: due now, as if it never ran
            history.pop(key, None)
        active = await self._active_nodes(spec, targets)
        decisions = decide_runs(
            targets, history, running, alive, active, time.time(), leader_node=hold.holder
        )
        for decision in decisions:
            if self._leader.hold is not hold:
                return
            if isinstance(decision, Start):
                await self._start(hold, decision, revisions, decision.target.key in asked)
            elif isinstance(decision, Wait):
                await self._wait(decision)

    async def _watch_restores(self, hold: LockHold, alive: set[str]) -> None:
        """A node of a restore in progress that stays down is counted as
        failed after RESTORE_NODE_GRACE, so the restore ends (failed: the
        service stays stopped until it is restored again or cancelled)."""
        now = time.time()
        for item in (await self._store.list(RESTORES)).items:
            record = RestoreRecord.decode(item.value)
            if not record.in_progress:
                continue
            lost = []
            for node in record.nodes:
                key = (record.run_id, node)
                if node in alive or node in record.done or node in record.errors:
                    self._down_since.pop(key, None)
                elif now - self._down_since.setdefault(key, now) >= RESTORE_NODE_GRACE:
                    lost.append(node)
            if not lost:
                continue
            for node in lost:
                record.errors[node] = f"{node} was down for {RESTORE_NODE_GRACE:g}s"
            if len(record.done) + len(record.errors) >= len(record.nodes):
                record.state, record.finished_at = "failed", now
            guards = [
                Compare(lock_key(LEADER_LOCK), "create", "==", hold.fencing_token),
                Compare(item.key, "mod", "==", item.mod_revision),
            ]
            if (await self._store.txn(guards, [Put(item.key, record.encode())])).succeeded:
                await self._journal.record(
                    "restore-failed", f"{record.service}/{record.volume}",
                    f"{', '.join(lost)} down: its copy is not restored"
                    + ("; the service stays stopped (restore again, or cancel)"
                       if record.state == "failed" else ""),
                )  # fmt: skip

    async def _active_nodes(
        self, spec: ClusterSpec, targets: dict[BackupTarget, Scheduled]
    ) -> dict[str, str]:
        """Service -> the node holding its active copy: the active lock's holder
        (active-passive), else instance 0's node."""
        services = {t.service for t in targets if t.kind == "volume"}
        out: dict[str, str] = {}
        assignments: dict[str, str] | None = None
        for service in sorted(services):
            spec_service = spec.services.get(service)
            if spec_service is None:
                continue
            if spec_service.mode == "active-passive":
                holder = await self._store.lock_holder(active_lock(service))
                if holder is not None:
                    out[service] = holder.holder.split("/", 1)[0]  # node/instance
                continue
            if assignments is None:
                assignments = {}
                for item in (await self._store.list(ASSIGN)).items:
                    record = AssignmentRecord.decode(item.value)
                    assignments[record.instance] = record.node
            node = assignments.get(f"{service}-0")
            if node is not None:
                out[service] = node
        return out

    async def _start(
        self, hold: LockHold, start: Start, revisions: dict[str, int], asked: bool
    ) -> None:
        key = start.target.key
        run = BackupRun(
            target=key,
            run_id=secrets.token_hex(4),
            node=start.node,
            started_at=time.time(),
            why="asked for" if asked and start.retry_of is None else start.why,
            retry_of=start.retry_of,
        )
        guards = [Compare(lock_key(LEADER_LOCK), "create", "==", hold.fencing_token)]
        if start.retry_of is not None:
            guards.append(Compare(backup_run_key(key), "mod", "==", revisions[start.retry_of]))
        else:
            guards.append(Compare(backup_run_key(key), "create", "==", 0))
        ops: list[Put | Delete] = [Put(backup_run_key(key), run.encode())]
        if asked:
            ops.append(Delete(backup_asked_key(key)))
        if not (await self._store.txn(guards, ops)).succeeded:
            return
        self._said.pop(key, None)
        await self._journal.record(
            "backup-started", key, f"on {start.node}: {run.why}", run=run.run_id, node=start.node
        )

    async def _wait(self, wait: Wait) -> None:
        key = wait.target.key
        if self._said.get(key) == wait.reason:
            return
        self._said[key] = wait.reason
        await self._journal.record("backup-waiting", key, wait.reason)


# -- every agent's runner -------------------------------------------------------------


class BackupRunner:
    """Carries out the runs the leader gives this node."""

    def __init__(
        self,
        store: Store,
        journal: EventJournal,
        node: str,
        spec: ClusterSpec,
        data_dir: Path,
        snapshot_hook: SnapshotHook,
        ca_files: Callable[[], tuple[Path, Path | None] | None],
    ) -> None:
        self._store = store
        self._journal = journal
        self._node = node
        self._spec = spec
        self._data_dir = data_dir
        self._snapshot_hook = snapshot_hook
        self._ca_files = ca_files
        self._tasks = KeyedTasks()
        """Runs in progress here, by run id."""

    async def run(self) -> None:
        signal = ChangeSignal(self._store, BACKUP_RUNS)
        try:
            await run_level_triggered(signal, self.step, "backup runner", every=RUNNER_RESYNC)
        finally:
            await self._tasks.stop()

    async def step(self) -> None:
        for item in (await self._store.list(BACKUP_RUNS)).items:
            run = BackupRun.decode(item.value)
            if run.node != self._node or run.run_id in self._tasks:
                continue
            self._tasks.start(run.run_id, self._carry_out(run, item.mod_revision), run.target)

    async def _carry_out(self, run: BackupRun, revision: int) -> None:
        spec = await read_spec(self._store, self._spec)
        result = BackupResultRecord(
            target=run.target, run_id=run.run_id, node=self._node,
            started_at=time.time(), finished_at=0.0, ok=False,
        )  # fmt: skip
        try:
            target = BackupTarget.from_key(run.target)
            repository = spec.backups.repositories[target.repository]
            restic = Restic(
                repository_of(repository),
                cache_dir=self._data_dir / "restic-cache",
                timeout=RUN_TIMEOUT,
            )
            if target.kind != "check":
                await restic.init()
            if run.retry_of is not None:
                with contextlib.suppress(ResticError):
                    await restic.unlock()
            for attempt in (1, 2):
                try:
                    await self._target(spec, target, repository, restic, result)
                    break
                except ResticError as exc:
                    # a lock left by a restic killed with its agent: `unlock`
                    # removes it once restic takes it as stale (at once on
                    # this host, after 30 minutes from another), then once more
                    if exc.kind is not ErrorKind.LOCKED or attempt == 2:
                        raise
                    with contextlib.suppress(ResticError):
                        await restic.unlock()
            result.ok = True
        except (
            ResticError,
            RepositoryConfigError,
            StoreError,
            OSError,
            KeyError,
            ValueError,
        ) as exc:
            result.error = _one_line(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: said, and the run ends as failed
            log.exception("backup run %s failed", run.target)
            result.error = _one_line(exc)
        result.finished_at = time.time()
        await self._finish(run, revision, result)

    async def _target(
        self,
        spec: ClusterSpec,
        target: BackupTarget,
        repository: RepositorySpec,
        restic: Restic,
        result: BackupResultRecord,
    ) -> None:
        if target.kind == "volume":
            await self._volume(spec, target, restic, result)
        elif target.kind == "cluster":
            await self._cluster(spec, target, restic, result)
        else:
            check = repository.check
            subset = check.read_data_subset if check is not None else None
            checked = await restic.check(read_data_subset=subset)
            if not checked.ok:
                raise ValueError("restic check found damage: " + "; ".join(checked.errors[:3]))

    async def _volume(
        self, spec: ClusterSpec, target: BackupTarget, restic: Restic, result: BackupResultRecord
    ) -> None:
        service = spec.services[target.service]
        volume = service.volumes[target.volume]
        assert volume.backup is not None
        path = volume_dir(self._data_dir, target.service, target.volume, volume)
        if not path.is_dir():
            raise OSError(f"{path} does not exist on {self._node}")
        hook = self._snapshot_hook(target.service, target.volume)
        if hook is not None:
            code = await hook()
            if code != 0:
                await self._journal.record(
                    "backup-snapshot-failed", target.key,
                    f"snapshot exited {code}; backing up the directory as it is",
                )  # fmt: skip
        await self._backup(spec, target, restic, path, result)
        forget = await restic.forget(
            keep_policy(volume.backup.keep),
            tags=target_tags(spec.cluster, target.key),
            prune=True,
        )
        result.kept, result.removed = len(forget.kept), len(forget.removed)

    async def _backup(
        self,
        spec: ClusterSpec,
        target: BackupTarget,
        restic: Restic,
        path: Path,
        result: BackupResultRecord,
    ) -> None:
        done = await restic.backup(
            ["."],
            cwd=path,
            tags=target_tags(spec.cluster, target.key),
            host=target_host(spec.cluster, target.key),
        )
        result.snapshot_id = done.snapshot_id
        result.files_new, result.files_changed = done.files_new, done.files_changed
        result.files_unmodified = done.files_unmodified
        result.data_added, result.total_bytes = done.data_added, done.total_bytes_processed
        if not done.complete:  # some files unreadable: not a good backup, and no forget
            problems = "; ".join(done.errors[:2]) or "some files could not be read"
            raise ValueError(f"snapshot {done.snapshot_id[:8]} is incomplete: {problems}")

    async def _cluster(
        self, spec: ClusterSpec, target: BackupTarget, restic: Restic, result: BackupResultRecord
    ) -> None:
        """The store's snapshot, the CA certificate, the spec as stored, and
        what they are (meta.json), as one snapshot; the CA key, when asked
        for, into the `ca_key` repository alone."""
        cluster = spec.backups.cluster
        assert cluster is not None
        snapshot = getattr(self._store, "snapshot", None)
        if snapshot is None:
            raise ValueError("the store is not etcd: it has no snapshot to back up")
        work = self._data_dir / "backup-cluster"
        await asyncio.to_thread(shutil.rmtree, work, True)
        await asyncio.to_thread(work.mkdir, parents=True)
        try:
            size = await snapshot(work / "etcd.db")
            files = self._ca_files()
            if files is not None:
                await asyncio.to_thread(shutil.copy, files[0], work / "ca.crt")
            stored = await self._store.get(SPEC_KEY)
            if stored is not None:
                await asyncio.to_thread((work / "spec.yaml").write_bytes, stored.value)
            meta = {
                "cluster": spec.cluster,
                "taken_at": time.time(),
                "node": self._node,
                "store_bytes": size,
                "nodes": [n.name for n in spec.nodes],
            }
            await asyncio.to_thread((work / "meta.json").write_text, json.dumps(meta, indent=1))
            await self._backup(spec, target, restic, work, result)
            forget = await restic.forget(
                keep_policy(cluster.keep), tags=target_tags(spec.cluster, target.key), prune=True
            )
            result.kept, result.removed = len(forget.kept), len(forget.removed)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        if cluster.ca_key is not None:
            await self._ca_key(spec, cluster.ca_key)

    async def _ca_key(self, spec: ClusterSpec, repository: str) -> None:
        files = self._ca_files()
        if files is None or files[1] is None or not files[1].is_file():
            raise ValueError(f"ca_key asked for, but {self._node} cannot read the CA key")
        work = self._data_dir / "backup-ca-key"
        await asyncio.to_thread(shutil.rmtree, work, True)
        await asyncio.to_thread(work.mkdir, mode=0o700, parents=True)
        try:
            await asyncio.to_thread(shutil.copy, files[1], work / "ca.key")
            await asyncio.to_thread(os.chmod, work / "ca.key", 0o600)
            restic = Restic(
                repository_of(spec.backups.repositories[repository]),
                cache_dir=self._data_dir / "restic-cache",
                timeout=RUN_TIMEOUT,
            )
            await restic.init()
            await restic.backup(
                ["."],
                cwd=work,
                tags=target_tags(spec.cluster, CA_KEY_TARGET),
                host=target_host(spec.cluster, CA_KEY_TARGET),
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _finish(self, run: BackupRun, revision: int, result: BackupResultRecord) -> None:
        previous = await self._store.get(backup_last_key(run.target))
        if result.ok:
            result.last_good_at = result.finished_at
        elif previous is not None:
            result.last_good_at = BackupResultRecord.decode(previous.value).last_good_at
        guard = Compare(backup_run_key(run.target), "mod", "==", revision)
        ops: list[Put | Delete] = [
            Put(backup_last_key(run.target), result.encode()),
            Delete(backup_run_key(run.target)),
        ]
        for attempt in range(FINISH_TRIES):
            try:
                done = (await self._store.txn([guard], ops)).succeeded
                break
            except StoreError:
                await asyncio.sleep(1.0 + attempt)
        else:
            done = False
        if not done:
            log.warning("backup run %s of %s ended after it was given elsewhere", run.run_id,
                        run.target)  # fmt: skip
            return
        took = result.finished_at - result.started_at
        if not result.ok:
            kind = "check-failed" if run.target.startswith("check/") else "backup-failed"
            await self._journal.record(kind, run.target, result.error, run=run.run_id)
        elif run.target.startswith("check/"):
            await self._journal.record("check-done", run.target, f"in {took:.1f}s")
        else:
            await self._journal.record(
                "backup-done", run.target,
                f"snapshot {result.snapshot_id[:8]} in {took:.1f}s: {result.files_new} new, "
                f"{result.files_changed} changed, {result.files_unmodified} unmodified files; "
                f"{_size(result.data_added)} added of {_size(result.total_bytes)} read; "
                f"kept {result.kept}, removed {result.removed}",
                run=run.run_id, snapshot=result.snapshot_id, data_added=result.data_added,
                seconds=round(took, 2),
            )  # fmt: skip


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
