"""Stopping background tasks: cancel them all, then wait until each has
finished, so nothing they hold (a socket, a watch, a lock) outlives the caller."""

from __future__ import annotations

import asyncio
import contextlib
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
