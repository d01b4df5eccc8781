"""`ninefold kv get|put|rm|ls`: the cluster's key-value store for users."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ninefold.cli.common import (
    DEFAULT_SPEC,
    SpecOption,
    TableOutput,
    TextOutput,
    calling,
    check_output,
    connect,
)
from ninefold.cli.console import EXIT_FAILED, EXIT_USAGE, err, fail, out, print_json, say

kv_app = typer.Typer(
    name="kv",
    help="The cluster's key-value store for users: get, put, rm, ls.",
    no_args_is_help=True,
)

CasOption = Annotated[
    int | None,
    typer.Option(
        "--cas",
        min=0,
        help="Only if the key's revision is REV (0: only if the key is absent).",
        metavar="REV",
    ),
]


def _key(key: str) -> str:
    if not key or key.strip("/") == "":
        raise fail("a key must not be empty", EXIT_USAGE)
    return key


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(help="The key.")],
    spec: SpecOption = DEFAULT_SPEC,
    output: TextOutput = "text",
) -> None:
    """Print a key's value (exit 1 if there is no such key)."""
    check_output(output, "text", "json")
    with connect(spec) as client, calling(not_found=EXIT_FAILED):
        item = client.kv_get(_key(key))
    if output == "json":
        print_json(item)
    else:
        print(item.get("value", ""), flush=True)


@kv_app.command("put")
def kv_put(
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[str, typer.Argument(help="The value (text); - reads it from stdin.")],
    cas: CasOption = None,
    spec: SpecOption = DEFAULT_SPEC,
    output: TextOutput = "text",
) -> None:
    """Set a key; with --cas, only if its revision is still REV (else exit 1)."""
    check_output(output, "text", "json")
    if value == "-":
        value = sys.stdin.read()
    with connect(spec) as client, calling(not_found=EXIT_FAILED):
        answer = client.kv_put(_key(key), value, cas)
    if output == "json":
        print_json(answer)
    else:
        say(f"{key}: revision {answer.get('revision')}")


@kv_app.command("rm")
def kv_rm(
    key: Annotated[str, typer.Argument(help="The key.")],
    cas: CasOption = None,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Remove a key (exit 1 if there is no such key, or --cas does not match)."""
    with connect(spec) as client, calling(not_found=EXIT_FAILED):
        client.kv_delete(_key(key), cas)
    say(f"{key}: removed")


@kv_app.command("ls")
def kv_ls(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    spec: SpecOption = DEFAULT_SPEC,
    output: TableOutput = "table",
) -> None:
    """List keys with their revision and value."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        items = client.kv_list(prefix)
    if output == "json":
        print_json(items)
        return
    if not items:
        err.print(f"no keys{f' under {prefix!r}' if prefix else ''}", highlight=False)
        return
    table = Table()
    for col in ("KEY", "REVISION", "VALUE"):
        table.add_column(col)
    for item in items:
        value = str(item.get("value", ""))
        first = value.splitlines()[0] if value else ""
        if len(first) > 60 or first != value:
            first = first[:60] + "..."
        table.add_row(Text(str(item.get("key", ""))), str(item.get("revision", "")), Text(first))
    out.print(table)
