"""The users' key-value store: `/v1/kv` and `/v1/kv/{key}`."""

from typing import Annotated

from fastapi import Query

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
