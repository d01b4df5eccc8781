"""The mirror: one replicated volume of this node's active instance, sent to
the nodes of the service's other instances.

inotify (through watchfiles) says when the directory changed; a round then
runs the volume's `snapshot` command if it has one and pushes the directory to
every target with rsync's delta transfer (volumes/transport.py), at most one
round at a time. A target whose push failed is retried, with backoff, until it
succeeds; every `MIRROR_RESYNC_INTERVAL` a round runs even without a change
seen, which brings back a standby that was away and repairs what inotify
missed. Each completed push writes that copy's generation (the active's
fencing token, the round's number, when the round started) to the store,
where a failover reads which standby has the freshest copy (decide/volumes.py).

A planned handover calls `flush`: one more round after the process has
stopped, waited for, so the standby that takes over has every last change.

What the status shows per copy (lag, bytes behind, last completed transfer,
a first copy's progress, the last checksum verification) is written with the
generation, at most once a second per copy (`MIRROR_PUBLISH_INTERVAL`).
Every `verify` a copy's transfer compares whole-file checksums: a file sent
then that had not changed at the source since the copy's last transfer had
diverged behind rsync's back; it is repaired by that transfer and reported
(event `volume-diverged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ninefold import defaults
from ninefold.spec.models import VolumeSpec
from ninefold.state.keys import NODES, STATUS, copy_key, last_segment, volume_copies
from ninefold.state.records import CopyRecord, InstanceStatus, NodeRecord
from ninefold.store.base import Store, StoreError
from ninefold.tasks import cancel_and_wait, wait_event

log = logging.getLogger("ninefold.volumes")


@dataclass(frozen=True)
class Target:
    node: str
    address: str
    port: int


class PushOutcome(Protocol):
    ok: bool
    bytes_sent: int
    seconds: float
    error: str
    sent_files: tuple[str, ...]


@dataclass(frozen=True)
class PushOptions:
    checksum: bool = False
    """Compare whole-file checksums (and name the files sent): a verification."""
    progress: Callable[[int], None] | None = None
    """Called with the bytes sent so far: a first copy (seeding)."""


Push = Callable[[Path, Target, str, PushOptions], Awaitable[PushOutcome]]
"""Send the directory to a target under a volume id; never raises for a failed transfer."""
Snapshot = Callable[[], Awaitable[int]]
"""Run the volume's snapshot command; its exit code."""
Record = Callable[..., Awaitable[object]]
"""The event journal's `record(kind, subject, reason, **data)`."""


@dataclass
class TargetState:
    synced_seq: int = 0
    synced_started: float = 0.0
    """Monotonic start of the last round that reached it."""
    synced_wall: float = 0.0
    completed_wall: float = 0.0
    bytes_sent: int = 0
    seconds: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    seeding: bool = False
    seed_done: int = 0
    seed_total: int = 0
    seed_since: float = 0.0
    """Wall-clock start of the first copy under way."""
    verified_mono: float = field(default_factory=time.monotonic)
    verified_wall: float = 0.0
    diverged: int = 0


async def targets_of(store: Store, service: str, me: str, volume_port: int) -> list[Target]:
    """The living nodes, other than this one, that run an instance of `service`."""
    nodes = {
        last_segment(item.key): NodeRecord.decode(item.value)
        for item in (await store.list(NODES)).items
    }
    found: dict[str, Target] = {}
    for item in (await store.list(STATUS)).items:  # one read, not one per node
        status = InstanceStatus.decode(item.value)
        record = nodes.get(status.node)
        if status.service != service or status.state == "failed" or record is None:
            continue
        if status.node != me:
            port = record.volume_port or volume_port
            found[status.node] = Target(status.node, record.address, port)
    return [found[n] for n in sorted(found)]


