"""The instances: `/v1/instances`, one instance, its log, and moving it."""

import asyncio
from typing import Annotated

from fastapi import Query
from fastapi.responses import PlainTextResponse

from ninefold import defaults, operations
from ninefold.api.context import Context
from ninefold.api.models import Accepted, InstanceOut, MoveIn
from ninefold.api.routes.logs import Grep, Since, log_filters
from ninefold.api.routes.status import read_status
from ninefold.api.routing import ResourceRouter
from ninefold.logs.reading import read_log
from ninefold.state.keys import status_key
from ninefold.state.reads import read_spec
from ninefold.supervisor.logs import tail

MAX_LINES = 100_000
"""The most lines of a log one request may ask for."""

router = ResourceRouter()


@router.operation(
    "GET", "/v1/instances", role="read", tag="reading", model=list[InstanceOut], errors=[503]
)
async def instances(ctx: Context) -> list[InstanceOut]:
    return (await read_status(ctx)).instances


@router.operation(
    "GET",
    "/v1/instances/{instance}",
    role="read",
    tag="reading",
    model=InstanceOut,
    errors=[404, 503],
)
async def one_instance(ctx: Context, instance: str) -> InstanceOut:
    for item in (await read_status(ctx)).instances:
        if item.instance == instance:
            return item
    raise operations.NotFound(f"no instance named {instance!r}")


@router.operation(
    "GET",
    "/v1/instances/{instance}/log",
    role="read",
    tag="reading",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "the last lines of the instance's log",
        }
    },
    errors=[404, 422, 503],
)
async def instance_log(
    ctx: Context,
    instance: str,
    lines: Annotated[int, Query(ge=1, le=MAX_LINES)] = 100,
    since: Since = None,
    grep: Grep = None,
) -> PlainTextResponse:
    """Answered only by the agent of the node the instance runs on; `since`
    and `grep` as for `/v1/logs/instances/{instance}`, which adds each line's time."""
    node = ctx.node
    here = await ctx.store.get(status_key(node, instance)) is not None
    if not here:
        where = await operations.instance_node(ctx.store, instance)
        if where != node:
            cluster = await read_spec(ctx.store, ctx.spec)
            try:
                target = cluster.node(where)
                agent = f" at http://{target.host_port(target.ports.api)}"
            except KeyError:
                agent = ""
            raise operations.NotFound(
                f"{instance} runs on node {where}: its log is served by {where}'s agent{agent}"
            )
    if ctx.log_dir is None:
        raise operations.NotFound(f"node {node} keeps no instance logs")
    path = ctx.log_dir / f"{instance}.log"
    if since or grep:
        start, pattern = log_filters(since, grep)
        found = await asyncio.to_thread(
            read_log, path, lines=lines, since=start, grep=pattern, backups=defaults.LOG_BACKUPS
        )
        text = [line.text for line in found]
    else:
        text = await asyncio.to_thread(tail, path, lines, backups=defaults.LOG_BACKUPS)
    return PlainTextResponse("".join(f"{line}\n" for line in text))


@router.operation(
    "POST",
    "/v1/instances/{instance}/move",
    role="operate",
    tag="changing",
    model=Accepted,
    status_code=202,
    errors=[404, 409, 422, 503],
)
async def move(ctx: Context, instance: str, body: MoveIn) -> Accepted:
    source = await operations.request_move(ctx.store, ctx.spec, instance, body.node)
    return Accepted(message=f"{instance}: move from {source} to {body.node} asked")
