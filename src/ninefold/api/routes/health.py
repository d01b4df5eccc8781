"""`GET /v1/health`: this agent answers; whether the store does too. Open to anyone."""

import asyncio
import time

from fastapi.responses import Response

from ninefold import __version__
from ninefold.api.context import Context
from ninefold.api.models import HealthOut
from ninefold.api.routing import ResourceRouter
from ninefold.state.keys import SPEC_KEY
from ninefold.store.base import StoreError

HEALTH_TIMEOUT = 3.0
"""Seconds /v1/health waits for the store before calling it unavailable."""

router = ResourceRouter()


@router.operation(
    "GET",
    "/v1/health",
    role=None,
    tag="reading",
    model=HealthOut,
    responses={503: {"model": HealthOut, "description": "the store is unavailable"}},
)
async def health(ctx: Context) -> Response | HealthOut:
    """This agent answers; whether the store does too."""
    try:
        await asyncio.wait_for(ctx.store.get(SPEC_KEY), HEALTH_TIMEOUT)
    except (StoreError, TimeoutError):
        body = HealthOut(node=ctx.node, store="unavailable", version=__version__, time=time.time())
        return Response(body.model_dump_json(), 503, media_type="application/json")
    return HealthOut(node=ctx.node, store="ok", version=__version__, time=time.time())
