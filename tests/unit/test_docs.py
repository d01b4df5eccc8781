"""The reference docs against the code.

- docs/cli.md has a section for every command: `## ninefold VERB` for a
  top-level command, `### ninefold GROUP SUB` for a sub-command of a group
  (`kv`, `token`, `cert`, `lab`), and no section for a command that does not
  exist.
- docs/spec.md has, for every model of the spec, a table (first column
  `key`) that names each of the model's keys: `name`, or `parent.name` for a
  nested mapping documented in its parent's table (`timeouts.connect`).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

from ninefold.cli.main import app
from ninefold.spec import ClusterSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"


def commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every visible command and sub-command under `group` (a
    click group: Typer builds one, on its own copy of click, so it is
    recognised by its `commands`)."""
    for name, command in group.commands.items():
        if getattr(command, "hidden", False):
            continue
        path = (*prefix, name)
        yield path
        if isinstance(getattr(command, "commands", None), dict):
            yield from commands(command, path)


def heading(path: tuple[str, ...]) -> str:
    level = "##" if len(path) == 1 else "###"
    return f"{level} ninefold {' '.join(path)}"


def cli_headings() -> set[str]:
    text = (DOCS / "cli.md").read_text()
    return {line.rstrip() for line in text.splitlines() if re.match(r"#{2,3} ninefold ", line)}


def all_commands() -> list[tuple[str, ...]]:
    return list(commands(typer.main.get_command(app)))


def test_every_command_has_a_section_in_cli_md() -> None:
    headings = cli_headings()
    missing = [heading(path) for path in all_commands() if heading(path) not in headings]
    assert not missing, "docs/cli.md lacks these sections:\n" + "\n".join(missing)


def test_every_section_of_cli_md_is_a_command() -> None:
    real = {heading(path) for path in all_commands()}
    stale = "\n".join(sorted(cli_headings() - real))
    assert not stale, f"docs/cli.md has sections for commands that do not exist:\n{stale}"


# --- spec.md ---------------------------------------------------------------------


def submodels(annotation: object) -> Iterator[type[BaseModel]]:
    """The pydantic models inside a field's type (through Optional, list, dict,
    Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from submodels(arg)


def spec_models() -> dict[type[BaseModel], str]:
    """Every model of the spec, with the path it is first reached by."""
    found: dict[type[BaseModel], str] = {}

    def walk(model: type[BaseModel], path: str) -> None:
        if model in found:
            return
        found[model] = path or "(top level)"
        for name, field in model.model_fields.items():
            key = field.alias or name
            for sub in submodels(field.annotation):
                walk(sub, f"{path}.{key}" if path else key)

    walk(ClusterSpec, "")
    return found


def key_tables() -> list[set[str]]:
    """The first-column keys of every `| key | ...` table in docs/spec.md."""
    tables: list[set[str]] = []
    current: set[str] | None = None
    for line in (DOCS / "spec.md").read_text().splitlines():
        if not line.startswith("|"):
            current = None
            continue
        first = line.split("|")[1].strip()
        if current is None:
            current = set()
            if first == "key":
                tables.append(current)
            continue
        match = re.fullmatch(r"`([a-z_][a-z0-9_.]*)`", first)
        if match:
            current.add(match.group(1))
    return tables


def covers(table: set[str], key: str) -> bool:
    return key in table or any(k.endswith(f".{key}") or k.startswith(f"{key}.") for k in table)


@pytest.mark.parametrize(
    ("model", "path"), list(spec_models().items()), ids=lambda v: getattr(v, "__name__", v)
)
def test_every_spec_key_is_in_a_table_of_spec_md(model: type[BaseModel], path: str) -> None:
    keys = [field.alias or name for name, field in model.model_fields.items()]
    tables = key_tables()
    assert tables, "no `| key | ...` table found in docs/spec.md"
    best = max(tables, key=lambda table: sum(covers(table, k) for k in keys))
    missing = [k for k in keys if not covers(best, k)]
    assert not missing, (
        f"docs/spec.md has no table with every key of {path} ({model.__name__}); "
        f"the closest lacks {', '.join(missing)}"
    )
