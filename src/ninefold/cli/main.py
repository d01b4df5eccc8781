"""The `ninefold` command.

Exit codes: 0 ok, 1 operation failed, 2 usage or spec error, 3 cluster unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ninefold import __version__
from ninefold.spec import ClusterSpec, SpecError, load_spec, parse_spec

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

app = typer.Typer(
    name="ninefold",
    help="High availability for ordinary services across a handful of machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

T = TypeVar("T")

SpecOption = Annotated[
    Path,
    typer.Option(
        "--spec",
        "-s",
        envvar="NINEFOLD_SPEC",
        help="The cluster spec (YAML). Also NINEFOLD_SPEC.",
        show_default=True,
    ),
]
DEFAULT_SPEC = Path("ninefold.yaml")


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load(path: Path) -> ClusterSpec:
    try:
        return load_spec(path)
    except SpecError as exc:
        for issue in exc.issues:
            err.print(str(issue), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_USAGE) from None


def with_store(spec: ClusterSpec, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run action(store) against the cluster's store; unreachable -> exit 3."""
    from ninefold.agent.daemon import open_store
    from ninefold.store.base import StoreError, StoreUnavailable

    async def run() -> T:
        store = open_store(spec)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable:
        endpoints = ", ".join(spec.store_endpoints())
        raise fail(
            f"cluster {spec.cluster} unreachable: no store member answers at {endpoints}",
            EXIT_UNREACHABLE,
        ) from None
    except StoreError as exc:
        raise fail(f"store error: {exc}") from None


def version_callback(value: bool) -> None:
    if value:
        out.print(f"ninefold {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """ninefold keeps services running, health-checked and failed over across nodes."""


@app.command()
def agent(
    node: Annotated[str, typer.Option("--node", "-n", help="This node's name in the spec.")],
    spec: SpecOption = DEFAULT_SPEC,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where this agent keeps its data. Default: keyed by cluster and node.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Run the agent of one node (in the foreground)."""
    cluster = load(spec)
    if not any(n.name == node for n in cluster.nodes):
        names = ", ".join(n.name for n in cluster.nodes)
        raise fail(f"{spec}: no node named {node!r} (nodes: {names})", EXIT_USAGE)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format=f"%(asctime)s {node} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("grpc", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ninefold.agent.daemon import run_agent
    from ninefold.store.embedded import EtcdNotFound

    try:
        run_agent(cluster, node, data_dir)
    except EtcdNotFound as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


@app.command()
def status(
    spec: SpecOption = DEFAULT_SPEC,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
) -> None:
    """Nodes, services and instances of the cluster."""
    if output not in ("table", "json"):
        raise fail(f"--output must be table or json, not {output!r}", EXIT_USAGE)
    cluster = load(spec)
    from ninefold.cluster_view import read_view

    view = with_store(cluster, lambda store: read_view(store, cluster))
    if output == "json":
        print(json.dumps(view.to_json(), indent=2))
        return
    nodes = Table(title=f"cluster {view.cluster}", title_justify="left")
    for col in ("NODE", "ADDRESS", "ZONE", "STATE", "ROLE"):
        nodes.add_column(col)
    for n in view.nodes:
        colour = {"up": "green", "down": "red", "drained": "yellow"}[n.state]
        role = ", ".join(r for r, on in (("leader", n.leader), ("store", n.store_member)) if on)
        nodes.add_row(n.name, n.address, n.zone, f"[{colour}]{n.state}[/{colour}]", role)
    out.print(nodes)
    services = Table(title="services", title_justify="left")
    for col in ("SERVICE", "MODE", "HEALTHY", "ACTIVE", "TOKEN"):
        services.add_column(col)
    for s in view.services:
        colour = "green" if s.healthy >= s.desired else ("yellow" if s.healthy else "red")
        services.add_row(
            s.name,
            s.mode,
            f"[{colour}]{s.healthy}/{s.desired}[/{colour}]",
            s.active or "",
            str(s.fencing_token or ""),
        )
    out.print(services)
    instances = Table(title="instances", title_justify="left")
    for col in ("INSTANCE", "NODE", "STATE", "HEALTH", "ROLE", "ENDPOINT", "RESTARTS"):
        instances.add_column(col)
    for i in view.instances:
        ports = ",".join(f"{k}={v}" for k, v in i.ports.items())
        instances.add_row(
            i.instance,
            i.node,
            i.state,
            i.health,
            i.role,
            f"{i.address} {ports}".strip(),
            str(i.restarts),
        )
    out.print(instances)


@app.command()
def events(
    spec: SpecOption = DEFAULT_SPEC,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="How many of the newest events.")
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json")] = "text",
) -> None:
    """The event journal: every decision the cluster made, with time and reason."""
    if output not in ("text", "json"):
        raise fail(f"--output must be text or json, not {output!r}", EXIT_USAGE)
    cluster = load(spec)
    from ninefold.agent.journal import read_events
    from ninefold.agent.records import EVENTS, Event

    def show(event: Event) -> None:
        if output == "json":
            print(event.model_dump_json(), flush=True)
        else:
            out.print(event.line(), highlight=False, markup=False)

    async def run(store: Any) -> None:
        for event in await read_events(store, limit):
            show(event)
        if not follow:
            return
        listing = await store.list(EVENTS)
        async with contextlib.aclosing(store.watch(EVENTS, listing.revision + 1)) as changes:
            async for change in changes:
                if change.kind == "put" and change.value:
                    show(Event.decode(change.value))

    with contextlib.suppress(KeyboardInterrupt):
        with_store(cluster, run)


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="The new spec.")],
) -> None:
    """Validate a spec and make it the cluster's desired state."""
    cluster = load(file)
    from ninefold.agent.records import SPEC_KEY
    from ninefold.spec.loading import dump_spec

    text = dump_spec(cluster).encode()

    async def run(store: Any) -> int:
        return await store.put(SPEC_KEY, text)

    revision = with_store(cluster, run)
    out.print(f"applied {file} (store revision {revision})")


