"""`ninefold backup ...`: run backups now, list them, check repositories,
list a repository's snapshots (docs/backups.md)."""

from __future__ import annotations

import time
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
from ninefold.cli.console import (
    EXIT_FAILED,
    ago,
    fail,
    human_bytes,
    human_seconds,
    out,
    print_json,
    say,
)
from ninefold.client import ClusterClient

backup_app = typer.Typer(
    name="backup",
    help="Backups with restic: run them now, list them, check repositories (docs/backups.md).",
    no_args_is_help=True,
)

WAIT_POLL = 0.5
Wait = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait for the runs to end, printing their progress (0: do not wait).",
    ),
]


def _wait_for(client: ClusterClient, asked: list[str], since: float, seconds: float) -> None:
    """Until every asked target has a last run that started after `since`;
    one line per end; exit 1 if one failed or the wait ran out."""
    deadline = time.monotonic() + seconds
    ended: dict[str, dict[str, Any]] = {}
    said: set[str] = set()
    while len(ended) < len(asked):
        with calling():
            targets = {t["target"]: t for t in client.backups()["targets"]}
        for key in asked:
            target = targets.get(key, {})
            running, last = target.get("running"), target.get("last")
            if running and key not in said:
                say(f"{key}: running on {running['node']} ({running.get('why', '')})")
                said.add(key)
            if key not in ended and last and last["started_at"] >= since - 1.0:
                ended[key] = last
                if last["ok"]:
                    took = human_seconds(last["finished_at"] - last["started_at"])
                    what = (
                        f"snapshot {last['snapshot_id'][:8]}, {human_bytes(last['data_added'])} "
                        f"added of {human_bytes(last['total_bytes'])}"
                        if last.get("snapshot_id")
                        else "no error found"
                    )
                    say(f"{key}: done in {took} on {last['node']}: {what}")
                else:
                    say(f"{key}: FAILED on {last['node']}: {last['error']}")
        if len(ended) < len(asked):
            if time.monotonic() > deadline:
                left = ", ".join(k for k in asked if k not in ended)
                raise fail(f"still running after {seconds:g}s: {left}", EXIT_FAILED)
            time.sleep(WAIT_POLL)
    failed = [k for k, last in ended.items() if not last["ok"]]
    if failed:
        raise fail(f"{len(failed)} of {len(asked)} failed: {', '.join(failed)}", EXIT_FAILED)


@backup_app.command("run")
def run(
    target: Annotated[
        str | None,
        typer.Argument(
            help="SERVICE/VOLUME, SERVICE, `cluster`, or a target's key; none: every backup.",
            show_default=False,
        ),
    ] = None,
    wait: Wait = 0.0,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Back up now: the leader starts the runs on the nodes holding the data."""
    with connect(spec) as client:
        with calling():
            answer = client.backup_run(target)
        say(f"asked: {', '.join(answer['asked'])}")
        if wait:
            _wait_for(client, answer["asked"], answer["time"], wait)


@backup_app.command("check")
def check(
    repository: Annotated[
        str | None, typer.Argument(help="The repository; none: every one.", show_default=False)
    ] = None,
    wait: Wait = 0.0,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Run `restic check` on a repository now (on the leader's node)."""
    with connect(spec) as client:
        with calling():
            answer = client.backup_check(repository)
        say(f"asked: {', '.join(answer['asked'])}")
        if wait:
            _wait_for(client, answer["asked"], answer["time"], wait)


@backup_app.command("list")
def list_(
    output: TableOutput = "table",
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Each backup target: its schedule, its last run, and when the next is due."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        answer = client.backups()
    if output == "json":
        print_json(answer)
        return
    now = answer["time"]
    table = Table(box=None, pad_edge=False)
    for column in ("TARGET", "SCHEDULE", "LAST", "RESULT", "ADDED", "NEXT"):
        table.add_column(column)
    for t in answer["targets"]:
        last = t.get("last")
        if t.get("running"):
            result = f"running on {t['running']['node']}"
        elif last is None:
            result = "-"
        elif last["ok"]:
            result = f"ok {last.get('snapshot_id', '')[:8]}".rstrip()
        else:
            result = f"FAILED: {last['error']}"
        due = t.get("next_due")
        table.add_row(
            t["target"],
            t["schedule"],
            ago(last["finished_at"], now) if last else "never",
            result,
            human_bytes(last["data_added"]) if last and last["ok"] else "-",
            "now"
            if due is not None and due <= now
            else f"in {human_seconds(due - now)}"
            if due is not None
            else "-",
        )
    if not answer["targets"]:
        say("no backups in the spec (a volume's backup:, backups.cluster)")
        return
    out.print(table)


@backup_app.command("snapshots")
def snapshots(
    repository: Annotated[str, typer.Argument(help="The repository.", show_default=False)],
    target: Annotated[
        str | None, typer.Option("--target", help="Only this target's snapshots (its key).")
    ] = None,
    output: TableOutput = "table",
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """A repository's snapshots taken by this cluster, oldest first."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        found = client.backup_snapshots(repository, target)
    if output == "json":
        print_json(found)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "TIME", "TARGET"):
        table.add_column(column)
    for snap in found:
        table.add_row(snap["short_id"], snap["time"][:19], snap["target"])
    out.print(table)
