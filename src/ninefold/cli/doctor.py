"""`ninefold doctor`: preflight checks of this machine for one node of a spec.

The checks are in `ninefold.doctor`; this module picks the node and renders
the findings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ninefold import defaults
from ninefold.cli.common import (
    DEFAULT_SPEC,
    SpecOption,
    TableOutput,
    check_output,
    known_node,
    load,
)
from ninefold.cli.console import EXIT_FAILED, EXIT_USAGE, fail, out, print_json, say
from ninefold.doctor import Finding, NodeChoiceError, Target, blocking, pick_node, run_checks

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    spec: SpecOption = DEFAULT_SPEC,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            "-n",
            help="This machine's node in the spec. Default: the one node whose address "
            "is on this machine.",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The node's data directory. Default: the agent's, keyed by cluster and node.",
            show_default=False,
        ),
    ] = None,
    output: TableOutput = "table",
) -> None:
    """Check that this machine has what its node of the spec needs (run it
    before init, join or agent); exit 1 when something blocks."""
    check_output(output, "table", "json")
    cluster = load(spec)
    if node is not None:
        known_node(cluster, spec, node)
        me = cluster.node(node)
    else:
        try:
            me = pick_node(cluster)
        except NodeChoiceError as exc:
            raise fail(f"{spec}: {exc}", EXIT_USAGE) from None
    where = data_dir or defaults.data_dir(cluster.cluster, me.name)
    findings = run_checks(Target(cluster, me, where, spec))
    if output == "json":
        print_json([f.to_json() for f in findings])
    else:
        show(findings, f"node {me.name} ({me.address}) of cluster {cluster.cluster}")
    blockers = blocking(findings)
    if output != "json":
        warned = sum(f.status == "warn" for f in findings)
        if blockers:
            names = ", ".join(f.check for f in blockers)
            say(f"{len(blockers)} problem(s) block node {me.name}: {names}")
        else:
            say(f"nothing blocks node {me.name}" + (f" ({warned} warning(s))" if warned else ""))
    if blockers:
        raise typer.Exit(EXIT_FAILED)


def show(findings: list[Finding], title: str) -> None:
    """The findings as a table, then each problem's fix on a line of its own
    (whole, so a command in it can be copied)."""
    table = Table(title=title, title_justify="left")
    for col in ("CHECK", "STATUS", "DETAIL"):
        table.add_column(col)
    for f in findings:
        style = STATUS_STYLE.get(f.status, "")
        table.add_row(f.check, Text(f.status, style=style), Text(f.detail))
    out.print(table)
    fixes = [f for f in findings if f.fix and f.status in ("warn", "fail")]
    if fixes:
        say("to fix:")
        for f in fixes:
            say(f"  {f.check}: {f.fix}")
