"""Who may call which API route: bearer tokens with a role.

Every route names the role it needs once, where it is declared
(`ResourceRouter.operation`, api/routing.py): that adds the check `needs(role)`
and documents the role and the 401 and 403 answers (`role_note`,
`role_responses`). `/v1/health`, `/v1/bootstrap`, `/v1/ca`, `/v1/join` and the
dashboard's files need none. Checking starts once the cluster is bootstrapped
(`ninefold token bootstrap` creates the first admin token): before that the
API is open, as on a cluster that never asked for tokens. The token comes in
the `Authorization: Bearer` header, or, for the event stream a browser opens
with EventSource (which cannot set headers), in the `access_token` query
parameter of a GET (RFC 6750).
Answers: 401 with `WWW-Authenticate` without a valid token, 403 without the
role. No message repeats a token.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from ninefold.security.tokens import Role, TokenError, TokenRecord, role_allows
from ninefold.state.keys import BOOTSTRAPPED
from ninefold.state.tokens import authenticate
from ninefold.store.base import Store

REALM = "ninefold"


class Unauthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._active = False

    async def active(self) -> bool:
        """Whether the cluster was bootstrapped (then every route checks, even
        if every token was revoked since)."""
        if self._active:
            return True  # once on, tokens stay on: no need to look again
        # Not cached while off: a bootstrap on any node must count at once.
        self._active = await self._store.get(BOOTSTRAPPED) is not None
        return self._active

    async def authorize(self, request: Request, need: Role) -> TokenRecord | None:
        if not await self.active():
            return None
        token = bearer_token(request)
        if token is None:
            raise Unauthorized(
                "this cluster needs a token: send `Authorization: Bearer <token>` "
                "(the CLI reads NINEFOLD_TOKEN or NINEFOLD_TOKEN_FILE)"
            )
        try:
            record = await authenticate(self._store, token, "api")
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        if not role_allows(record.role, need):
            raise Forbidden(
                f"{request.method} {request.url.path} needs role {need}; "
                f"token {record.id} has role {record.role}"
            )
        return record


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.method == "GET":
        return request.query_params.get("access_token") or None
    return None


def needs(role: Role) -> Any:
    """The check of a route that needs `role` (ResourceRouter.operation adds
    it); `route_role` reads the role back."""

    async def check(request: Request) -> None:
        await request.app.state.auth.authorize(request, role)

    check.role = role  # type: ignore[attr-defined]  # read by tests and docs
    return Depends(check)


def install_auth(app: FastAPI, store: Store) -> None:
    app.state.auth = Authenticator(store)

    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": "unauthorized", "message": exc.message}},
            status_code=401,
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
        )

    @app.exception_handler(Forbidden)
    async def forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"error": {"code": "forbidden", "message": exc.message}}, 403)


def route_role(route: Any) -> Role | None:
    """The role an API route declared with `needs`, None for an open one."""
    for dependency in getattr(route, "dependencies", []) or []:
        role = getattr(dependency.dependency, "role", None)
        if role is not None:
            return role  # type: ignore[no-any-return]
    return None


def role_note(role: Role) -> str:
    """What a route's OpenAPI description says of the role it needs."""
    return f"Needs a token with role `{role}` (or higher) once the cluster uses tokens."


def role_responses(role: Role) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of a route that needs `role`: 401 and 403."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        status: {"description": meaning, "content": {"application/json": {"schema": ref}}}
        for status, meaning in ((401, "no valid token"), (403, f"the token lacks role {role}"))
    }
