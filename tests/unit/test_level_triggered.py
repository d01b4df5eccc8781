"""A level-triggered loop (agent/changes.py) outlives a bug in one round."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ninefold.agent import changes
from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.store.base import StoreError
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
