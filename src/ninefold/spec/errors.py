"""What a bad spec produces: one `SpecIssue` per problem, all raised together."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

Loc = tuple[str | int, ...]
"""A place in the spec: mapping keys and list indices, e.g. `("nodes", 1, "address")`."""


class Problem(NamedTuple):
    """A problem found in a validated spec, located by `loc` but not yet by line."""

    loc: Loc
    message: str


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_loc(loc: Loc) -> str:
    """`("nodes", 1, "address")` -> `nodes[1].address`; odd keys are quoted: `labels["a.b"]`."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            text = str(part).lower() if isinstance(part, bool) else str(part)
            out += f'["{text}"]'
    return out


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one spec file. `line` is 1-based, None when it concerns the whole file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.path:
            return f"{where} {self.path}: {self.message}"
        return f"{where}: {self.message}"


class SpecError(Exception):
    """A spec that cannot be used; `issues` lists every problem found, in file order."""

    def __init__(self, issues: Iterable[SpecIssue]) -> None:
        self.issues: list[SpecIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def describe(value: object) -> str:
    """A value as a person wrote it in YAML, for messages: `'abc'`, `5`, `true`, `a list`."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)
