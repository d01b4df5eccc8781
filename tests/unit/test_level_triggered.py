"""A level-triggered loop (agent/changes.py) outlives a bug in one round."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import pytest

from ninefold.agent import changes
from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.store.base import StoreError, WatchEvent
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually


async def test_a_round_that_fails_is_tried_again_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "STEP_RETRY", 0.01)
    caplog.set_level(logging.ERROR, "ninefold.changes")
    rounds: list[int] = []

    async def step() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("a bug in round 1")
        if len(rounds) == 2:
            raise StoreError("the store did not answer")

    loop = asyncio.create_task(
        run_level_triggered(ChangeSignal(MemoryStore()), step, "test", every=0.05)
    )
    try:

        async def third() -> bool:
            return len(rounds) >= 3

        await eventually(third, 5, "a third round after a bug and a store error")
        assert not loop.done()
        assert "test failed; trying again" in caplog.text and "a bug in round 1" in caplog.text
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


class BreakingStore(MemoryStore):
    """Its first watch breaks when the test says so; later ones are real."""

    def __init__(self) -> None:
        super().__init__()
        self.break_now = asyncio.Event()
        self.watches = 0

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        self.watches += 1
        if self.watches == 1:
            return self._broken()
        return super().watch(prefix, start_revision)

    async def _broken(self) -> AsyncGenerator[WatchEvent, None]:
        await self.break_now.wait()
        raise StoreError("the watch broke (a store election)")
        yield  # an async generator, like the real one


async def test_a_change_made_while_a_broken_watch_is_made_again_wakes_the_loop() -> None:
    store = BreakingStore()
    signal = ChangeSignal(store, "assign/")
    signal.start()
    try:
        await eventually(lambda: store.watches == 1, 5, "the first watch")
        await signal.wait(1.0)  # the start: the loop reads everything once
        store.break_now.set()
        await signal.wait(5.0)  # the break: the loop reads again (the store may be down)
        # Written before the watch is made again (0.2 s after the break):
        await store.put("assign/n2/web-0", b"placed")
        assert store.watches == 1
        # ...it must wake the loop now, not at the next resync (10 s).
        await asyncio.wait_for(signal.wait(60.0), 5.0)
        await eventually(lambda: store.watches == 2, 5, "the watch made again")
    finally:
        await signal.stop()
