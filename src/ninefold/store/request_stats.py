"""A debug count of what a store client asks of etcd: requests by kind and key
group, with their message bytes, and the events its watches bring.

Off unless the environment variable NINEFOLD_STORE_STATS names a directory;
then every process with an etcd client writes `<dir>/<pid>.json` at most once
a second (bench/control_traffic.py reads them to say which loop costs what).
A debugging aid only: the write is a small synchronous one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("ninefold.store")

ENV = "NINEFOLD_STORE_STATS"
WRITE_EVERY = 1.0

NESTED = frozenset({"locks", "alerts", "availability", "backups", "vipcand"})
"""Top-level key segments whose second segment names a different record kind."""


def key_group(key: str) -> str:
    """The record kind a key belongs to: 'status/n1/web-1' -> 'status/',
    'locks/active/queue' -> 'locks/active/', 'spec' -> 'spec'."""
    parts = key.split("/")
    if len(parts) == 1:
        return key
    depth = 2 if parts[0] in NESTED and len(parts) > 2 else 1
    return "/".join(parts[:depth]) + "/"


class RequestStats:
    """Counters of one process, written to `directory/<pid>.json` as
    {"<kind> <group>": [count, bytes sent, bytes received]}."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / f"{os.getpid()}.json"
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._written = 0.0

    def count(self, kind: str, key: str, sent: int, received: int) -> None:
        entry = self._counts[f"{kind} {key_group(key)}"]
        entry[0] += 1
        entry[1] += sent
        entry[2] += received
        now = time.monotonic()
        if now - self._written >= WRITE_EVERY:
            self._written = now
            self.write()

    def write(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._counts, sort_keys=True))
        os.replace(tmp, self._path)

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        return {k: (v[0], v[1], v[2]) for k, v in self._counts.items()}


_shared: dict[str, RequestStats] = {}


def from_env() -> RequestStats | None:
    """The process's counters (one per process, shared by its store clients)
    when NINEFOLD_STORE_STATS is set (its directory is made if missing), else None."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    if directory not in _shared:
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("%s=%s: not counting store requests: %s", ENV, directory, exc.strerror)
            return None
        _shared[directory] = RequestStats(path)
    return _shared[directory]
