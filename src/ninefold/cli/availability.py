"""`ninefold availability [SERVICE]`: how available each routed service was
over the last hour, day and 30 days, as clients saw it through the gateways,
and its incidents with their causes (docs/availability.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

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
from ninefold.cli.console import EXIT_USAGE, human_seconds, out, print_json, say

INCIDENTS_SHOWN = 10
"""Incidents listed per service in the table (all of them with --json)."""


def availability(
    service: Annotated[
        str | None,
        typer.Argument(help="One service; none: every service with a route.", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as the API gives it.")] = False,
    output: TableOutput = "table",
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Measured availability: % and nines over 1h, 24h, 30d, downtime, incidents."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling(conflict=EXIT_USAGE):  # a service without a route
        answer = client.availability(service)
    if as_json or output == "json":
        print_json(answer)
        return
    services = answer.get("services", [])
    if not services:
        say("no service has a route: availability is measured on routes (route: in the spec)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("SERVICE", "WINDOW", "AVAILABILITY", "NINES", "DOWNTIME", "OBSERVED",
                   "REQUESTS OK"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("SERVICE", "WINDOW") else "right")
    for s in services:
        for i, (name, w) in enumerate(s["windows"].items()):
            table.add_row(
                s["service"] if i == 0 else "",
                name,
                _percent(w["availability_percent"]),
                "-" if w["nines"] is None else f"{w['nines']:.2f}",
                human_seconds(w["downtime_seconds"]) if w["observed_seconds"] else "-",
                human_seconds(w["observed_seconds"]),
                _requests(w),
            )
    out.print(table)
    for s in services:
        incidents = s["incidents"]
        if not s["observers"]:
            say(f"{s['service']}: no node is probing it now")
        if not incidents:
            continue
        shown = incidents[-INCIDENTS_SHOWN:]
        more = len(incidents) - len(shown)
        out.print(
            f"\nincidents of {s['service']} (last 30 days"
            + (f", the last {len(shown)} of {len(incidents)}" if more else "")
            + "):",
            highlight=False,
        )
        rows = Table(box=None, pad_edge=False)
        for column in ("START", "END", "DURATION", "CAUSE"):
            rows.add_column(column)
        for incident in shown:
            rows.add_row(
                _when(incident["start"]),
                "ongoing" if incident["end"] is None else _when(incident["end"], short=True),
                f"{incident['duration_seconds']:.1f}s"
                if incident["duration_seconds"] < 60
                else human_seconds(incident["duration_seconds"]),
                incident["cause"],
            )
        out.print(rows)


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    return "100%" if value >= 100 else f"{value:.4f}%"


def _requests(window: dict[str, Any]) -> str:
    answered, failed = window["requests_answered"], window["requests_failed"]
    if not answered and not failed:
        return "-"
    return f"{answered}/{answered + failed} ({_percent(window['request_success_percent'])})"


def _when(stamp: float, short: bool = False) -> str:
    moment = datetime.fromtimestamp(stamp)
    text = moment.strftime("%H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")
    return f"{text}.{int(moment.microsecond / 1000):03d}"
