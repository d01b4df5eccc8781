"""The `ninefold` command: its Typer app, made of the commands of the modules
beside this one, and `main`, the entry point (the `ninefold` script and
`python -m ninefold`).

Each command lives in a module by concern and imports only `cli.common` and
`cli.console`; this module alone imports them all. The order below is the
order `ninefold --help` lists the commands in (then the groups).

Every command but `agent`, `init`, `up` and `down` talks to the cluster's REST
API (docs/api.md) through `ninefold.client`, on whichever node of the spec
answers first.

Exit codes (`cli.console`): 0 ok, 1 operation failed, 2 usage or spec error
(unknown service, node or instance included), 3 cluster unreachable (no agent
answers, or no store quorum), 4 denied.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ninefold import __version__
from ninefold.cli import (
    availability,
    backup,
    doctor,
    inspect,
    join,
    observe,
    operate,
    service,
    setup,
    volumes,
)
from ninefold.cli.alerts import alerts_app
from ninefold.cli.backup import backup_app
from ninefold.cli.cert import cert_app
from ninefold.cli.console import out
from ninefold.cli.kv import kv_app
from ninefold.cli.lab import lab_app
from ninefold.cli.node import node_app
from ninefold.cli.token import token_app

app = typer.Typer(
    name="ninefold",
    help="High availability for ordinary services across a handful of machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("init", setup.init),
    ("agent", setup.agent),
    ("up", setup.up),
    ("down", setup.down),
    ("status", inspect.status),
    ("volumes", volumes.volumes),
    ("restore", backup.restore),
    ("apply", operate.apply),
    ("scale", operate.scale),
    ("restart", operate.restart),
    ("move", operate.move),
    ("switchover", operate.switchover),
    ("drain", operate.drain),
    ("undrain", operate.undrain),
    ("events", inspect.events),
    ("availability", availability.availability),
    ("prometheus-config", observe.prometheus_config),
    ("logs", inspect.logs),
    ("demo", setup.demo),
    ("doctor", doctor.doctor),
    ("join", join.join),
    ("install-service", service.install_service),
]
"""`ninefold VERB` and what runs it, in the order of `ninefold --help`."""

GROUPS: list[tuple[str, typer.Typer]] = [
    ("kv", kv_app),
    ("backup", backup_app),
    ("alerts", alerts_app),
    ("cert", cert_app),
    ("lab", lab_app),
    ("node", node_app),
    ("token", token_app),
]
"""`ninefold GROUP VERB`: the groups of commands, listed after the commands."""

for _name, _command in COMMANDS:
    app.command(_name)(_command)
for _name, _group in GROUPS:
    app.add_typer(_group, name=_name)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"ninefold {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """ninefold keeps services running, health-checked and failed over across nodes."""


def main() -> None:
    """Run the command line; exit 130 on Ctrl-C where a command does not handle it."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
