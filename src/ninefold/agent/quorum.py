"""Waiting for the store's quorum at start, and saying why it is not there yet."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from ninefold import defaults
from ninefold.spec import ClusterSpec
from ninefold.state.keys import SPEC_KEY
from ninefold.store.base import Store, StoreError


def reachable(address: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


async def wait_for_quorum(
    store: Store,
    spec: ClusterSpec,
    report: Callable[[str], None],
    every: float = defaults.STORE_QUORUM_REPORT_EVERY,
) -> None:
    """Return once the store answers a linearizable read; say why not meanwhile."""
    last_report = time.monotonic()
    started = last_report
    while True:
        try:
            await store.get(SPEC_KEY)
            return
        except StoreError:
            pass
        now = time.monotonic()
        if now - last_report >= every:
            last_report = now
            report(await asyncio.to_thread(quorum_message, spec, now - started))
        await asyncio.sleep(0.2)


def quorum_message(spec: ClusterSpec, waited: float) -> str:
    if spec.store.mode == "external":
        return f"waiting for the store at {', '.join(spec.store.endpoints)} ({waited:.0f}s)"
    members = spec.store_nodes()
    up = [m for m in members if reachable(m.address, m.ports.store_client)]
    down = [f"{m.name} {m.address}:{m.ports.store_client}" for m in members if m not in up]
    need = len(members) // 2 + 1
    return (
        f"waiting for store quorum: {len(up)} of {len(members)} members reachable, "
        f"{need} needed ({waited:.0f}s; down: {', '.join(down) or 'none'})"
    )
