"""`ninefold backup ...`: run backups now, list them, check repositories,
list a repository's snapshots (docs/backups.md)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from ninefold import defaults
from ninefold.backup.cluster_restore import RestoreError, restore_cluster
from ninefold.backup.repository import RepositoryConfigError
from ninefold.backup.restic import Restic, ResticError
from ninefold.backup.targets import TAG, repository_of
from ninefold.cli.common import (
    DEFAULT_SPEC,
    SpecOption,
    TableOutput,
    calling,
    check_output,
    connect,
    load,
)
from ninefold.cli.console import (
    EXIT_FAILED,
    EXIT_USAGE,
    ago,
    fail,
    human_bytes,
    human_seconds,
    out,
    print_json,
    say,
)
from ninefold.client import ClusterClient
from ninefold.local import agent_command, spawn_agent
from ninefold.security.files import TlsError

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


def _asked(client: ClusterClient, answer: dict[str, Any], wait: float) -> None:
    """Say what was asked for (or would be, in a dry run) and wait if told to."""
    asked = ", ".join(answer["asked"])
    if answer.get("dry_run"):
        say(f"would ask for: {asked}")
        return
    say(f"asked: {asked}")
    if wait:
        _wait_for(client, answer["asked"], answer["time"], wait)


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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would ask for.")] = False,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Back up now: the leader starts the runs on the nodes holding the data."""
    with connect(spec) as client:
        with calling():
            answer = client.backup_run(target, dry_run=dry_run)
        _asked(client, answer, wait)


