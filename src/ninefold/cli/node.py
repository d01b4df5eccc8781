"""`ninefold node ...`: what is done to one machine as a whole."""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer

from ninefold.cli.common import DEFAULT_SPEC, SpecOption, calling, connect
from ninefold.cli.console import EXIT_USAGE, err, fail, say

node_app = typer.Typer(
    name="node",
    help="One machine as a whole: quarantine a compromised node.",
    no_args_is_help=True,
)


@node_app.command("quarantine")
def quarantine(
    node: Annotated[str, typer.Argument(help="The node.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the events.")] = "",
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do it without asking (it asks only on a terminal).")
    ] = False,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Treat a node as compromised: revoke its certificates (every mTLS port,
    etcd's included, refuses them from the next handshake on) and its tokens,
    move its instances away; a pool's node is then fenced, removed from the
    store and replaced by the leader. There is no way back: a quarantined
    node never joins again under its name."""
    if not yes and not sys.stdin.isatty():
        raise fail("not quarantined: no terminal to ask on (pass --yes)", EXIT_USAGE)
    if not yes:
        try:
            agreed = typer.confirm(f"Quarantine {node}? It cannot be undone.", err=True)
        except (typer.Abort, click.Abort):
            err.print()
            agreed = False
        if not agreed:
            raise fail("not quarantined (answer y, or pass --yes)")
    with connect(spec) as client, calling():
        answer = client.quarantine(node, reason)
    say(f"{node} quarantined: {answer.get('message', '')}")
