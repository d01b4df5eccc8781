"""The nodes: `/v1/nodes`, one node, draining one and quarantining one."""

import asyncio
from typing import Annotated

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.join import signing_files
from ninefold.api.models import Accepted, NodeOut
from ninefold.api.routes.status import read_status
from ninefold.api.routing import ResourceRouter
from ninefold.quarantine import quarantine as quarantine_node
from ninefold.security.ca import load_ca
from ninefold.security.files import TlsError

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


class QuarantineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", description="why, for the record and the events")


class QuarantinedOut(BaseModel):
    node: str
    revoked: list[str] = Field(description="serial numbers revoked (hexadecimal)")
    tokens: list[str] = Field(description="ids of the node's tokens deleted")
    pool: str | None = Field(description="its pool: the leader fences and replaces it")
    message: str


@router.operation(
    "POST",
    "/v1/nodes/{name}/quarantine",
    role="admin",
    tag="changing",
    model=QuarantinedOut,
    errors=[404, 409, 503],
)
async def quarantine(
    ctx: Context, name: str, body: Annotated[QuarantineIn, Body()]
) -> QuarantinedOut:
    """Revoke a node's certificates and tokens and drain it; the leader fences,
    removes and replaces it when it belongs to a pool (docs/pools.md)."""
    files = signing_files(ctx, "a revocation list", "ask")
    if files is None:
        raise operations.Conflict("this cluster has no CA (no security.tls): nothing to revoke")
    ca_cert, ca_key = files
    try:
        ca = await asyncio.to_thread(load_ca, ca_cert, ca_key)
    except TlsError as exc:
        raise operations.Conflict(str(exc)) from None
    done = await quarantine_node(
        ctx.store, ctx.spec, name, ca, str(ca_cert), body.reason, by=ctx.node
    )
    record = done.record
    if done.unknown_certificate:
        said = "no certificate of it is known (none revoked); "
    else:
        said = f"certificate(s) {', '.join(record.serials)} revoked; "
    said += f"{len(record.tokens)} token(s) deleted; drained; "
    if record.pool is not None:
        said += f"the leader fences it through pool {record.pool} and replaces it"
    else:
        said += "it is in no pool: power it off yourself (its open connections stay until then)"
    return QuarantinedOut(
        node=name, revoked=record.serials, tokens=record.tokens, pool=record.pool, message=said
    )
