"""cancel_and_wait: every task cancelled and finished before it returns."""

from __future__ import annotations

import asyncio

import pytest

from ninefold.tasks import cancel_and_wait


async def test_cancels_and_waits_for_every_task() -> None:
    finished: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that needs the loop
            finished.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in ("a", "b")]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, None)
    assert sorted(finished) == ["a", "b"]
    assert all(t.cancelled() for t in tasks)


async def test_an_error_a_task_died_of_is_raised_unless_ignored() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)
    again = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(again, ignore_errors=True)
