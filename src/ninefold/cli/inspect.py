"""`ninefold status`, `events` and `logs`: what the cluster runs, what it
decided, and what its services print."""

from __future__ import annotations

import contextlib
import json
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
from ninefold.cli.console import err, fail, out, print_json
from ninefold.client import ApiError, ClusterClient

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
        roles = (("leader", n.get("leader")), ("store", n.get("store_member")))
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


def logs(
    service: Annotated[str, typer.Argument(help="The service.")],
    spec: SpecOption = DEFAULT_SPEC,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, help="Lines from the end of each log.")
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (polls every second).")
    ] = False,
) -> None:
    """A service's logs, gathered from every node that runs one of its instances."""
    client = connect(spec)
    colours: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    warned: set[str] = set()

    def targets() -> list[tuple[str, str]]:
        detail = client.service(service)
        found = []
        for i in sorted(detail.get("instances") or [], key=lambda i: i.get("instance", "")):
            name, node = i.get("instance"), i.get("node")
            if name and node:
                found.append((str(name), str(node)))
        return found

    def fetch(instance: str, node: str, count: int) -> list[str] | None:
        try:
            url = client.node_url(node)
        except KeyError:
            problem = f"node {node} is not in {spec}"
        else:
            try:
                text = client.instance_log(url, instance, count)
            except ApiError as exc:
                problem = exc.message
            else:
                warned.discard(instance)
                return text
        if instance not in warned:
            warned.add(instance)
            err.print(f"{instance}: no log ({problem})", highlight=False, markup=False)
        return None

    def show(instance: str, text: list[str]) -> None:
        width = max([len(i) for i in colours] + [len(instance)])
        colour = colours.setdefault(instance, _PREFIX_COLOURS[len(colours) % 6])
        for line in text:
            prefix = Text(f"{instance:<{width}} | ", style=colour)
            out.print(prefix + Text(line), soft_wrap=True, highlight=False)

    with client, calling(), contextlib.suppress(KeyboardInterrupt):
        found = targets()
        if not found:
            raise fail(f"{service} has no instances")
        fetched = 0
        for instance, node in found:
            text = fetch(instance, node, lines)
            if text is None:
                continue
            fetched += 1
            seen[instance] = text
            show(instance, text)
        if not follow:
            if not fetched:
                raise fail(f"no log of {service} could be read")
            return
        while True:
            time.sleep(LOG_FOLLOW_INTERVAL)
            for instance, node in targets():
                text = fetch(instance, node, LOG_FOLLOW_WINDOW)
                if text is None:
                    continue
                fresh = new_lines(seen.get(instance, []), text)
                seen[instance] = text
                show(instance, fresh)
