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


async def test_keyed_tasks_start_each_key_once_and_forget_it_when_done() -> None:
    from ninefold.tasks import KeyedTasks

    tasks = KeyedTasks()
    release = asyncio.Event()
    ran: list[str] = []

    async def work(name: str) -> None:
        ran.append(name)
        await release.wait()

    tasks.start("r1", work("r1"), "r1")
    assert "r1" in tasks
    await asyncio.sleep(0)
    release.set()
    for _ in range(50):
        if "r1" not in tasks:
            break
        await asyncio.sleep(0.01)
    assert "r1" not in tasks and ran == ["r1"]
    tasks.start("r2", asyncio.sleep(3600), "r2")
    await tasks.stop()
    await asyncio.sleep(0)
    assert "r2" not in tasks
