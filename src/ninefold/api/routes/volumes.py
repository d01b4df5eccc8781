"""`GET /v1/volumes`: the copies of the replicated volumes, their lag, bytes
behind and last sync (docs/volumes.md#watching-the-copies)."""

import time
from typing import Annotated

from fastapi import Query

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.models import VolumesOut
from ninefold.api.routing import ResourceRouter
from ninefold.state.keys import NODES, VOLUMES, last_segment
from ninefold.state.reads import read_spec
from ninefold.state.records import CopyRecord
from ninefold.state.volume_view import build_volumes_view, copy_of_key

router = ResourceRouter()


@router.operation(
    "GET", "/v1/volumes", role="read", tag="reading", model=VolumesOut, errors=[404, 503]
)
async def volumes(
    ctx: Context,
    service: Annotated[
        str | None, Query(description="only this service's volumes (404 if there is none)")
    ] = None,
) -> VolumesOut:
    """Every volume with `replicate: continuous`, each with its copies: the
    source's, then the others', with their state, lag, bytes behind and last sync."""
    spec = await read_spec(ctx.store, ctx.spec)
    if service is not None and service not in spec.services:
        known = ", ".join(sorted(spec.services)) or "none"
        raise operations.NotFound(f"no service named {service!r} (services: {known})")
    alive = [last_segment(i.key) for i in (await ctx.store.list(NODES)).items]
    copies = []
    for item in (await ctx.store.list(VOLUMES)).items:
        where = copy_of_key(item.key)
        if where is None:
            continue
        try:
            record = CopyRecord.decode(item.value)
        except ValueError:
            continue  # a record this agent cannot read: left out, not an error
        copies.append((where[0], where[1], record))
    view = build_volumes_view(spec, copies, alive, time.time(), service)
    return VolumesOut.model_validate(view.to_json())
