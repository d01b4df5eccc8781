"""`ninefold status`, `events` and `logs`: what the cluster runs, what it
decided, and what its services print."""

from __future__ import annotations

import contextlib
import json
import re
import time
from datetime import datetime
from typing import Annotated, Any

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
from ninefold.cli.console import EXIT_USAGE, err, fail, out, print_json
from ninefold.client import ApiError, ClusterClient
from ninefold.logs.formats import iso_time
from ninefold.logs.reading import LogLine, merge, parse_since, parse_time

LOG_FOLLOW_WINDOW = 500
"""Lines fetched per instance on each `logs -f` poll, to find the new ones."""
LOG_FOLLOW_INTERVAL = 1.0


_STATE_COLOUR = {"up": "green", "down": "red", "drained": "yellow"}


def status(spec: SpecOption = DEFAULT_SPEC, output: TableOutput = "table") -> None:
    """Nodes, services and instances of the cluster."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        view = client.status()
        volumes = replicated_volumes(client)
    if output == "json":
        print_json({**view, "volumes": volumes} if volumes else view)
        return
    nodes = Table(title=f"cluster {view.get('cluster', '')}", title_justify="left")
    for col in ("NODE", "ADDRESS", "ZONE", "STATE", "ROLE"):
        nodes.add_column(col)
    for n in view.get("nodes", []):
        state = str(n.get("state", ""))
        colour = _STATE_COLOUR.get(state, "white")
        roles = (
            ("leader", n.get("leader")),
            ("store", n.get("store_member")),
            ("witness", n.get("role") == "witness"),
        )
        role = ", ".join(r for r, on in roles if on)
        nodes.add_row(
            n.get("name", ""),
            n.get("address", ""),
            n.get("zone", ""),
            f"[{colour}]{state}[/{colour}]",
            role,
        )
    out.print(nodes)
    services = Table(title="services", title_justify="left")
    for col in ("SERVICE", "MODE", "HEALTHY", "ACTIVE", "TOKEN"):
        services.add_column(col)
    for s in view.get("services", []):
        healthy, desired = s.get("healthy", 0), s.get("desired", 0)
        colour = "green" if healthy >= desired else ("yellow" if healthy else "red")
        services.add_row(
            s.get("name", ""),
            s.get("mode", ""),
            f"[{colour}]{healthy}/{desired}[/{colour}]",
            s.get("active") or "",
            str(s.get("fencing_token") or ""),
        )
    out.print(services)
    instances = Table(title="instances", title_justify="left")
    for col in ("INSTANCE", "NODE", "STATE", "HEALTH", "ROLE", "ENDPOINT", "RESTARTS"):
        instances.add_column(col)
    for i in view.get("instances", []):
        ports = ",".join(f"{k}={v}" for k, v in (i.get("ports") or {}).items())
        state = i.get("state", "")
        if i.get("draining"):
            state += " (draining)"
        instances.add_row(
            i.get("instance", ""),
            i.get("node", ""),
            state,
            i.get("health", ""),
            i.get("role", ""),
            f"{i.get('address') or ''} {ports}".strip(),
            str(i.get("restarts", 0)),
        )
    out.print(instances)
    if view.get("external"):
        out.print(external_table(view["external"]))
    if view.get("vips"):
        vips = Table(title="vips", title_justify="left")
        for col in ("VIP", "FOR", "HOLDER"):
            vips.add_column(col)
        for v in view["vips"]:
            held = v.get("holder")
            vips.add_row(v.get("address", ""), v.get("service", ""), held or "[red]unheld[/red]")
        out.print(vips)
    if volumes:
        out.print(volumes_summary(volumes))


_ENDPOINT_COLOUR = {"healthy": "green", "partial": "yellow", "starting": "yellow"}


def external_table(endpoints: list[dict[str, Any]]) -> Table:
    """The external services' endpoints: the cluster's word for each, every
    node's own verdict (its gateway routes by it) and why one finds it down."""
    table = Table(title="external endpoints", title_justify="left")
    for col in ("SERVICE", "ENDPOINT", "HEALTH", "NODES", "DETAIL"):
        table.add_column(col)
    for e in endpoints:
        health = str(e.get("health", ""))
        nodes = " ".join(f"{n}={v}" for n, v in sorted((e.get("nodes") or {}).items()))
        table.add_row(
            e.get("service", ""),
            e.get("endpoint", ""),
            Text(health, style=_ENDPOINT_COLOUR.get(health, "red")),
            nodes,
            e.get("detail", ""),
        )
    return table


