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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ninefold import defaults
from ninefold.spec.models import VolumeSpec
from ninefold.state.keys import NODES, STATUS, copy_key, last_segment
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


Push = Callable[[Path, Target, str], Awaitable[PushOutcome]]
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
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""


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
        self._wake = asyncio.Event()
        self._round_lock = asyncio.Lock()
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
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"watch {self.volume_id}"),
            asyncio.create_task(self._loop(), name=f"mirror {self.volume_id}"),
        ]
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: no transfer of this active's is started after this
        returns, and one under way is cancelled (a fenced active must not
        overwrite a newer copy)."""
        self._stop.set()
        await cancel_and_wait(*self._tasks)
        self._tasks = []

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
                async for _changes in awatch(
                    self.directory,
                    stop_event=self._stop,
                    debounce=int(defaults.MIRROR_DEBOUNCE * 1000),
                    step=25,
                    recursive=True,
                ):
                    if self._changed_at is None:
                        self._changed_at = time.monotonic()
                    self._wake.set()
            except (OSError, RuntimeError) as exc:
                log.warning("%s: watching %s failed: %s", self.volume_id, self.directory, exc)
                await asyncio.sleep(1.0)

    async def _loop(self) -> None:
        while True:
            await wait_event(self._wake, defaults.MIRROR_RESYNC_INTERVAL)
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

    async def _round(self, force: bool) -> None:
        async with self._round_lock:
            targets = await self._targets()
            now = time.monotonic()
            for gone in set(self.states) - {t.node for t in targets}:
                del self.states[gone]
            due = []
            for target in targets:
                state = self.states.setdefault(target.node, TargetState())
                if state.failures and now < state.retry_at and not force:
                    continue
                stale = state.synced_seq == 0 or self._changed_at is not None
                periodic = now - state.synced_started >= defaults.MIRROR_RESYNC_INTERVAL
                if force or stale or periodic:
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
            results = await asyncio.gather(
                *(self._push(self.directory, target, self.volume_id) for target in due)
            )
            failed = False
            for target, result in zip(due, results, strict=True):
                failed |= not await self._after(target, result, seq, started, wall, changed_at)
            await self._write(CopyRecord(
                node=self.node, source=self.node, token=self.token, seq=seq, synced_at=wall,
            ))  # fmt: skip
            if failed and changed_at is not None:
                self._unsent_since(changed_at)

    def _unsent_since(self, changed_at: float) -> None:
        """A change from `changed_at` did not reach every target: keep it pending."""
        pending = self._changed_at
        self._changed_at = changed_at if pending is None else min(changed_at, pending)

    async def _after(
        self,
        target: Target,
        result: PushOutcome,
        seq: int,
        started: float,
        wall: float,
        changed_at: float | None,
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
        state.failures, state.last_error = 0, ""
        state.synced_seq, state.synced_started = seq, started
        await self._write(CopyRecord(
            node=target.node, source=self.node, token=self.token, seq=seq, synced_at=wall,
            bytes_sent=result.bytes_sent, seconds=result.seconds,
        ))  # fmt: skip
        return True

    async def _write(self, record: CopyRecord) -> None:
        with contextlib.suppress(StoreError):
            await self.store.put(copy_key(self.service, self.name, record.node), record.encode())


def parse_volume_id(volume_id: str) -> tuple[str, str, int] | None:
    """`service/volume@token` as (service, volume, token); None if malformed."""
    path, sep, token = volume_id.rpartition("@")
    service, slash, name = path.partition("/")
    if not sep or not slash or not token.isdigit() or not service or not name:
        return None
    return service, name, int(token)
