"""Reading log files for `ninefold logs`: the last lines, those since a time,
those matching a pattern, with each line's time.

A line's time is the one it starts with: an agent's line (text or JSON), the
supervisor's `[ninefold <time>]` lines, or any output that starts with an ISO
8601 time. A line without one (a traceback's, most programs' output) takes
the time of the last line before it that had one; for `since` it counts as
written as late as the next line with a time (or the file's last change), so
a filter never hides a line that may be newer.

Files are read from their end, in blocks, and the rotated copies
(`<file>.1`, `.2`, ...) after them; blocking, for `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ninefold.spec.duration import parse_duration

AGENT_LOG = "agent.log"
"""The agent's own log, in its data directory."""

BLOCK = 65536

_STAMP = re.compile(
    r"^(?:\[ninefold |--- |\[)?"
    r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)"
)


def agent_log_path(data_dir: Path) -> Path:
    return data_dir / AGENT_LOG


@dataclass(frozen=True)
class LogLine:
    text: str
    time: float | None
    """Unix seconds: the line's own time, else the last one before it; None if none."""


def parse_time(text: str) -> float | None:
    """An ISO 8601 time (`Z`, an offset, or none: local time) as Unix seconds."""
    text = text.strip().replace(",", ".")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    # fromisoformat takes at most 6 fraction digits
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.timestamp()


def line_time(line: str) -> float | None:
    """The time `line` starts with (a JSON line's `time`), or None."""
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        value = doc.get("time") if isinstance(doc, dict) else None
        return parse_time(value) if isinstance(value, str) else None
    m = _STAMP.match(line)
    return parse_time(m.group(1)) if m else None


def parse_since(text: str, now: float) -> float:
    """`10m`, `2h`, `1d` ago (from `now`) or an ISO 8601 time, as Unix seconds;
    ValueError with a one-line reason otherwise."""
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*d", text)
    if m:
        return now - float(m.group(1)) * 86400
    if text and text[0].isdigit() and not re.match(r"\d{4}-", text):
        try:
            return now - parse_duration(text)
        except ValueError:
            pass
    when = parse_time(text)
    if when is None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        when = datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    if when is None:
        raise ValueError(
            f"--since {text!r}: give a duration ago (30s, 10m, 2h, 1d) or an ISO 8601 time "
            "(2026-12-03T10:00:00Z)"
        )
    return when


def _reverse_lines(path: Path) -> Iterator[str]:
    """The lines of `path`, last first (nothing if it does not exist)."""
    try:
        f = path.open("rb")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return
    with f:
        pos = f.seek(0, os.SEEK_END)
        rest = b""
        first = True
        while pos > 0:
            step = min(BLOCK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + rest
            parts = data.split(b"\n")
            rest = parts[0]
            tail = parts[1:]
            if first:
                first = False
                if tail and tail[-1] == b"":
                    tail.pop()
            for raw in reversed(tail):
                yield raw.decode("utf-8", errors="replace")
        if rest:
            yield rest.decode("utf-8", errors="replace")


def files_of(path: Path, backups: int) -> list[Path]:
    """`path` then its rotated copies, newest first."""
    return [path, *(path.with_name(f"{path.name}.{n}") for n in range(1, backups + 1))]


def read_log(
    path: Path,
    *,
    lines: int | None = 100,
    since: float | None = None,
    grep: re.Pattern[str] | None = None,
    backups: int = 0,
) -> list[LogLine]:
    """The last `lines` lines (None: all) of `path` and its rotated copies that
    may be from `since` on and match `grep`, oldest first, each with its time."""
    found: list[LogLine] = []
    pending: list[tuple[str, bool]] = []
    """Lines without a time (newest first, and whether they pass the filters),
    waiting for the line with one before them."""
    latest: float | None = None
    """The time of the nearest later line with one: how late a line without one may be."""

    def full() -> bool:
        return lines is not None and len(found) >= lines

    def settle(when: float | None) -> None:
        for text, ok in pending:
            if ok and not full():
                found.append(LogLine(text, when))
        pending.clear()

    for text in _lines_newest_first(path, backups):
        if isinstance(text, float):  # the next file's last change
            latest = text if latest is None else latest
            continue
        when = line_time(text)
        if when is None:
            may_be_new = since is None or latest is None or latest >= since
            pending.append((text, may_be_new and (grep is None or grep.search(text) is not None)))
            continue
        settle(when)
        latest = when
        if (since is not None and when < since) or full():
            return found[::-1]
        if grep is None or grep.search(text) is not None:
            found.append(LogLine(text, when))
    settle(None)
    return found[::-1]


def _lines_newest_first(path: Path, backups: int) -> Iterator[str | float]:
    """Each file's last change (a float) before its lines, last line first."""
    for p in files_of(path, backups):
        try:
            changed = p.stat().st_mtime
        except OSError:
            continue
        yield changed
        yield from _reverse_lines(p)


def merge(streams: dict[str, list[LogLine]]) -> list[tuple[str, LogLine]]:
    """Lines of several sources in time order (stable: a source's own order is
    kept, and lines without a time stay after the line before them)."""
    keyed: list[tuple[float, int, int, str, LogLine]] = []
    for rank, (source, found) in enumerate(streams.items()):
        last = float("-inf")
        for i, line in enumerate(found):
            if line.time is not None:
                last = line.time
            keyed.append((last, rank, i, source, line))
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [(source, line) for _, _, _, source, line in keyed]
