"""`ninefold apply`, `scale`, `restart`, `move`, `switchover`, `drain` and
`undrain`: the changes an operator asks of a running cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.text import Text

from ninefold.cli.common import DEFAULT_SPEC, SpecOption, calling, client_for, connect, load
from ninefold.cli.console import EXIT_USAGE, err, fail, out, say


def accepted(answer: Any, default: str) -> None:
    """The API's own message about an accepted change (it may say more, e.g. that
    it is already so), else `default`."""
    message = answer.get("message") if isinstance(answer, dict) else None
    out.print(message or default, highlight=False, markup=False, soft_wrap=True)


def show_diff(lines: list[str]) -> None:
    """A unified diff, coloured like git's."""
    for line in lines:
        style = ""
        if line.startswith("+") and not line.startswith("+++"):
            style = "green"
        elif line.startswith("-") and not line.startswith("---"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        out.print(Text(line, style=style), soft_wrap=True)


def apply(
    file: Annotated[Path, typer.Argument(help="The new spec.")],
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            "-s",
            envvar="NINEFOLD_SPEC",
            help="The spec naming the cluster's nodes. Default: FILE itself.",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Apply without asking (it asks only on a terminal)."),
    ] = False,
) -> None:
    """Show what a new spec changes, ask, then make it the cluster's desired state."""
    new = load(file)
    target = load(spec) if spec is not None else new
    text = file.read_text(encoding="utf-8")
    with client_for(target) as client, calling():
        plan = client.put_spec(text, dry_run=True)
        diff = [str(line) for line in plan.get("diff") or []]
        if not diff:
            say(f"{file}: nothing to change (cluster {new.cluster} already runs it)")
            return
        show_diff(diff)
        if not yes and not sys.stdin.isatty():
            raise fail("not applied: no terminal to ask on (pass --yes)", EXIT_USAGE)
        if not yes:
            try:
                agreed = typer.confirm("Apply these changes?", err=True)
            except (typer.Abort, click.Abort):
                err.print()
                agreed = False
            if not agreed:
                raise fail("not applied (answer y, or pass --yes)")
        result = client.put_spec(text, dry_run=False)
    if not result.get("applied", True):
        say(f"{file}: nothing to change")
        return
    say(f"applied {file} (revision {result.get('revision')})")


# --- changes ---------------------------------------------------------------------------


def scale(
    service: Annotated[str, typer.Argument(help="The service.")],
    replicas: Annotated[int, typer.Argument(help="How many instances it should run.", min=1)],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Set how many instances a service runs."""
    with connect(spec) as client, calling():
        answer = client.scale(service, replicas)
    accepted(answer, f"{service} scaled to {replicas}")


def restart(
    service: Annotated[str, typer.Argument(help="The service.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Restart every instance of a service, one at a time (rolling, drained)."""
    with connect(spec) as client, calling():
        answer = client.restart(service)
    accepted(answer, f"{service}: rolling restart asked; `ninefold events -f` shows its progress")


def move(
    instance: Annotated[str, typer.Argument(help="The instance, e.g. web-1.")],
    node: Annotated[str, typer.Argument(help="The node it should run on.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Move one instance to another node."""
    with connect(spec) as client, calling():
        answer = client.move(instance, node)
    accepted(answer, f"{instance}: moving to {node}")


def switchover(
    service: Annotated[str, typer.Argument(help="The active-passive service.")],
    to: Annotated[
        str | None,
        typer.Option("--to", "-t", help="The node to make active. Default: the best standby."),
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Hand an active-passive service's active role to a standby, on purpose."""
    with connect(spec) as client, calling():
        answer = client.switchover(service, to)
    accepted(answer, f"{service}: switchover asked")


def drain(
    node: Annotated[str, typer.Argument(help="The node.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Move every instance off a node and place nothing new there."""
    with connect(spec) as client, calling():
        answer = client.drain(node)
    accepted(answer, f"{node}: draining")


def undrain(
    node: Annotated[str, typer.Argument(help="The node.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Let a drained node take instances again."""
    with connect(spec) as client, calling():
        answer = client.undrain(node)
    accepted(answer, f"{node}: takes instances again")
