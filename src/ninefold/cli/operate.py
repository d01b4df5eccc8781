"""`ninefold apply`, `scale`, `restart`, `move`, `switchover`, `drain` and
`undrain`: the changes an operator asks of a running cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.text import Text

from ninefold.cli.common import DEFAULT_SPEC, SpecOption, calling, client_for, connect, load
from ninefold.cli.console import EXIT_FAILED, EXIT_USAGE, err, fail, out, progress, say


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


WaitOption = Annotated[
    float,
    typer.Option(
        "--wait",
        "-w",
        min=0,
        help="Seconds to wait for every instance to run, showing what each waits "
        "for (a new replica's first copy of a replicated volume, with its progress). "
        "0: do not wait.",
    ),
]


def ready(instance: dict[str, Any]) -> bool:
    """Running and healthy (or unchecked), or a cold standby."""
    if instance.get("state") == "standby":
        return True
    return instance.get("state") == "running" and instance.get("health") in ("healthy", "none")


def waiting_for(service: dict[str, Any]) -> str | None:
    """What the service still waits for (None: every instance ready)."""
    instances = service.get("instances") or []
    desired = int(service.get("desired") or 0)
    busy = [i for i in instances if not ready(i)]
    if len(instances) >= desired and not busy:
        return None
    parts = [f"{service['name']}: {len(instances) - len(busy)} of {desired} ready"]
    for i in busy:
        detail = i.get("detail") or i.get("health") or ""
        parts.append(
            f"{i['instance']} on {i['node']} {i['state']}" + (f" ({detail})" if detail else "")
        )
    return "; ".join(parts)


def wait_ready(client: Any, service: str, seconds: float) -> None:
    """Poll the service until every instance is ready, showing progress; a
    non-zero exit when `seconds` pass first."""
    deadline = time.monotonic() + seconds
    with progress(f"{service}: waiting for its instances") as report:
        while True:
            with calling():
                now = client.service(service)
            pending = waiting_for(now)
            if pending is None:
                break
            report(pending)
            if time.monotonic() >= deadline:
                raise fail(f"{service}: not ready after {seconds:g}s: {pending}", EXIT_FAILED)
            time.sleep(0.5)
    say(f"{service}: every instance ready")


def scale(
    service: Annotated[str, typer.Argument(help="The service.")],
    replicas: Annotated[int, typer.Argument(help="How many instances it should run.", min=1)],
    spec: SpecOption = DEFAULT_SPEC,
    wait: WaitOption = 0,
) -> None:
    """Set how many instances a service runs."""
    with connect(spec) as client:
        with calling():
            answer = client.scale(service, replicas)
        accepted(answer, f"{service} scaled to {replicas}")
        if wait:
            wait_ready(client, service, wait)


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
    wait: WaitOption = 0,
) -> None:
    """Move one instance to another node."""
    with connect(spec) as client:
        with calling():
            answer = client.move(instance, node)
            service = client.instance(instance)["service"] if wait else ""
        accepted(answer, f"{instance}: moving to {node}")
        if wait:
            wait_ready(client, service, wait)


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
