"""What every `ninefold` command prints with: the two consoles, one-line
errors, progress on long waits; and the exit codes (the one place they are
defined, with how API errors map to them)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console

from ninefold.client import (
    ApiError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StoreUnavailable,
    Unauthorized,
    Unreachable,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4

EXIT_CODES: list[tuple[type[ApiError], int]] = [
    (Unreachable, EXIT_UNREACHABLE),
    (StoreUnavailable, EXIT_UNREACHABLE),
    (Unauthorized, EXIT_DENIED),
    (Forbidden, EXIT_DENIED),
    (NotFound, EXIT_USAGE),
    (Invalid, EXIT_USAGE),
    (Conflict, EXIT_FAILED),
]
"""How API errors become exit codes; anything else is EXIT_FAILED."""

out = Console()
err = Console(stderr=True)


def exit_code(exc: ApiError) -> int:
    """The exit code an API error means (EXIT_CODES)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_FAILED


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print `error: message` on stderr; raise what this returns."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def say(message: str) -> None:
    """One line for people on stdout, never wrapped or marked up."""
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2), flush=True)


@contextlib.contextmanager
def progress(first: str) -> Iterator[Callable[[str], None]]:
    """A spinner on a terminal; on anything else, each new message on its own line."""
    if err.is_terminal:
        with err.status(first) as spinner:
            yield lambda message: spinner.update(message)
        return
    last = [""]

    def report(message: str) -> None:
        if message != last[0]:
            last[0] = message
            err.print(message, highlight=False, markup=False, soft_wrap=True)

    report(first)
    yield report


def human_bytes(count: int | float) -> str:
    """`0 B`, `512 B`, `4.5 MB`, `10 MB`: decimal units, two significant figures
    below 10."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """`0.4s`, `12s`, `3m05s`, `2h03m`, `3d04h`."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def ago(then: float | None, now: float) -> str:
    """`2.0s ago`, or `never` for no time."""
    if not then:
        return "never"
    return f"{human_seconds(now - then)} ago"