def replicated_volumes(client: ClusterClient) -> list[dict[str, Any]]:
    """The replicated volumes and their copies (`GET /v1/volumes`); none when
    the agent cannot tell (one older than this client)."""
    try:
        return list(client.volumes().get("volumes") or [])
    except ApiError:
        return []


_COPY_COLOUR = {"source": "cyan", "in-sync": "green", "behind": "yellow", "seeding": "yellow"}


def volumes_summary(volumes: list[dict[str, Any]]) -> Table:
    """One line per copy: volume, node, role, state, lag (`ninefold volumes` shows more)."""
    table = Table(title="volumes", title_justify="left")
    for col in ("VOLUME", "NODE", "ROLE", "STATE", "LAG"):
        table.add_column(col)
    for v in volumes:
        name = f"{v.get('service', '')}/{v.get('volume', '')}"
        for c in v.get("copies") or []:
            state = str(c.get("state", ""))
            colour = _COPY_COLOUR.get(state, "red")
            shown = state
            done, total = int(c.get("seed_done") or 0), int(c.get("seed_total") or 0)
            if state == "seeding" and total > 0:
                shown += f" {min(100, 100 * done // total)}%"
            lag = "" if c.get("role") == "source" else f"{float(c.get('lag_seconds') or 0):.1f}s"
            table.add_row(
                name, c.get("node", ""), c.get("role", ""), Text(shown, style=colour), lag
            )
        if not v.get("copies"):
            table.add_row(name, "", "", Text("no copies yet", style="yellow"), "")
    return table


def event_line(event: dict[str, Any]) -> str:
    """`HH:MM:SS.mmm  kind  subject  reason  key=value ...`, as the journal shows it."""
    try:
        stamp = datetime.fromtimestamp(float(event.get("time") or 0))
        when = stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
    except (TypeError, ValueError, OverflowError, OSError):
        when = str(event.get("time", ""))
    data = event.get("data") or {}
    extra = " ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else ""
    parts = [when, event.get("kind"), event.get("subject"), event.get("reason"), extra]
    return "  ".join(str(p) for p in parts if p)


def events(
    spec: SpecOption = DEFAULT_SPEC,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many of the newest events.")
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    output: TextOutput = "text",
) -> None:
    """The event journal: every decision the cluster made, with time and reason."""
    check_output(output, "text", "json")

    def show(event: dict[str, Any]) -> None:
        if output == "json":
            print(json.dumps(event), flush=True)
        else:
            out.print(event_line(event), highlight=False, markup=False, soft_wrap=True)

    with connect(spec) as client, calling(), contextlib.suppress(KeyboardInterrupt):
        for event in client.events(limit):
            show(event)
        if follow:
            for event in client.stream_events():
                show(event)


# --- logs ------------------------------------------------------------------------------------

