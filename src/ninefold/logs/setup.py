"""How `ninefold agent` sets up its logging: to stderr in the chosen format,
and into `<data dir>/agent.log` (rotated) unless stderr already goes there,
so that `ninefold logs --agent` finds every agent's records."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from ninefold import defaults
from ninefold.logs.formats import LogFormat, formatter
from ninefold.logs.reading import agent_log_path

QUIET_LOGGERS = ("grpc", "asyncio", "httpx", "httpcore")


def same_file(stream: object, path: Path) -> bool:
    """Whether `stream` writes to the file at `path` (as under `ninefold up`)."""
    try:
        fileno = stream.fileno()  # type: ignore[attr-defined]
        mine = os.fstat(fileno)
        there = path.stat()
    except (AttributeError, OSError, ValueError):
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def configure_agent_logging(node: str, level: str, kind: LogFormat, data_dir: Path) -> None:
    """Root logger: stderr, plus `agent.log` in `data_dir` when stderr is not it."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    form = formatter(kind, node)
    for old in list(root.handlers):
        root.removeHandler(old)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(form)
    root.addHandler(stream)
    path = agent_log_path(data_dir)
    if not same_file(sys.stderr, path):
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            file = logging.handlers.RotatingFileHandler(
                path,
                maxBytes=defaults.LOG_MAX_BYTES,
                backupCount=defaults.LOG_BACKUPS,
                encoding="utf-8",
            )
        except OSError as exc:
            root.warning("cannot write %s: %s (`ninefold logs --agent` will lack it)", path, exc)
        else:
            file.setFormatter(form)
            root.addHandler(file)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
