"""`ninefold volumes`: the copies of the replicated volumes, how far behind each
one is, when it last synced, and how far a first copy (seeding) has got."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ninefold.cli.common import (
    DEFAULT_SPEC,
    SpecOption,
    TableOutput,
    calling,
    check_output,
    connect,
)
from ninefold.cli.console import ago, human_bytes, human_seconds, out, print_json, say
from ninefold.client import ClusterClient, StoreUnavailable, Unreachable

FOLLOW_INTERVAL = 1.0
"""Seconds between two reads of `volumes --follow`."""

COLUMNS = ("SERVICE/VOLUME", "NODE", "ROLE", "STATE", "LAG", "BEHIND", "LAST SYNC", "VERIFIED")
_STATE_STYLE = {
    "source": "cyan",
    "in-sync": "green",
    "behind": "yellow",
    "seeding": "yellow",
    "failing": "red",
    "down": "red",
}


def state_text(copy: dict[str, Any]) -> str:
    """The copy's state word; for a seeding copy, how far it has got:
    `seeding 45% (4.5 MB of 10 MB)`."""
    state = str(copy.get("state", ""))
    if state != "seeding":
        return state
    done, total = int(copy.get("seed_done") or 0), int(copy.get("seed_total") or 0)
    if total > 0:
        percent = min(100, int(100 * done / total))
        return f"seeding {percent}% ({human_bytes(done)} of {human_bytes(total)})"
    return f"seeding ({human_bytes(done)} so far)" if done else "seeding"


def copy_cells(volume: dict[str, Any], copy: dict[str, Any], now: float) -> list[str]:
    """One copy's row, as plain text in the order of COLUMNS (then DETAIL)."""
    source = copy.get("role") == "source"
    verified = ago(copy.get("verified_at"), now)
    if copy.get("diverged"):
        verified += f", {copy['diverged']} repaired"
    detail = str(copy.get("error") or "")
    sent_by = copy.get("sent_by")
    if not detail and not source and sent_by and sent_by != volume.get("source"):
        detail = f"last sent by {sent_by}"
    return [
        f"{volume.get('service', '')}/{volume.get('volume', '')}",
        str(copy.get("node", "")),
        str(copy.get("role", "")),
        state_text(copy),
        "-" if source else human_seconds(float(copy.get("lag_seconds") or 0)),
        "-" if source else human_bytes(int(copy.get("bytes_behind") or 0)),
        ago(copy.get("last_sync"), now),
        verified,
        detail,
    ]


def volume_rows(answer: dict[str, Any]) -> list[list[str]]:
    """Every row of the table for an answer of `GET /v1/volumes`; a volume
    without copies yet gets one row that says so."""
    now = float(answer.get("time") or time.time())
    rows = []
    for volume in answer.get("volumes") or []:
        copies = volume.get("copies") or []
        if not copies:
            name = f"{volume.get('service', '')}/{volume.get('volume', '')}"
            rows.append([name, "-", "-", "no copies yet", "", "", "", "", ""])
        rows.extend(copy_cells(volume, copy, now) for copy in copies)
    return rows


def volumes_table(answer: dict[str, Any]) -> Table:
    """The table `ninefold volumes` prints (a DETAIL column when some row has one)."""
    rows = volume_rows(answer)
    detail = any(row[-1] for row in rows)
    table = Table(title="volumes", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("LAG", "BEHIND") else "left")
    if detail:
        table.add_column("DETAIL")
    for row in rows:
        state = row[3]
        style = _STATE_STYLE.get(state.split(" ", 1)[0], "")
        cells: list[Text | str] = [Text(c) for c in row[:3]]
        cells.append(Text(state, style=style))
        cells.extend(Text(c) for c in row[4:8])
        if detail:
            cells.append(Text(row[8], style="red" if state == "failing" else "dim"))
        table.add_row(*cells)
    return table


def render(answer: dict[str, Any], service: str | None, problem: str = "") -> RenderableType:
    """The table, or one line when there is nothing to show; with `problem`,
    a line under it saying the picture is not current."""
    if answer.get("volumes"):
        shown: RenderableType = volumes_table(answer)
    else:
        whose = service if service else "the cluster"
        shown = Text(f"{whose} has no replicated volumes")
    if not problem:
        return shown
    return Group(shown, Text(f"{problem}; retrying", style="yellow"))


def _wait() -> None:
    """The pause between two reads of `--follow`."""
    time.sleep(FOLLOW_INTERVAL)


def _poll(
    client: ClusterClient, service: str | None, last: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """A new answer; while no node or no store answers, the last one with why."""
    try:
        return client.volumes(service), ""
    except (Unreachable, StoreUnavailable) as exc:
        age = human_seconds(time.time() - float(last.get("time") or time.time()))
        return last, f"no answer ({exc.message}); shown as of {age} ago"


def _follow(
    client: ClusterClient, service: str | None, output: str, answer: dict[str, Any]
) -> None:
    """Redraw the table (on a terminal), else print each new answer, every
    FOLLOW_INTERVAL until Ctrl-C; `answer` is on screen already."""
    if output == "table" and out.is_terminal:
        with Live(render(answer, service), console=out, auto_refresh=False) as live:
            while True:
                _wait()
                answer, problem = _poll(client, service, answer)
                live.update(render(answer, service, problem), refresh=True)
    while True:
        _wait()
        answer, problem = _poll(client, service, answer)
        if output == "json":
            if not problem:  # a script reads only fresh answers
                print(json.dumps(answer), flush=True)
        else:
            out.print(render(answer, service, problem))


def volumes(
    service: Annotated[
        str | None, typer.Argument(help="Only this service's volumes.", show_default=False)
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    output: TableOutput = "table",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Redraw every second until Ctrl-C.")
    ] = False,
) -> None:
    """Replicated volumes: each copy's state, lag, bytes behind and last sync."""
    check_output(output, "table", "json")
    with connect(spec) as client:
        with calling():
            answer = client.volumes(service)
        if output == "json":
            if follow:
                print(json.dumps(answer), flush=True)
            else:
                print_json(answer)
        elif not (follow and out.is_terminal):  # else Live draws it
            shown = render(answer, service)
            if isinstance(shown, Text):
                say(shown.plain)
            else:
                out.print(shown)
        if follow:
            with calling(), contextlib.suppress(KeyboardInterrupt):
                _follow(client, service, output, answer)
