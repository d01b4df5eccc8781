"""Logs with their times: this node's agent log (`/v1/logs/agent`) and the log
of an instance running here (`/v1/logs/instances/{instance}`), filtered by
`since`, `grep` and `lines`. `ninefold logs` asks every node and merges the
answers by time; docs/logs.md."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel

from ninefold import defaults, operations
from ninefold.api.context import ApiContext, Context
from ninefold.api.routing import ResourceRouter
from ninefold.logs.formats import iso_time
from ninefold.logs.reading import agent_log_path, parse_since, read_log
from ninefold.state.keys import status_key

MAX_LINES = 100_000
"""The most lines one request may ask for."""
MAX_GREP = 1000
"""The longest pattern `grep` takes."""

router = ResourceRouter()


class LogLineOut(BaseModel):
    time: str | None
    """ISO 8601 UTC: the line's own time, else that of the last line before it
    with one; null if none."""
    text: str


class LogOut(BaseModel):
    node: str
    source: str
    """`agent`, or the instance's name."""
    lines: list[LogLineOut]


Lines = Annotated[int, Query(ge=1, le=MAX_LINES, description="At most this many, the last ones.")]
Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Only lines from this time on: an ISO 8601 time or a duration ago (10m, 2h).",
    ),
]
Grep = Annotated[
    str | None,
    Query(max_length=MAX_GREP, description="Only lines matching this regular expression."),
]


def log_filters(since: str | None, grep: str | None) -> tuple[float | None, re.Pattern[str] | None]:
    start = None
    if since:
        try:
            start = parse_since(since, time.time())
        except ValueError as exc:
            raise operations.Invalid(str(exc).replace("--since", "since", 1)) from None
    pattern = None
    if grep:
        try:
            pattern = re.compile(grep)
        except re.error as exc:
            raise operations.Invalid(f"grep {grep!r} is not a regular expression: {exc}") from None
    return start, pattern


async def _read(
    ctx: ApiContext, source: str, path: Path, lines: int, since: str | None, grep: str | None
) -> LogOut:
    start, pattern = log_filters(since, grep)
    found = await asyncio.to_thread(
        read_log, path, lines=lines, since=start, grep=pattern, backups=defaults.LOG_BACKUPS
    )
    return LogOut(
        node=ctx.node,
        source=source,
        lines=[
            LogLineOut(time=None if line.time is None else iso_time(line.time), text=line.text)
            for line in found
        ],
    )


@router.operation(
    "GET", "/v1/logs/agent", role="read", tag="reading", model=LogOut, errors=[404, 422, 503]
)
async def agent_log(
    ctx: Context, lines: Lines = 100, since: Since = None, grep: Grep = None
) -> LogOut:
    """This node's agent log (`<data dir>/agent.log`), the agent answering only."""
    if ctx.log_dir is None:
        raise operations.NotFound(f"node {ctx.node} keeps no logs")
    return await _read(ctx, "agent", agent_log_path(ctx.log_dir.parent), lines, since, grep)


@router.operation(
    "GET",
    "/v1/logs/instances/{instance}",
    role="read",
    tag="reading",
    model=LogOut,
    errors=[404, 422, 503],
)
async def instance_log(
    ctx: Context, instance: str, lines: Lines = 100, since: Since = None, grep: Grep = None
) -> LogOut:
    """The log of an instance this node runs (404 naming its node otherwise)."""
    if await ctx.store.get(status_key(ctx.node, instance)) is None:
        where = await operations.instance_node(ctx.store, instance)
        if where != ctx.node:
            raise operations.NotFound(f"{instance} runs on node {where}, not {ctx.node}")
    if ctx.log_dir is None or "/" in instance or instance.startswith("."):
        raise operations.NotFound(f"node {ctx.node} keeps no log of {instance}")
    return await _read(ctx, instance, ctx.log_dir / f"{instance}.log", lines, since, grep)
