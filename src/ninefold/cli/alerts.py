"""`ninefold alerts ...`: the alerts the leader evaluated, silences and
acknowledgements (docs/alerts.md)."""

from __future__ import annotations

import getpass
import socket
import time
from typing import Annotated

import typer
from rich.table import Table

from ninefold.cli.common import (
    DEFAULT_SPEC,
    SpecOption,
    TableOutput,
    calling,
    check_output,
    connect,
)
from ninefold.cli.console import EXIT_USAGE, ago, fail, human_seconds, out, print_json, say

alerts_app = typer.Typer(
    name="alerts",
    help="Alerts: list them, silence them, acknowledge them (docs/alerts.md).",
    no_args_is_help=True,
)

Comment = Annotated[str, typer.Option("--comment", "-c", help="Why (kept with it).")]


def _by() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return socket.gethostname()


def _subject(labels: dict[str, str]) -> str:
    skip = {"alertname", "severity", "cluster"}
    return " ".join(f"{k}={v}" for k, v in labels.items() if k not in skip) or "-"


@alerts_app.command("list")
def list_(
    resolved: Annotated[
        bool, typer.Option("--resolved", help="Also the recently resolved ones.")
    ] = False,
    output: TableOutput = "table",
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """The alerts: firing, then pending; with --resolved the recently resolved too."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        alerts = client.alerts(resolved=resolved)
    if output == "json":
        print_json(alerts)
        return
    if not alerts:
        say("no alerts" if resolved else "no alerts firing or pending")
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATE", "SEVERITY", "RULE", "SUBJECT", "SINCE", "TEXT", "NOTE"):
        table.add_column(column, overflow="fold")
    for a in alerts:
        note = []
        if a.get("silenced_by"):
            note.append(f"silenced ({', '.join(a['silenced_by'])})")
        if a.get("acked_until"):
            note.append(f"acked for {human_seconds(a['acked_until'] - now)}")
        if a["state"] == "resolved":
            note.append("healed before its for:" if a.get("healed") else "")
        table.add_row(
            a["id"][:8],
            a["state"],
            a["severity"],
            a["rule"],
            _subject(a["labels"]),
            ago(a["active_since"], now),
            a["text"],
            "; ".join(n for n in note if n),
        )
    out.print(table)


def _matchers(words: list[str]) -> dict[str, str]:
    matchers: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise fail(f"{word!r} is not a matcher: write LABEL=VALUE (e.g. node=n2)", EXIT_USAGE)
        matchers[name] = value
    return matchers


@alerts_app.command("silence")
def silence(
    matchers: Annotated[
        list[str],
        typer.Argument(
            help="LABEL=VALUE, all of which an alert's labels must match (`*` and `?` "
            "wildcards), e.g. alertname=node-down node=n2.",
            show_default=False,
        ),
    ],
    expires: Annotated[
        str, typer.Option("--for", "-d", help="How long it lasts: 30m, 2h...")
    ] = "2h",
    comment: Comment = "",
    output: TableOutput = "table",
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Hold back the notices of the matching alerts until the silence expires."""
    check_output(output, "table", "json")
    wanted = _matchers(matchers)
    with connect(spec) as client, calling():
        made = client.silence(wanted, expires, comment, _by())
    if output == "json":
        print_json(made)
        return
    say(f"silence {made['id']} until {_when(made['ends_at'])}")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@alerts_app.command("silences")
def silences(output: TableOutput = "table", spec: SpecOption = DEFAULT_SPEC) -> None:
    """The silences in force."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        found = client.silences()
    if output == "json":
        print_json(found)
        return
    if not found:
        say("no silences")
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "MATCHERS", "ENDS", "BY", "COMMENT"):
        table.add_column(column, overflow="fold")
    for s in found:
        matchers = " ".join(f"{k}={v}" for k, v in s["matchers"].items())
        left = f"in {human_seconds(s['ends_at'] - now)}"
        table.add_row(s["id"], matchers, left, s.get("created_by", ""), s.get("comment", ""))
    out.print(table)


@alerts_app.command("unsilence")
def unsilence(
    ident: Annotated[str, typer.Argument(help="The silence's id.", show_default=False)],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """End a silence now."""
    with connect(spec) as client, calling(not_found=EXIT_USAGE):
        client.unsilence(ident)
    say(f"silence {ident} ended")


@alerts_app.command("ack")
def ack(
    alert: Annotated[
        str, typer.Argument(help="The alert's id (or its first characters).", show_default=False)
    ],
    expires: Annotated[
        str, typer.Option("--for", "-d", help="How long repeats stop at most: 4h, 1d...")
    ] = "24h",
    comment: Comment = "",
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Acknowledge a firing alert: no repeat notice until it resolves or the ack expires."""
    with connect(spec) as client, calling(not_found=EXIT_USAGE):
        made = client.ack_alert(alert, expires, comment, _by())
    say(f"alert {made['alert']} acknowledged until {_when(made['until'])}")
