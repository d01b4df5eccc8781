"""One instance's replicated volumes: the mirrors it runs while its copy is
the source, the pushes it accepts while it is not, a returning old source's
copy set aside, and a replicated instance's first copy waited for.

Active-passive: the active's copy is the source (InstanceRunner starts and
stops the mirrors on promotion, fencing and handover). Replicated: instance
0's copy is the source (decide/volumes.py replicated_source); every instance
asks every `REPLICATED_SOURCE_CHECK` whether its node should send, and an
instance placed on a node with no copy waits for its first one before its
process starts (status `seeding`, with progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ninefold import defaults
from ninefold.decide.volumes import (
    behind,
    fresher_elsewhere,
    freshest,
    next_source_token,
    replicated_source,
)
from ninefold.spec import ServiceSpec
from ninefold.spec.models import VolumeSpec, render
from ninefold.state.keys import ASSIGN, NODES, copy_key, last_segment, volume_copies
from ninefold.state.records import AssignmentRecord, CopyRecord
from ninefold.store.base import StoreError
from ninefold.supervisor import run_hook
from ninefold.volumes.mirror import (
    Push,
    PushOptions,
    PushOutcome,
    Snapshot,
    Target,
    VolumeMirror,
    targets_of,
)
from ninefold.volumes.transport import push

if TYPE_CHECKING:
    from ninefold.agent.instance import NodeContext

log = logging.getLogger("ninefold.volumes")


def ordinal_of(instance: str) -> int | None:
    """`web-2` -> 2 (instance names are `<service>-<ordinal>`)."""
    _, _, number = instance.rpartition("-")
    return int(number) if number.isdigit() else None


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover


class InstanceVolumes:
    def __init__(
        self,
        ctx: NodeContext,
        service: str,
        instance: str,
        spec: ServiceSpec,
        values: dict[str, str],
        hook_env: Callable[[], dict[str, str]],
    ) -> None:
        self.ctx = ctx
        self.service = service
        self.instance = instance
        self.spec = spec
        self.values = values
        self._hook_env = hook_env
        self.mirrors: dict[str, VolumeMirror] = {}
        """Volume -> its mirror, while this node's copy is the source."""
        self.highest_token = 0
        """The greatest token seen (active lock, or an accepted push): pushes
        from an older source are refused."""
        self._was_source: dict[str, int] = {}
        """Replicated volumes whose copy here was last written by this node as
        the source (volume -> its token): what a newer source did not get."""
        self._copies_known = False
        """Set once `_was_source` is read: no push is taken before (it could
        land on a copy that must be set aside first)."""
        self._background: set[asyncio.Task[object]] = set()
        self.seeding_detail = ""
        """What a replicated instance waiting for its first copy is waiting for."""
        self._refused = ""
        """Why the last push was refused (said once in the log)."""

    @property
    def replicated(self) -> list[tuple[str, VolumeSpec]]:
        return [(n, v) for n, v in sorted(self.spec.volumes.items()) if v.replicated]

    def directory(self, volume: str) -> Path:
        return Path(self.values[f"volume.{volume}"])

    # -- the source ------------------------------------------------------------------
    async def start_mirrors(self, token: int, volumes: list[str] | None = None) -> None:
        """This node's copy becomes the source: send it to the other instances'
        nodes, and say how far behind it is when a fresher copy died."""
        for name, volume in self.replicated:
            if volumes is not None and name not in volumes:
                continue
            await self.stop_mirrors([name])
            with contextlib.suppress(StoreError):
                listing = await self.ctx.store.list(volume_copies(self.service, name))
                late = behind(
                    self.ctx.node.name, [CopyRecord.decode(i.value) for i in listing.items]
                )
                if late is not None:
                    await self.ctx.journal.record(
                        "volume-behind", f"{self.service}/{name}",
                        f"{self.instance} became the source with data {late.seconds:.1f}s "
                        f"({late.transfers} transfer(s)) behind the freshest copy, which is gone",
                        seconds=round(late.seconds, 3), transfers=late.transfers,
                    )  # fmt: skip
            mirror = VolumeMirror(
                store=self.ctx.store,
                node=self.ctx.node.name,
                service=self.service,
                name=name,
                volume=volume,
                directory=self.directory(name),
                token=token,
                push=self._pusher(volume),
                record=self.ctx.journal.record,
                targets=functools.partial(
                    targets_of, self.ctx.store, self.service, self.ctx.node.name,
                    self.ctx.volume_port,
                ),
                snapshot=self._snapshotter(volume),
            )  # fmt: skip
            await mirror.start()
            self.mirrors[name] = mirror
            # Until a handover completes, this copy may hold what no other has:
            # a newer source's first push sets it aside (a fence, a partition).
            self._was_source[name] = token

    async def stop_mirrors(self, volumes: list[str] | None = None) -> None:
        """Stop sending at once (a fenced active must not overwrite a newer copy)."""
        for name in list(self.mirrors):
            if volumes is None or name in volumes:
                await self.mirrors.pop(name).stop()

    async def hand_over(self, reason: str) -> None:
        """A planned handover: the last changes reach the other copies before
        the source lets go (its process has stopped writing)."""
        for name, mirror in self.mirrors.items():
            started = time.monotonic()
            done = await mirror.flush()
            took = time.monotonic() - started
            if done:  # every copy has all of it: nothing to set aside later
                self._was_source.pop(name, None)
            await self.ctx.journal.record(
                "volume-handed-over" if done else "volume-handover-incomplete",
                mirror.volume_id.rpartition("@")[0],
                f"{reason}: last changes {'sent' if done else 'NOT all sent'} in {took:.2f}s",
                seconds=round(took, 3),
            )

    def _pusher(self, volume: VolumeSpec) -> Push:
        tls_dir = self.ctx.tls_dir

        async def push_to(
            source: Path, target: Target, volume_id: str, options: PushOptions
        ) -> PushOutcome:
            seeding = options.progress is not None
            return await push(
                source, target.address, target.port, volume_id,
                tls_dir=tls_dir, exclude=volume.exclude,
                timeout=defaults.MIRROR_SEED_TIMEOUT if seeding
                else defaults.MIRROR_TRANSFER_TIMEOUT,
                checksum=options.checksum, list_sent=options.checksum,
                progress=options.progress,
            )  # fmt: skip

        return push_to

    def snapshot_hook(self, name: str) -> Snapshot | None:
        """The named volume's `snapshot` hook, run as this instance runs it
        (for a backup; None when the volume has none)."""
        volume = self.spec.volumes.get(name)
        return self._snapshotter(volume) if volume is not None else None

    def _snapshotter(self, volume: VolumeSpec) -> Snapshot | None:
        command = volume.snapshot
        if not command:
            return None

        async def snapshot() -> int:
            env = self._hook_env()
            env["NINEFOLD_HOOK"] = "snapshot"
            return await run_hook(
                [render(a, self.values) for a in command],
                env,
                render(self.spec.workdir, self.values) if self.spec.workdir else None,
                defaults.HOOK_TIMEOUT,
                self.ctx.log_dir / f"{self.instance}.log",
            )

        return snapshot

    # -- freshness -------------------------------------------------------------------
    async def _copies(self, volume: str) -> list[CopyRecord]:
        listing = await self.ctx.store.list(volume_copies(self.service, volume))
        return [CopyRecord.decode(i.value) for i in listing.items]

    async def _alive(self) -> list[str]:
        return [last_segment(i.key) for i in (await self.ctx.store.list(NODES)).items]

    async def fresher_copy_elsewhere(self) -> bool:
        """Whether a living node has a fresher copy of one of the service's
        replicated volumes than this node (one store read per volume)."""
        volumes = self.replicated
        if not volumes:
            return False
        alive = await self._alive()
        for name, _volume in volumes:
            if fresher_elsewhere(self.ctx.node.name, await self._copies(name), alive):
                return True
        return False

    async def load_own_copies(self) -> None:
        """Which replicated volumes this node last wrote as the source: a newer
        source's first push sets such a copy aside first. A store that does not
        answer is asked again (pushes are refused meanwhile)."""
        for name, _volume in self.replicated:
            for attempt in range(20):
                try:
                    item = await self.ctx.store.get(
                        copy_key(self.service, name, self.ctx.node.name)
                    )
                    break
                except StoreError:
                    await asyncio.sleep(0.1 * (attempt + 1))
            else:
                log.warning("%s: own copy of %s unknown; a newer push may overwrite it",
                            self.instance, name)  # fmt: skip
                continue
            if item is not None:
                record = CopyRecord.decode(item.value)
                if record.source == self.ctx.node.name:
                    self._was_source[name] = record.token
        self._copies_known = True

    # -- receiving -------------------------------------------------------------------
    def receives(self, volume: str, token: int, may_receive: bool) -> Path | None:
        """Where a push of `volume` from a source with `token` lands on this
        node; None when refused: `may_receive` is False (this instance is, or
        was and is frozen, the active), this node's copy is the source, or the
        sender's token is older than one this node has seen.

        A copy this node last wrote as an older source may hold changes the
        new source never received (it died, or was cut off): before the new
        source's first push it is moved aside, whole, into a dated directory
        next to the volume, never merged or deleted."""
        why = ""
        spec = self.spec.volumes.get(volume)
        if not may_receive:
            why = "this instance is (or was, and is frozen) the active"
        elif volume in self.mirrors:
            why = "this node's copy is the source"
        elif token < self.highest_token:
            why = f"token {token} is older than {self.highest_token}"
        elif not self._copies_known:
            why = "this node's own copy record is not read yet"  # the source retries
        elif spec is None or not spec.replicated:
            why = "no such replicated volume"
        if why:
            if why != self._refused:
                log.info("%s: pushes of %s refused: %s", self.instance, volume, why)
                self._refused = why
            return None
        self._refused = ""
        assert spec is not None
        self.highest_token = token
        directory = self.directory(volume)
        old = self._was_source.pop(volume, None)
        if old is not None and old < token and directory.is_dir() and any(directory.iterdir()):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = directory.with_name(f"{directory.name}.set-aside-{stamp}-token{old}")
            directory.rename(aside)
            directory.mkdir()
            log.warning("%s: %s set aside in %s", self.instance, volume, aside)
            reason = (
                f"{self.instance}'s copy from its time as the source (token {old}) "
                f"moved to {aside} before the new source's (token {token}) first transfer"
            )
            event = self.ctx.journal.record(
                "volume-set-aside", f"{self.service}/{volume}", reason, path=str(aside), token=old
            )
            task = asyncio.get_running_loop().create_task(event)
            self._background.add(task)  # the loop keeps tasks only weakly
            task.add_done_callback(self._background.discard)
        return directory

    # -- replicated services ---------------------------------------------------------
    async def source_loop(self) -> None:
        """A replicated service: send while this node's copy is the source."""
        while True:
            try:
                await self._check_source()
            except StoreError as exc:
                log.debug("%s: source not checked: %s", self.instance, exc)
            await asyncio.sleep(defaults.REPLICATED_SOURCE_CHECK)

    async def _check_source(self) -> None:
        # The leader's assignments, not the statuses: every instance is placed
        # at once, while their processes start one after the other (a
        # replica that started first must not take instance 0 for absent and
        # send its empty directory over instance 0's).
        placed: list[tuple[int, str]] = []
        for item in (await self.ctx.store.list(ASSIGN)).items:
            assignment = AssignmentRecord.decode(item.value)
            ordinal = ordinal_of(assignment.instance)
            if assignment.service == self.service and ordinal is not None:
                placed.append((ordinal, assignment.node))
        me = self.ctx.node.name
        for name, _volume in self.replicated:
            copies = await self._copies(name)
            source = replicated_source(placed, copies)
            if source == me and name not in self.mirrors:
                token = max(next_source_token(copies), self.highest_token + 1)
                log.info("%s: this node's copy of %s is the source now (token %d)",
                         self.instance, name, token)  # fmt: skip
                self.highest_token = token
                await self.start_mirrors(token, [name])
            elif source is not None and source != me and name in self.mirrors:
                log.info("%s: %s's copy on %s is the source now", self.instance, name, source)
                if await self.mirrors[name].flush(timeout=5.0):
                    self._was_source.pop(name, None)
                await self.stop_mirrors([name])

    async def needs_first_copy(self) -> list[str]:
        """The replicated volumes this node has no complete copy of while a
        living node has one: the instance waits for them before it starts."""
        missing = []
        alive = await self._alive()
        for name, _volume in self.replicated:
            copies = await self._copies(name)
            mine = next((c for c in copies if c.node == self.ctx.node.name), None)
            if mine is not None and mine.complete:
                continue
            if freshest(copies, [n for n in alive if n != self.ctx.node.name]):
                missing.append(name)
        return missing

    async def wait_first_copies(self, volumes: list[str], changed: Callable[[], None]) -> None:
        """Wait until this node's copy of each of `volumes` is complete,
        keeping `seeding_detail` up to date (`changed` is called when it
        changes). Gives up on a volume when no living node has a complete copy
        to send for `SEED_WAIT_ALONE` seconds (event `volume-seed-skipped`)."""
        pending = list(volumes)
        alone_since: float | None = None
        while pending:
            name = pending[0]
            try:
                copies = await self._copies(name)
                alive = await self._alive()
            except StoreError:
                await asyncio.sleep(0.5)
                continue
            mine = next((c for c in copies if c.node == self.ctx.node.name), None)
            if mine is not None and mine.complete:
                pending.pop(0)
                alone_since = None
                continue
            others = freshest(copies, [n for n in alive if n != self.ctx.node.name])
            if others:
                alone_since = None
            else:
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since >= defaults.SEED_WAIT_ALONE:
                    await self.ctx.journal.record(
                        "volume-seed-skipped", f"{self.service}/{name}",
                        f"{self.instance} starts without a copy: no living node has one to send",
                    )  # fmt: skip
                    pending.pop(0)
                    continue
            detail = self._seed_detail(name, mine, others)
            if detail != self.seeding_detail:
                self.seeding_detail = detail
                changed()
            await asyncio.sleep(0.5)
        self.seeding_detail = ""
        changed()

    @staticmethod
    def _seed_detail(name: str, mine: CopyRecord | None, others: set[str]) -> str:
        if mine is not None and mine.seeding and mine.seed_total:
            share = min(1.0, mine.seed_done / mine.seed_total)
            return (
                f"first copy of {name} from {mine.source}: {share:.0%} "
                f"({human_bytes(mine.seed_done)} of {human_bytes(mine.seed_total)})"
            )
        if others:
            return f"waiting for the first copy of {name} (held by {', '.join(sorted(others))})"
        return f"waiting for the first copy of {name} (no living node has one)"
