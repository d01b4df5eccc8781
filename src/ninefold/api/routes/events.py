"""The event journal: `GET /v1/events` (the newest) and `GET /v1/events/stream`
(server-sent events as they are written)."""

import asyncio
import contextlib
from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import Depends, Query
from fastapi.sse import EventSourceResponse

from ninefold import defaults
from ninefold.api.context import Context
from ninefold.api.models import EventOut
from ninefold.api.routing import ResourceRouter
from ninefold.api.streams import follow_events
from ninefold.state.keys import EVENTS
from ninefold.state.reads import read_events

router = ResourceRouter()


@router.operation(
    "GET", "/v1/events", role="read", tag="reading", model=list[EventOut], errors=[422, 503]
)
async def events(
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=defaults.EVENTS_KEEP * 10)] = 100,
) -> list[EventOut]:
    """The newest `limit` events, oldest first."""
    return [EventOut.model_validate(e.model_dump()) for e in await read_events(ctx.store, limit)]


async def events_now(ctx: Context) -> int:
    """The store's revision as a stream opens, from which it follows the journal.

    A dependency, so a store that does not answer gives a 503 rather than a
    stream that breaks after its headers."""
    return (await ctx.store.list(EVENTS)).revision


@router.operation(
    "GET",
    "/v1/events/stream",
    role="read",
    tag="reading",
    response_class=EventSourceResponse,
    errors=[503],
)
async def event_stream(
    ctx: Context,
    revision: Annotated[int, Depends(events_now)],
) -> AsyncIterable[EventOut]:
    """Server-sent events: one `data: {event}` per new event, a `: ping`
    comment every 15 s of quiet."""
    queue = ctx.streams.open()
    follower = asyncio.create_task(follow_events(ctx.store, revision, queue))
    try:
        while (event := await queue.get()) is not None:
            yield EventOut.model_validate(event.model_dump())
    finally:
        ctx.streams.discard(queue)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
