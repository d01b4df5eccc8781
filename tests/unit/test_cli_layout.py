"""How the CLI is put together: each command module uses only what every
command shares (`cli.common`, `cli.console`), only `cli.main` puts the commands
together, and `ninefold --help` lists them in the order `cli.main` gives."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from ninefold.cli.main import COMMANDS, GROUPS, app
from tests.unit.test_layering import MODULES, imports_of

runner = CliRunner()

SHARED = {"ninefold.cli.common", "ninefold.cli.console"}
ENTRY = "ninefold.cli.main"


def cli_imports(module: str) -> set[str]:
    return {m for m in imports_of(module) if m.startswith("ninefold.cli.")}


def test_command_modules_import_only_what_commands_share() -> None:
    commands = sorted(m for m in MODULES if m.startswith("ninefold.cli.") and m != ENTRY)
    assert len(commands) > len(SHARED) + 5
    problems = [
        f"{module} imports {sorted(cli_imports(module) - SHARED)}"
        for module in commands
        if cli_imports(module) - SHARED
    ]
    assert not problems, "\n".join(problems)
    assert cli_imports("ninefold.cli.common") <= {"ninefold.cli.console"}
    assert not cli_imports("ninefold.cli.console")


def test_help_lists_the_commands_then_the_groups_in_main_s_order() -> None:
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "100"}).output
    listed = re.findall(r"^│ ([a-z][a-z-]*) ", shown, flags=re.MULTILINE)
    assert listed == [name for name, _ in COMMANDS] + [name for name, _ in GROUPS]
