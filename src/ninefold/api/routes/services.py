"""The services: `/v1/services`, one service, and scaling, restarting and
switching one over."""

from typing import Annotated

from fastapi import Body

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.models import Accepted, ScaleIn, ServiceDetailOut, ServiceOut, SwitchoverIn
from ninefold.api.routes.status import read_status
from ninefold.api.routing import ResourceRouter

router = ResourceRouter()


@router.operation(
    "GET", "/v1/services", role="read", tag="reading", model=list[ServiceOut], errors=[503]
)
async def services(ctx: Context) -> list[ServiceOut]:
    return (await read_status(ctx)).services


@router.operation(
    "GET",
    "/v1/services/{name}",
    role="read",
    tag="reading",
    model=ServiceDetailOut,
    errors=[404, 503],
)
async def one_service(ctx: Context, name: str) -> ServiceDetailOut:
    view = await read_status(ctx)
    for item in view.services:
        if item.name == name:
            mine = [i for i in view.instances if i.service == name]
            return ServiceDetailOut(**item.model_dump(), instances=mine)
    raise operations.NotFound(f"no service named {name!r}")


@router.operation(
    "POST",
    "/v1/services/{name}/scale",
    role="operate",
    tag="changing",
    model=Accepted,
    status_code=202,
    errors=[404, 409, 422, 503],
)
async def scale(ctx: Context, name: str, body: ScaleIn) -> Accepted:
    changes = {"replicas": body.replicas}
    revision = await operations.update_service(ctx.store, ctx.spec, name, changes)
    return Accepted(message=f"{name} scaled to {body.replicas} (spec revision {revision})")


@router.operation(
    "POST",
    "/v1/services/{name}/restart",
    role="operate",
    tag="changing",
    model=Accepted,
    status_code=202,
    errors=[404, 409, 503],
)
async def restart(ctx: Context, name: str) -> Accepted:
    """Rolling restart, one instance at a time (409 for an external service)."""
    await operations.request_restart(ctx.store, ctx.spec, name)
    return Accepted(message=f"{name}: rolling restart asked")


@router.operation(
    "POST",
    "/v1/services/{name}/switchover",
    role="operate",
    tag="changing",
    model=Accepted,
    status_code=202,
    errors=[404, 409, 422, 503],
)
async def switchover(
    ctx: Context, name: str, body: Annotated[SwitchoverIn | None, Body()] = None
) -> Accepted:
    """Active-passive only: the active steps down for a standby."""
    to = body.to if body is not None else None
    holder = await operations.request_switchover(ctx.store, ctx.spec, name, to)
    target = to or "the best standby"
    return Accepted(message=f"{name}: switchover from {holder} to {target} asked")
