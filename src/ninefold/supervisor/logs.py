"""Log files of supervised processes: opening, rotation, tail.

A child writes its stdout and stderr straight into ``<log_dir>/<name>.log``
(opened ``O_APPEND``); no byte passes through the agent, so a chatty service
cannot slow the agent down and its output survives an agent crash.

The price is that the agent cannot cut the file at a line boundary:

- At every (re)start the file is rotated by renaming when it is over the
  limit (``rotate``); the new child opens a fresh file. Nothing is lost.
- While a child runs, a periodic check rotates by copy-and-truncate
  (``rotate(copy=True)``, logrotate's ``copytruncate``): thanks to
  ``O_APPEND`` the child continues at the start of the emptied file. Lines
  written between the copy and the truncate are lost, and the file can grow
  past the limit by whatever is written between two checks.

All functions here are blocking; async callers run them with
``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def backup_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def open_for_child(path: Path) -> int:
    """Open (create) ``path`` for appending; the caller closes the fd after the spawn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def append_line(path: Path, text: str) -> None:
    """Add one line from the supervisor itself (start failures, exits), time-stamped."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"[ninefold {stamp}] {text}\n")


def rotate(path: Path, backups: int, *, copy: bool = False) -> None:
    """Shift ``path.1 .. path.N-1`` to ``.2 .. .N`` and move ``path`` to ``.1``.

    ``copy=True`` copies and then truncates ``path`` instead of renaming it, for
    a file a running child still writes to. ``backups == 0`` just empties it.
    """
    if not path.exists():
        return
    if backups <= 0:
        if copy:
            os.truncate(path, 0)
        else:
            path.unlink()
        return
    backup_path(path, backups).unlink(missing_ok=True)
    for n in range(backups - 1, 0, -1):
        src = backup_path(path, n)
        if src.exists():
            src.rename(backup_path(path, n + 1))
    if copy:
        shutil.copyfile(path, backup_path(path, 1))
        os.truncate(path, 0)
    else:
        path.rename(backup_path(path, 1))


def rotate_if_larger(path: Path, max_bytes: int, backups: int, *, copy: bool = False) -> bool:
    """Rotate when ``path`` exceeds ``max_bytes``; True when it did."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    rotate(path, backups, copy=copy)
    return True


def tail(path: Path, lines: int = 100, *, backups: int = 0) -> list[str]:
    """The last ``lines`` lines of ``path`` (without line ends).

    With ``backups > 0`` the rotated files ``path.1 ..`` are read too when the
    current file holds fewer lines, so a tail right after a rotation is not
    empty. Reads from the end in blocks: cheap on a large file.
    """
    if lines <= 0:
        return []
    out: list[str] = []
    for p in [path, *(backup_path(path, n) for n in range(1, backups + 1))]:
        out = _tail_one(p, lines - len(out)) + out
        if len(out) >= lines:
            break
    return out[-lines:]


def _tail_one(path: Path, lines: int) -> list[str]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        pos, data, block = end, b"", 8192
        # lines + 1 newlines guarantee `lines` complete lines (the file may end with "\n").
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    text = data.decode("utf-8", errors="replace")
    result = text.splitlines()
    return result[-lines:] if lines else []
