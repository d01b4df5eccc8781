"""API and join tokens: the first one (`/v1/bootstrap`), then `/v1/tokens`."""

from typing import Annotated

from fastapi import Body
from fastapi.responses import Response

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.models import TokenCreatedOut, TokenIn, TokenOut
from ninefold.api.routing import ResourceRouter
from ninefold.security import tokens
from ninefold.state import tokens as token_records

router = ResourceRouter()


@router.operation(
    "POST",
    "/v1/bootstrap",
    role=None,
    tag="tokens",
    model=TokenCreatedOut,
    status_code=201,
    errors=[409, 503],
)
async def token_bootstrap(ctx: Context) -> TokenCreatedOut:
    """The cluster's first admin token; refused (409) once it exists. From
    then on every route but /v1/health needs a token."""
    token = await token_records.bootstrap(ctx.store)
    if token is None:
        raise operations.Conflict("this cluster was bootstrapped already: ask an admin")
    record = await token_records.authenticate(ctx.store, token)
    return TokenCreatedOut(token=token, **record.public())


@router.operation(
    "POST",
    "/v1/tokens",
    role="admin",
    tag="tokens",
    model=TokenCreatedOut,
    status_code=201,
    errors=[422, 503],
)
async def token_create(ctx: Context, body: Annotated[TokenIn, Body()]) -> TokenCreatedOut:
    """A new API token with a role, or a join token with a number of uses."""
    if body.kind == "api" and body.uses is not None:
        raise operations.Invalid("uses applies to join tokens (kind: join)")
    token, record = tokens.new_token(body.kind, body.role, body.name, body.ttl, body.uses)
    await token_records.store_token(ctx.store, record)
    return TokenCreatedOut(token=token, **record.public())


@router.operation(
    "GET", "/v1/tokens", role="admin", tag="tokens", model=list[TokenOut], errors=[503]
)
async def token_list(ctx: Context) -> list[TokenOut]:
    """Every token's record; never a token or its hash."""
    return [TokenOut(**r.public()) for r in await token_records.list_records(ctx.store)]


@router.operation(
    "DELETE", "/v1/tokens/{ident}", role="admin", tag="tokens", status_code=204, errors=[404, 503]
)
async def token_revoke(ctx: Context, ident: str) -> Response:
    """Revoke a token: it stops working at once."""
    if not await token_records.revoke(ctx.store, ident):
        raise operations.NotFound(f"no token with id {ident!r}")
    return Response(status_code=204)
