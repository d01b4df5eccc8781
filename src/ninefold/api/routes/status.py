"""`GET /v1/status`: the whole picture, which the node, service and instance
routes answer parts of."""

from ninefold.api.context import ApiContext, Context
from ninefold.api.models import StatusOut
from ninefold.api.routing import ResourceRouter
from ninefold.state.view import read_view

router = ResourceRouter()


async def read_status(ctx: ApiContext) -> StatusOut:
    """The cluster as the store has it now (the agent's own spec while it holds none)."""
    return StatusOut.model_validate((await read_view(ctx.store, ctx.spec)).to_json())


@router.operation("GET", "/v1/status", role="read", tag="reading", model=StatusOut, errors=[503])
async def status(ctx: Context) -> StatusOut:
    """The whole picture, as `ninefold status -o json`."""
    return await read_status(ctx)
