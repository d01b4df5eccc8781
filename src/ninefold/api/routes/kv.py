"""The users' key-value store: `/v1/kv`, `/v1/kv/{key}` and `/v1/kv-watch`
(server-sent events: what is under a prefix, then every change to it).

The watch is not `/v1/kv/watch`: that is the key named `watch`."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.models import KvItemOut, KvPutIn, KvWrittenOut
from ninefold.api.routing import ResourceRouter

router = ResourceRouter()


@router.operation(
    "GET", "/v1/kv", role="read", tag="key-value", model=list[KvItemOut], errors=[503]
)
async def kv_list(ctx: Context, prefix: str = "") -> list[KvItemOut]:
    items = await operations.kv_list(ctx.store, prefix)
    return [KvItemOut(key=i.key, value=i.value, revision=i.revision) for i in items]


async def kv_watch_start(ctx: Context, prefix: str = "") -> operations.KvChange:
    """What is under prefix as a watch opens, the stream's first message.

    A dependency, so a store that does not answer gives a 503 rather than a
    stream that breaks after its headers."""
    return await operations.kv_listing(ctx.store, prefix)


@router.operation(
    "GET",
    "/v1/kv-watch",
    role="read",
    tag="key-value",
    response_class=EventSourceResponse,
    errors=[503],
)
async def kv_watch(
    ctx: Context,
    listing: Annotated[operations.KvChange, Depends(kv_watch_start)],
    prefix: str = "",
) -> AsyncIterable[ServerSentEvent]:
    """Server-sent events, one JSON object per `data:` line: first `{"type":
    "listing", "revision", "items": [{"key", "value", "revision"}]}` (every key
    starting with prefix, as `GET /v1/kv` lists them, at that store
    revision), then `{"type": "put", "key", "value", "revision"}` and
    `{"type": "delete", "key", "revision"}` for every change after it, in
    order. A broken store watch is resumed where it stopped; if the store has
    compacted that far, `{"type": "reset", "revision", "items"}`: a fresh
    listing that replaces everything seen before. A `: ping` comment every 15 s
    of quiet."""
    queue: asyncio.Queue[operations.KvChange | None] = asyncio.Queue()
    closed = ctx.streams.open()  # the server stopping puts None in it

    async def follow() -> None:
        async for change in operations.kv_follow(ctx.store, prefix, listing.revision):
            queue.put_nowait(change)

    async def close() -> None:
        await closed.get()
        queue.put_nowait(None)

    tasks = [asyncio.create_task(follow()), asyncio.create_task(close())]
    try:
        change: operations.KvChange | None = listing
        while change is not None:
            yield ServerSentEvent(raw_data=json.dumps(_message(change), separators=(",", ":")))
            change = await queue.get()
    finally:
        ctx.streams.discard(closed)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _message(change: operations.KvChange) -> dict[str, Any]:
    if change.kind in ("listing", "reset"):
        items = [{"key": i.key, "value": i.value, "revision": i.revision} for i in change.items]
        return {"type": change.kind, "revision": change.revision, "items": items}
    message: dict[str, Any] = {"type": change.kind, "key": change.key}
    if change.kind == "put":
        message["value"] = change.value
    message["revision"] = change.revision
    return message


@router.operation(
    "GET",
    "/v1/kv/{key:path}",
    role="read",
    tag="key-value",
    model=KvItemOut,
    errors=[404, 422, 503],
)
async def kv_get(ctx: Context, key: str) -> KvItemOut:
    item = await operations.kv_get(ctx.store, key)
    return KvItemOut(key=item.key, value=item.value, revision=item.revision)


@router.operation(
    "PUT",
    "/v1/kv/{key:path}",
    role="operate",
    tag="key-value",
    model=KvWrittenOut,
    errors=[409, 422, 503],
)
async def kv_put(
    ctx: Context,
    key: str,
    body: KvPutIn,
    cas: Annotated[int | None, Query(ge=0, description="0: only if absent")] = None,
) -> KvWrittenOut:
    revision = await operations.kv_put(ctx.store, key, body.value, cas)
    return KvWrittenOut(key=key, revision=revision)


@router.operation(
    "DELETE",
    "/v1/kv/{key:path}",
    role="operate",
    tag="key-value",
    model=KvWrittenOut,
    errors=[404, 409, 422, 503],
)
async def kv_delete(
    ctx: Context,
    key: str,
    cas: Annotated[int | None, Query(ge=0)] = None,
) -> KvWrittenOut:
    revision = await operations.kv_delete(ctx.store, key, cas)
    return KvWrittenOut(key=key, revision=revision)