@backup_app.command("check")
def check(
    repository: Annotated[
        str | None, typer.Argument(help="The repository; none: every one.", show_default=False)
    ] = None,
    wait: Wait = 0.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would ask for.")] = False,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Run `restic check` on a repository now (on the leader's node)."""
    with connect(spec) as client:
        with calling():
            answer = client.backup_check(repository, dry_run=dry_run)
        _asked(client, answer, wait)


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


def restore(
    what: Annotated[
        str,
        typer.Argument(
            help="SERVICE/VOLUME: the volume to restore; `cluster`: the whole cluster.",
            show_default=False,
        ),
    ],
    snapshot: Annotated[
        str | None,
        typer.Option(
            "--snapshot", help="A snapshot id (or its start), or `latest` (a cluster's default)."
        ),
    ] = None,
    to_service: Annotated[
        bool,
        typer.Option(
            "--to-service",
            help="Into the service's copies: stop the service, restore every copy, start it.",
        ),
    ] = False,
    target: Annotated[
        Path | None,
        typer.Option("--target", help="Into this directory on this machine instead (restic here)."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do it without asking (it asks only on a terminal).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would do.")] = False,
    cancel: Annotated[
        bool,
        typer.Option(
            "--cancel",
            help="Let the service run again after a failed restore (on its copies as they are).",
        ),
    ] = False,
    wait: Wait = 300.0,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="cluster: the repository (its name in the spec) to restore from."
        ),
    ] = None,
    ca_key_from: Annotated[
        str | None,
        typer.Option("--ca-key-from", help="cluster: the repository holding the CA key's backup."),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root", help="cluster: the nodes' data directories are DIR/<node> here."
        ),
    ] = None,
    nodes: Annotated[
        list[str] | None,
        typer.Option("--node", help="cluster: a node whose data lives on this machine (repeat)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="cluster: even where a cluster of the name answers.")
    ] = False,
    start: Annotated[
        bool,
        typer.Option(
            "--start", help="cluster: then start the agents here (logs: <data dir>/agent.log)."
        ),
    ] = False,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Restore a volume from a backup snapshot: into the running service
    (--to-service: its instances stop, every copy is restored, it starts
    again), or into a directory here (--target). `restore cluster --from
    REPO` rebuilds a lost cluster on new machines from its backup: the store
    (spec, tokens, KV, records), the CA, node certificates, the volumes."""
    if what == "cluster":
        _restore_cluster(spec, from_, snapshot or "latest", ca_key_from, data_root, nodes,
                         force, dry_run, start)  # fmt: skip
        return
    service, _, volume = what.partition("/")
    if not service or not volume:
        raise fail(f"{what!r}: give the volume as SERVICE/VOLUME", EXIT_USAGE)
    if cancel:
        with connect(spec) as client, calling():
            client.cancel_restore(service)
        say(f"restore of {service} cancelled: it runs again on its copies as they are")
        return
    if snapshot is None:
        raise fail("say which snapshot: --snapshot ID (or latest)", EXIT_USAGE)
    if to_service == (target is not None):
        raise fail("say where: --to-service or --target DIR (one of them)", EXIT_USAGE)
    if target is not None:
        _restore_here(spec, service, volume, snapshot, target, dry_run)
        return
    with connect(spec) as client:
        with calling():
            plan = client.restore(service, volume, snapshot, dry_run=True)
        for line in plan["plan"]:
            say(f"{'would ' if dry_run else ''}{line}")
        if dry_run:
            return
        if not yes and not sys.stdin.isatty():
            raise fail("not restored: no terminal to ask on (pass --yes)", EXIT_USAGE)
        if not yes:
            try:
                agreed = typer.confirm(f"Stop {service} and replace {what}'s data?", err=True)
            except (typer.Abort, click.Abort):
                agreed = False
            if not agreed:
                raise fail("not restored (answer y, or pass --yes)")
        with calling():
            asked = client.restore(service, volume, plan["snapshot"])
        say(f"restore of {what} from {asked['snapshot'][:8]} asked")
        if wait:
            _wait_restore(client, service, asked["run_id"], wait)


def _wait_restore(client: ClusterClient, service: str, run_id: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    said = ""
    while True:
        with calling():
            record = next((r for r in client.restores() if r["service"] == service), None)
        if record is None or record["run_id"] != run_id:
            raise fail(f"the restore of {service} is gone (another one replaced it?)")
        state = record["state"]
        if state != said:
            say(f"{service}: {state}" + (f" ({', '.join(record['done'])} done)" if record["done"]
                                         else ""))  # fmt: skip
            said = state
        if state == "done":
            return
        if state == "failed":
            errors = "; ".join(f"{n}: {e}" for n, e in record["errors"].items())
            raise fail(
                f"the restore failed: {errors}; {service} stays stopped: restore again, or --cancel"
            )
        if state == "cancelled":
            raise fail(f"the restore of {service} was cancelled")
        if time.monotonic() > deadline:
            raise fail(f"the restore is still {state} after {seconds:g}s")
        time.sleep(WAIT_POLL)


def _restore_here(
    spec_path: Path, service: str, volume: str, snapshot: str, target: Path, dry_run: bool
) -> None:
    """restic on this machine, with the spec file's repository description
    (its password file or variable must be here too)."""
    cluster = load(spec_path)
    volume_spec = cluster.services.get(service, None)
    if volume_spec is None or volume not in volume_spec.volumes:
        raise fail(f"no volume {service}/{volume} in {spec_path}", EXIT_USAGE)
    backup = volume_spec.volumes[volume].backup
    if backup is None:
        raise fail(f"{service}/{volume} has no backup in {spec_path}", EXIT_USAGE)
    if target.exists() and any(target.iterdir()):
        raise fail(f"{target} is not empty: restore into a new or empty directory", EXIT_USAGE)
    key = f"volume/{service}/{volume}/{backup.repository}"
    restic = Restic(repository_of(cluster.backups.repositories[backup.repository]))
    tags = [TAG, f"cluster={cluster.cluster}", f"target={key}"]

    async def go() -> str:
        found = await restic.snapshots(tags=tags, no_lock=True)
        chosen = [s for s in found if snapshot == "latest" or s.id.startswith(snapshot)]
        if not chosen:
            raise fail(f"no snapshot {snapshot!r} of {key}", EXIT_USAGE)
        if snapshot != "latest" and len(chosen) > 1:
            raise fail(f"more than one snapshot starts with {snapshot!r}: give more", EXIT_USAGE)
        if dry_run:
            return f"would restore snapshot {chosen[-1].short_id} of {key} into {target}"
        await restic.restore(chosen[-1].id, target)
        return f"restored snapshot {chosen[-1].short_id} of {key} into {target}"

    try:
        say(asyncio.run(go()))
    except (ResticError, RepositoryConfigError) as exc:
        raise fail(str(exc)) from None


def _restore_cluster(
    spec_path: Path,
    repository: str | None,
    snapshot: str,
    ca_key_from: str | None,
    data_root: Path | None,
    nodes: list[str] | None,
    force: bool,
    dry_run: bool,
    start: bool,
) -> None:
    cluster = load(spec_path)
    if repository is None:
        raise fail("say where the backup is: --from REPOSITORY (a name in the spec)", EXIT_USAGE)
    if repository not in cluster.backups.repositories:
        known = ", ".join(sorted(cluster.backups.repositories)) or "none"
        raise fail(f"no repository named {repository!r} in {spec_path} (repositories: {known})",
                   EXIT_USAGE)  # fmt: skip
    names = nodes or [n.name for n in cluster.nodes]
    unknown = [n for n in names if n not in {m.name for m in cluster.nodes}]
    if unknown:
        raise fail(f"no node named {unknown[0]!r} in {spec_path}", EXIT_USAGE)
    dirs = {
        n: (data_root / n if data_root is not None else defaults.data_dir(cluster.cluster, n))
        for n in names
    }
    if not force:
        for node in cluster.nodes:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((node.address, node.ports.api), timeout=1.0),
            ):
                raise fail(
                    f"a cluster answers at {node.name} ({node.host_port(node.ports.api)}): "
                    "not restoring over a live cluster (stop it, or pass --force)"
                )
    taken = [str(d / "etcd") for d in dirs.values() if (d / "etcd").exists()]
    if taken:
        raise fail(f"{taken[0]} exists: a cluster restore needs new data directories")
    if dry_run:
        say(f"would restore cluster {cluster.cluster} from {repository} (snapshot {snapshot})")
        for n, d in sorted(dirs.items()):
            say(f"would restore {n} into {d}")
        return
    started = time.monotonic()
    try:
        done = asyncio.run(
            restore_cluster(cluster, spec_path, repository, dirs, snapshot, ca_key_from, say)
        )
    except (RestoreError, ResticError, RepositoryConfigError, TlsError, OSError) as exc:
        raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    say(
        f"cluster {cluster.cluster} restored from snapshot {done.snapshot[:8]} in "
        f"{time.monotonic() - started:.1f}s: store members {', '.join(done.members) or 'none'}, "
        f"volumes {', '.join(done.volumes) or 'none'}" + ("" if start else "; start the agents:")
    )
    for n, d in sorted(dirs.items()):
        if start:
            proc = spawn_agent(
                agent_command(spec_path.absolute(), n, d.absolute()), d / "agent.log",
                f"ninefold restore cluster: starting agent {n}", cwd=d,
            )  # fmt: skip
            say(f"started the agent of {n} (pid {proc.pid}, log {d / 'agent.log'})")
        else:
            say(f"  ninefold agent --spec {spec_path} --node {n} --data-dir {d}")