def tree_size(directory: Path) -> int:
    """Bytes in the regular files under `directory` (blocking: run it in a thread)."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class VolumeMirror:
    def __init__(
        self,
        *,
        store: Store,
        node: str,
        service: str,
        name: str,
        volume: VolumeSpec,
        directory: Path,
        token: int,
        push: Push,
        record: Record,
        targets: Callable[[], Awaitable[list[Target]]],
        snapshot: Snapshot | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self.service = service
        self.name = name
        self.volume = volume
        self.directory = directory
        self.token = token
        self._push = push
        self._record = record
        self._targets = targets
        self._snapshot = snapshot
        self.seq = 0
        self.states: dict[str, TargetState] = {}
        self._changed_at: float | None = time.monotonic()
        """When a change not yet sent everywhere was first seen (None: all sent)."""
        self._changes: dict[str, tuple[float, float]] = {}
        """Changed paths (relative) -> (monotonic, wall) when last seen changing,
        kept until every target has a transfer that started after."""
        self._changes_overflowed = False
        self._known: dict[str, CopyRecord] = {}
        """The copies' records as the store had them when this mirror started."""
        self._source_seq, self._source_wall = 0, 0.0
        """The last round that completed (its targets' records are written with it)."""
        self._written: dict[str, bytes] = {}
        """node -> the record last written for it (without written_at)."""
        self.copies: dict[str, CopyRecord] = {}
        """node -> its copy's record as last worked out (once a second), for /metrics."""
        self._wake = asyncio.Event()
        self._publish_now = asyncio.Event()
        self._round_lock = asyncio.Lock()
        self._in_flight: dict[str, asyncio.Task[bool]] = {}
        """Transfers still running after their round went on (a slow or hung
        target holds up only its own copy, never the others')."""
        self._late: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def volume_id(self) -> str:
        """How a transfer names the volume to the receiving agent: the service,
        the volume, and the sender's fencing token (an older active's pushes
        are refused)."""
        return f"{self.service}/{self.name}@{self.token}"

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(StoreError):
            listing = await self.store.list(volume_copies(self.service, self.name))
            for item in listing.items:
                record = CopyRecord.decode(item.value)
                self._known[record.node] = record
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"watch {self.volume_id}"),
            asyncio.create_task(self._loop(), name=f"mirror {self.volume_id}"),
            asyncio.create_task(self._publish_loop(), name=f"publish {self.volume_id}"),
        ]
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: no transfer of this active's is started after this
        returns, and one under way is cancelled (a fenced active must not
        overwrite a newer copy)."""
        self._stop.set()
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s: %s had died: %r", self.volume_id, task.get_name(), task.exception())
        # A fence stops the mirror: nothing here may keep it from going on.
        await cancel_and_wait(*self._tasks, *self._in_flight.values(), ignore_errors=True)
        self._tasks = []
        self._in_flight.clear()

    async def flush(self, timeout: float = defaults.MIRROR_FLUSH_TIMEOUT) -> bool:
        """Send everything now and wait until every target has it (a planned
        handover, after the process stopped); False when some target did not
        get it within `timeout`."""
        deadline = time.monotonic() + timeout
        self._changed_at = self._changed_at or time.monotonic()
        while time.monotonic() < deadline:
            await self._round(force=True)
            pending = [n for n, s in self.states.items() if s.synced_seq != self.seq]
            if not pending:
                with contextlib.suppress(StoreError):
                    await self._publish()
                return True
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return False

    def lag(self) -> float:
        """Seconds the oldest change not yet everywhere has waited (0: in sync)."""
        if self._changed_at is None:
            return 0.0
        return time.monotonic() - self._changed_at

    # -- doing -------------------------------------------------------------------------
    async def _watch(self) -> None:
        from watchfiles import awatch

        while not self._stop.is_set():
            try:
                async for changes in awatch(
                    self.directory,
                    stop_event=self._stop,
                    debounce=int(defaults.MIRROR_DEBOUNCE * 1000),
                    step=25,
                    recursive=True,
                ):
                    now, wall = time.monotonic(), time.time()
                    if self._changed_at is None:
                        self._changed_at = now
                    self._note(changes, now, wall)
                    self._wake.set()
            except (OSError, RuntimeError) as exc:
                log.warning("%s: watching %s failed: %s", self.volume_id, self.directory, exc)
                await asyncio.sleep(1.0)

    def _note(self, changes: Iterable[tuple[object, str]], now: float, wall: float) -> None:
        if self._changes_overflowed:
            return
        for _kind, path in changes:
            with contextlib.suppress(ValueError):
                self._changes[os.path.relpath(path, self.directory)] = (now, wall)
        if len(self._changes) > defaults.MIRROR_TRACKED_CHANGES:
            self._changes.clear()
            self._changes_overflowed = True  # until every target has a later transfer

    async def _loop(self) -> None:
        while True:
            await wait_event(self._wake, self._until_due())
            self._wake.clear()
            try:
                await self._round(force=False)
            except StoreError as exc:
                log.debug("%s: round put off: %s", self.volume_id, exc)
                self._wake.set()
                await asyncio.sleep(0.5)
            retry = [s.retry_at for s in self.states.values() if s.failures]
            if retry:
                delay = max(0.05, min(retry) - time.monotonic())
                asyncio.get_running_loop().call_later(delay, self._wake.set)

    def _until_due(self) -> float:
        """Seconds until a round is due without a change: the periodic one, or
        a copy's verification."""
        wait = defaults.MIRROR_RESYNC_INTERVAL
        now = time.monotonic()
        for state in self.states.values():
            wait = min(wait, state.verified_mono + self.volume.verify - now)
        return max(0.05, wait)

    async def _round(self, force: bool) -> None:
        async with self._round_lock:
            targets = await self._targets()
            now = time.monotonic()
            for gone in set(self.states) - {t.node for t in targets}:
                del self.states[gone]
                if gone in self._in_flight:
                    self._in_flight[gone].cancel()
            due = []
            for target in targets:
                state = self.states.setdefault(target.node, TargetState())
                if target.node in self._in_flight:
                    continue  # still sending it an earlier round
                if state.failures and now < state.retry_at and not force:
                    continue
                stale = state.synced_seq == 0 or self._changed_at is not None
                periodic = now - state.synced_started >= defaults.MIRROR_RESYNC_INTERVAL
                verify = now - state.verified_mono >= self.volume.verify
                if force or stale or periodic or verify:
                    due.append(target)
            if not due:
                if self._changed_at is not None and not targets:
                    self._changed_at = None  # nobody to send to
                return
            changed_at = self._changed_at
            self._changed_at = None  # changes from now on wait for the next round
            started, wall = time.monotonic(), time.time()
            if self._snapshot is not None:
                code = await self._snapshot()
                if code != 0:
                    await self._record(
                        "volume-snapshot-failed", self.volume_id,
                        f"snapshot exited {code}; sending the directory as it is",
                    )  # fmt: skip
            self.seq += 1
            seq = self.seq
            sends = []
            for target in due:
                option = await self._options(target, started)
                send = asyncio.create_task(
                    self._send(target, option, seq, started, wall), name=f"push {target.node}"
                )
                self._in_flight[target.node] = send
                sends.append(send)
            done, late = await asyncio.wait(sends, timeout=defaults.MIRROR_ROUND_WAIT)
            self._late.update(node for node, t in self._in_flight.items() if t in late)
            failed = bool(late) or any(
                t.cancelled() or t.exception() is not None or not t.result() for t in done
            )
            if seq > self._source_seq:
                self._source_seq, self._source_wall = seq, wall
            self._forget_sent()
            if failed and changed_at is not None:
                self._unsent_since(changed_at)

    async def _send(
        self, target: Target, option: PushOptions, seq: int, started: float, wall: float
    ) -> bool:
        """One target's transfer of a round, and what follows from it; True when it got it."""
        try:
            result = await self._push(self.directory, target, self.volume_id, option)
            if target.node not in self.states:
                return False  # it went away meanwhile
            return await self._after(target, option, result, seq, started, wall)
        except StoreError as exc:
            log.debug("%s: after the push to %s: %s", self.volume_id, target.node, exc)
            return False
        finally:
            if self._in_flight.get(target.node) is asyncio.current_task():
                del self._in_flight[target.node]
            if target.node in self._late:
                self._late.discard(target.node)
                self._wake.set()  # it outlived its round: the loop looks again

    async def _options(self, target: Target, started: float) -> PushOptions:
        state = self.states[target.node]
        known = self._known.get(target.node)
        if state.synced_seq == 0 and (known is None or not known.complete):
            if not state.seeding:
                state.seeding, state.seed_since = True, time.time()
            state.seed_total = await asyncio.to_thread(tree_size, self.directory)

            def progress(done: int) -> None:
                state.seed_done = done

            return PushOptions(progress=progress)
        if started - state.verified_mono >= self.volume.verify:
            return PushOptions(checksum=True)
        return PushOptions()

    def _unsent_since(self, changed_at: float) -> None:
        """A change from `changed_at` did not reach every target: keep it pending."""
        pending = self._changed_at
        self._changed_at = changed_at if pending is None else min(changed_at, pending)

    def _forget_sent(self) -> None:
        """Drop the changes every target has a transfer started after."""
        if not self.states:
            self._changes.clear()
            return
        oldest = min(s.synced_started for s in self.states.values())
        for path in [p for p, (seen, _) in self._changes.items() if seen < oldest]:
            del self._changes[path]
        if self._changes_overflowed and oldest > 0:
            self._changes_overflowed = False

    async def _after(
        self,
        target: Target,
        option: PushOptions,
        result: PushOutcome,
        seq: int,
        started: float,
        wall: float,
    ) -> bool:
        state = self.states[target.node]
        if not result.ok:
            state.failures += 1
            state.retry_at = time.monotonic() + min(
                defaults.MIRROR_RETRY_MAX, 0.1 * 2 ** min(state.failures, 5)
            )
            if state.failures == 1 or result.error != state.last_error:
                await self._record(
                    "volume-sync-failed", self.volume_id,
                    f"to {target.node}: {result.error}; retrying until it succeeds",
                    node=target.node,
                )  # fmt: skip
            state.last_error = result.error
            return False
        if state.failures:
            await self._record(
                "volume-sync-recovered", self.volume_id,
                f"to {target.node} after {state.failures} failed transfer(s)",
                node=target.node,
            )  # fmt: skip
        if option.checksum:
            await self._verified(target, state, result)
        first = state.synced_seq == 0
        state.failures, state.last_error = 0, ""
        state.synced_seq, state.synced_started, state.synced_wall = seq, started, wall
        state.completed_wall, state.bytes_sent, state.seconds = (
            time.time(), result.bytes_sent, result.seconds,
        )  # fmt: skip
        if state.seeding:
            state.seeding = False
            await self._record(
                "volume-seeded", self.volume_id,
                f"first copy on {target.node}: {state.seed_total} bytes in {result.seconds:.1f}s",
                node=target.node, bytes=state.seed_total, seconds=round(result.seconds, 3),
            )  # fmt: skip
        if first:
            self._publish_now.set()  # an instance may be waiting for its first copy
        return True

    async def _verified(self, target: Target, state: TargetState, result: PushOutcome) -> None:
        """A checksum transfer completed: the files it sent that had not changed
        at the source since the copy's last transfer had diverged."""
        state.verified_mono, state.verified_wall = time.monotonic(), time.time()
        if self._changes_overflowed or state.synced_seq == 0:
            state.diverged = 0
            return
        since = state.synced_started
        diverged = sorted(
            path
            for path in result.sent_files
            if path not in self._changes or self._changes[path][0] < since
        )
        state.diverged = len(diverged)
        if diverged:
            self._publish_now.set()
            shown = ", ".join(diverged[:5]) + (", ..." if len(diverged) > 5 else "")
            await self._record(
                "volume-diverged", self.volume_id,
                f"{len(diverged)} file(s) on {target.node} differed from the source though "
                f"unchanged there since the last transfer; repaired: {shown}",
                node=target.node, files=diverged[:100], count=len(diverged),
            )  # fmt: skip

    # -- publishing --------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        while True:
            await wait_event(self._publish_now, defaults.MIRROR_PUBLISH_INTERVAL)
            self._publish_now.clear()
            try:
                await self._publish()
            except StoreError as exc:
                log.debug("%s: copy records not written: %s", self.volume_id, exc)

    async def _publish(self) -> None:
        """Write each copy's record that changed since it was last written."""
        # The source's own record is never behind a copy's: a copy of round N
        # means the source had all of round N (a later round may still be
        # waiting for a slow target).
        for state in self.states.values():
            if state.synced_seq > self._source_seq:
                self._source_seq, self._source_wall = state.synced_seq, state.synced_wall
        records = [self._own_record()] if self._source_seq else []
        sizes = await asyncio.to_thread(self._sizes)
        for node, state in list(self.states.items()):
            record = self._record_of(node, state, sizes)
            if record is not None:
                records.append(record)
        self.copies = {r.node: r for r in records if r.node != self.node}
        for record in records:
            raw = record.model_dump_json(exclude={"written_at"}).encode()
            if self._written.get(record.node) == raw:
                continue
            await self.store.put(copy_key(self.service, self.name, record.node), record.encode())
            self._written[record.node] = raw

    def _sizes(self) -> dict[str, int]:
        sizes = {}
        for path in list(self._changes):
            try:
                sizes[path] = os.lstat(self.directory / path).st_size
            except OSError:
                sizes[path] = 0  # deleted: nothing to send but the deletion
        return sizes

    def _own_record(self) -> CopyRecord:
        return CopyRecord(
            node=self.node, source=self.node, token=self.token, seq=self._source_seq,
            synced_at=self._source_wall, completed_at=self._source_wall,
        )  # fmt: skip

    def _record_of(self, node: str, state: TargetState, sizes: dict[str, int]) -> CopyRecord | None:
        pending = [
            (wall, sizes.get(path, 0))
            for path, (seen, wall) in self._changes.items()
            if seen >= state.synced_started
        ]
        behind_since = min((w for w, _ in pending), default=0.0)
        bytes_behind = sum(size for _, size in pending)
        if state.seeding:
            behind_since = behind_since or state.seed_since
            bytes_behind = max(bytes_behind, state.seed_total - state.seed_done)
        live: dict[str, Any] = dict(
            behind_since=behind_since, bytes_behind=bytes_behind, seeding=state.seeding,
            seed_done=state.seed_done, seed_total=state.seed_total,
            verified_at=state.verified_wall, diverged=state.diverged, error=state.last_error,
        )  # fmt: skip
        if state.synced_seq:
            return CopyRecord(
                node=node, source=self.node, token=self.token, seq=state.synced_seq,
                synced_at=state.synced_wall, completed_at=state.completed_wall,
                bytes_sent=state.bytes_sent, seconds=state.seconds, **live,
            )  # fmt: skip
        known = self._known.get(node)
        if known is not None and known.complete:  # its generation stays until this mirror sends
            return known.model_copy(update=live)
        if state.seeding or state.last_error:
            return CopyRecord(node=node, source=self.node, token=self.token, seq=0,
                              synced_at=0.0, **live)  # fmt: skip
        return None


def parse_volume_id(volume_id: str) -> tuple[str, str, int] | None:
    """`service/volume@token` as (service, volume, token); None if malformed."""
    path, sep, token = volume_id.rpartition("@")
    service, slash, name = path.partition("/")
    if not sep or not slash or not token.isdigit() or not service or not name:
        return None
    return service, name, int(token)
