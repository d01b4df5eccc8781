"""Wake a level-triggered loop when anything under some prefixes changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ninefold import defaults
from ninefold.store.base import Store, StoreError
from ninefold.tasks import cancel_and_wait, wait_event

log = logging.getLogger("ninefold.changes")

STEP_RETRY = 1.0
"""Pause after a step failed with a bug, before it is tried again."""


class ChangeSignal:
    """Watches prefixes and sets a flag on every change.

    The loops that use it re-read the whole state they need, so a change lost
    while a watch was broken is healed by the next resync; the signal only
    makes reaction fast."""

    def __init__(self, store: Store, *prefixes: str) -> None:
        self._store = store
        self._prefixes = prefixes
        self._flag = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._flag.set()
        for prefix in self._prefixes:
            self._tasks.append(asyncio.create_task(self._watch(prefix), name=f"watch {prefix}"))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()

    def poke(self) -> None:
        self._flag.set()

    async def wait(self, timeout: float = defaults.RESYNC_INTERVAL) -> None:
        """Return when something changed, or after timeout (a resync)."""
        await wait_event(self._flag, timeout)
        self._flag.clear()

    async def _watch(self, prefix: str) -> None:
        """Each (re)made watch starts right after a revision read first, and the
        flag is set once that revision is known: the loop's next read is at
        that revision or later, and the watch sends everything after it. A
        change made while a broken watch was being made again (a store
        election) is therefore seen at once, not at the next resync."""
        while True:
            try:
                # A listing of nothing: only its revision is wanted.
                known = await self._store.list_serializable(prefix + "\x00")
                self._flag.set()
                watch = self._store.watch(prefix, known.revision + 1)
                async with contextlib.aclosing(watch) as events:
                    async for _event in events:
                        self._flag.set()
            except StoreError as exc:
                log.debug("watch %s broke: %s", prefix, exc)
            self._flag.set()
            await asyncio.sleep(0.2)


async def run_level_triggered(
    signal: ChangeSignal,
    step: Callable[[], Awaitable[None]],
    name: str,
    every: float = defaults.RESYNC_INTERVAL,
) -> None:
    """Run `step` on every change the signal sees and at least `every` seconds;
    a store error only skips a round (the next one reads everything again).
    Any other error is a bug: it is logged with its traceback and the round
    is tried again a second later, rather than ending the loop (and with it
    the agent, which stops when one of its loops ends)."""
    signal.start()
    try:
        while True:
            await signal.wait(every)
            try:
                await step()
            except StoreError as exc:
                log.debug("%s: %s", name, exc)
            except Exception:
                log.exception("%s failed; trying again", name)
                signal.poke()
                await asyncio.sleep(STEP_RETRY)
    finally:
        await signal.stop()
