"""Small asyncio helpers the agent's loops share: stopping background tasks
(cancel them all, then wait until each has finished, so nothing they hold
outlives the caller) and waiting for an event with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, ignore_errors: bool = False) -> None:
    """Cancel every task (None: nothing there), then await each. A task that
    had already died of an error raises it here unless `ignore_errors` (for
    callers that reported it when it happened)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    quiet: tuple[type[BaseException], ...] = (asyncio.CancelledError,)
    if ignore_errors:
        quiet = (asyncio.CancelledError, Exception)
    for task in running:
        with contextlib.suppress(*quiet):
            await task


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until event is set or timeout passes.

    asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow
    a cancellation that arrives as the event is set, and the task then never
    stops."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class KeyedTasks:
    """Background tasks by key (a run's id), each forgotten when it ends: a
    loop that starts work found in the store starts each piece once."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._tasks

    def start(self, key: str, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks.values(), ignore_errors=True)