_PREFIX_COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "red"]


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of `now` (a log's tail) that come after the tail `before` ended.

    The last lines of `before` are looked for in `now`, latest place first; else
    `now` may start with the end of `before` (the window slid); else (the log
    was rotated, or grew by more than the window) every line is new."""
    if not before:
        return now
    tail = before[-20:]
    m = len(tail)
    for end in range(len(now), m - 1, -1):
        if now[end - m : end] == tail:
            return now[end:]
    for j in range(min(len(before), len(now)), 0, -1):
        if now[:j] == before[-j:]:
            return now[j:]
    return now


Source = tuple[str, str, str | None]
"""(what the lines are prefixed with, the node, the instance or None for the agent)."""


def logs(
    service: Annotated[
        str | None, typer.Argument(help="The service whose instances' logs to show.")
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    agent: Annotated[
        bool, typer.Option("--agent", help="The agents' own logs (every node, or --node).")
    ] = False,
    nodes: Annotated[
        list[str] | None,
        typer.Option("--node", help="Only from this node (repeat for more).", show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only lines from then on: a duration ago (30s, 10m, 2h, 1d) or an ISO 8601 time.",
            show_default=False,
        ),
    ] = None,
    grep: Annotated[
        str | None,
        typer.Option(
            "--grep", help="Only lines matching this regular expression.", show_default=False
        ),
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, help="Lines from the end of each log.")
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (polls every second).")
    ] = False,
) -> None:
    """Logs of a service's instances and of the agents, gathered from every node
    and merged by time (docs/logs.md)."""
    if service is None and not agent:
        raise fail("name a SERVICE, or give --agent for the agents' own logs", EXIT_USAGE)
    start = None
    if since is not None:
        try:
            start = iso_time(parse_since(since, time.time()))
        except ValueError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
    if grep is not None:
        try:
            re.compile(grep)
        except re.error as exc:
            raise fail(f"--grep {grep!r} is not a regular expression: {exc}", EXIT_USAGE) from None
    client = connect(spec)
    wanted = set(nodes or [])
    unknown = wanted - {n.name for n in client.spec.nodes}
    if unknown:
        names = ", ".join(n.name for n in client.spec.nodes)
        raise fail(f"no node named {', '.join(sorted(unknown))} in {spec} (nodes: {names})")
    colours: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    warned: set[str] = set()

    def targets() -> list[Source]:
        found: list[Source] = []
        if agent:
            found += [(n.name, n.name, None) for n in client.spec.nodes]
        if service is not None:
            detail = client.service(service)
            for i in sorted(detail.get("instances") or [], key=lambda i: i.get("instance", "")):
                name, node = i.get("instance"), i.get("node")
                if name and node:
                    found.append((str(name), str(node), str(name)))
        return [t for t in found if not wanted or t[1] in wanted]

    def fetch(source: Source, count: int) -> list[LogLine] | None:
        label, node, instance = source
        try:
            url = client.node_url(node)
        except KeyError:
            problem = f"node {node} is not in {spec}"
        else:
            try:
                answer = client.node_log(url, instance, lines=count, since=start, grep=grep)
            except ApiError as exc:
                problem = exc.message
            else:
                warned.discard(label)
                return [
                    LogLine(str(line.get("text", "")), _seconds(line.get("time")))
                    for line in answer.get("lines") or []
                ]
        if label not in warned:
            warned.add(label)
            what = "no agent log" if instance is None else "no log"
            err.print(f"{label}: {what} ({problem})", highlight=False, markup=False)
        return None

    def show(label: str, text: list[str]) -> None:
        width = max([len(i) for i in colours] + [len(label)])
        colour = colours.setdefault(label, _PREFIX_COLOURS[len(colours) % 6])
        for line in text:
            prefix = Text(f"{label:<{width}} | ", style=colour)
            out.print(prefix + Text(line), soft_wrap=True, highlight=False)

    with client, calling(), contextlib.suppress(KeyboardInterrupt):
        found = targets()
        if not found:
            where = f" on {', '.join(sorted(wanted))}" if wanted else ""
            raise fail(f"{service} has no instances{where}")
        fetched: dict[str, list[LogLine]] = {}
        for source in found:
            got = fetch(source, lines)
            if got is not None:
                fetched[source[0]] = got
                seen[source[0]] = [line.text for line in got]
        for label in fetched:  # the prefixes' width and colours, in the sources' order
            colours.setdefault(label, _PREFIX_COLOURS[len(colours) % 6])
        for label, line in merge(fetched):
            show(label, [line.text])
        if not follow:
            if not fetched:
                raise fail(f"no log of {service or 'any agent'} could be read")
            return
        while True:
            time.sleep(LOG_FOLLOW_INTERVAL)
            for source in targets():
                got = fetch(source, LOG_FOLLOW_WINDOW)
                if got is None:
                    continue
                text = [line.text for line in got]
                fresh = new_lines(seen.get(source[0], []), text)
                seen[source[0]] = text
                show(source[0], fresh)


def _seconds(value: object) -> float | None:
    return parse_time(value) if isinstance(value, str) else None
