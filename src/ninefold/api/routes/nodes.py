"""The nodes: `/v1/nodes`, one node, and draining one."""

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.models import Accepted, NodeOut
from ninefold.api.routes.status import read_status
from ninefold.api.routing import ResourceRouter

router = ResourceRouter()


@router.operation("GET", "/v1/nodes", role="read", tag="reading", model=list[NodeOut], errors=[503])
async def nodes(ctx: Context) -> list[NodeOut]:
    return (await read_status(ctx)).nodes


@router.operation(
    "GET", "/v1/nodes/{name}", role="read", tag="reading", model=NodeOut, errors=[404, 503]
)
async def one_node(ctx: Context, name: str) -> NodeOut:
    for item in (await read_status(ctx)).nodes:
        if item.name == name:
            return item
    raise operations.NotFound(f"no node named {name!r}")


@router.operation(
    "POST",
    "/v1/nodes/{name}/drain",
    role="operate",
    tag="changing",
    model=Accepted,
    status_code=202,
    errors=[404, 503],
)
async def drain(ctx: Context, name: str) -> Accepted:
    await operations.drain(ctx.store, ctx.spec, name)
    return Accepted(message=f"{name}: drain asked; its instances move away")


@router.operation(
    "POST",
    "/v1/nodes/{name}/undrain",
    role="operate",
    tag="changing",
    model=Accepted,
    status_code=202,
    errors=[404, 503],
)
async def undrain(ctx: Context, name: str) -> Accepted:
    await operations.undrain(ctx.store, ctx.spec, name)
    return Accepted(message=f"{name}: takes instances again")