async def _update_service(
    store: Any, spec: ClusterSpec, service: str, change: dict[str, Any]
) -> int:
    """Change one service in the store's spec, atomically (compare-and-swap)."""
    from ninefold.agent.leader import read_spec
    from ninefold.agent.records import SPEC_KEY
    from ninefold.spec.loading import dump_spec
    from ninefold.store.base import Compare, Put

    for _ in range(5):
        current = await store.get(SPEC_KEY)
        cluster = await read_spec(store, spec)
        if service not in cluster.services:
            known = ", ".join(sorted(cluster.services)) or "none"
            raise fail(f"no service named {service!r} (services: {known})", EXIT_USAGE)
        services = dict(cluster.services)
        services[service] = services[service].model_copy(update=change)
        updated = cluster.model_copy(update={"services": services})
        try:
            text = dump_spec(updated)
            parse_spec(text, "<scale>")
        except SpecError as exc:
            raise fail(str(exc).splitlines()[0], EXIT_USAGE) from None
        guard = Compare(SPEC_KEY, "mod", "==", current.mod_revision if current else 0)
        result = await store.txn([guard], [Put(SPEC_KEY, text.encode())])
        if result.succeeded:
            return result.revision
    raise fail("the spec kept changing under us; try again")


@app.command()
def scale(
    service: Annotated[str, typer.Argument(help="The service.")],
    replicas: Annotated[int, typer.Argument(help="How many instances it should run.", min=1)],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Set how many instances a service runs."""
    cluster = load(spec)
    with_store(
        cluster, lambda store: _update_service(store, cluster, service, {"replicas": replicas})
    )
    out.print(f"{service} scaled to {replicas}")


@app.command()
def restart(
    service: Annotated[str, typer.Argument(help="The service.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Restart every instance of a service, one at a time (rolling, drained)."""
    cluster = load(spec)
    from ninefold.agent.leader import read_spec
    from ninefold.agent.records import RESTARTS

    async def run(store: Any) -> None:
        current = await read_spec(store, cluster)
        if service not in current.services:
            known = ", ".join(sorted(current.services)) or "none"
            raise fail(f"no service named {service!r} (services: {known})", EXIT_USAGE)
        await store.put(f"{RESTARTS}{service}", str(time.time_ns()).encode())

    with_store(cluster, run)
    out.print(f"{service}: rolling restart asked; `ninefold events -f` shows its progress")


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
