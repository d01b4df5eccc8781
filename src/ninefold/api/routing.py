"""How an API route is declared: once, with the role it needs.

    router = ResourceRouter()

    @router.operation("GET", "/v1/nodes", role="read", tag="reading",
                      model=list[NodeOut], errors=[503])
    async def nodes(ctx: Context) -> list[NodeOut]: ...

The role both adds the token check (`auth.needs`) and documents it: the
OpenAPI description names the role, and the answers list 401 and 403. The
error statuses are documented in the API's one error shape (`errors.documented`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.params import Depends
from fastapi.responses import Response

from ninefold.api.auth import needs, role_note, role_responses
from ninefold.api.errors import documented
from ninefold.security.tokens import Role

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Method = Literal["GET", "PUT", "POST", "DELETE"]


class ResourceRouter(APIRouter):
    """The routes of one resource of the API, each declared with `operation`."""

    def operation(
        self,
        method: Method,
        path: str,
        *,
        role: Role | None,
        tag: str,
        model: Any = None,
        status_code: int | None = None,
        errors: Sequence[int] = (),
        responses: Mapping[int | str, dict[str, Any]] | None = None,
        response_class: type[Response] | None = None,
        include_in_schema: bool = True,
    ) -> Callable[[Endpoint], Endpoint]:
        """The decorator that adds a route for `method` on `path`.

        role: the least role a caller's token needs; None for a route open to
        anyone (it must be said: there is no default).
        model: the answer's model (FastAPI's response_model); None leaves it to
        FastAPI, which reads the endpoint's return annotation.
        errors: the error statuses it can answer, besides 401 and 403. For a route
        whose success is not JSON (a response_class), they say their media type.
        responses: OpenAPI answers of its own, listed before the errors (a text
        success, a 503 with a body of its own).
        The description is the endpoint's docstring, plus the role's note."""
        answers: dict[int | str, dict[str, Any]] = dict(responses or {})
        answers.update(documented(*errors, json_route=response_class is None))
        dependencies: list[Depends] = []
        if role is not None:
            dependencies.append(needs(role))
            for status, answer in role_responses(role).items():
                answers.setdefault(status, answer)
        options: dict[str, Any] = {}
        if model is not None:
            options["response_model"] = model
        if status_code is not None:
            options["status_code"] = status_code
        if response_class is not None:
            options["response_class"] = response_class

        def declare(endpoint: Endpoint) -> Endpoint:
            description = None  # FastAPI's: the docstring
            if role is not None:
                doc = inspect.cleandoc(endpoint.__doc__ or "").split("\f")[0].strip()
                description = f"{doc}\n\n{role_note(role)}".strip()
            self.add_api_route(
                path,
                endpoint,
                methods=[method],
                tags=[tag],
                dependencies=dependencies,
                responses=answers,
                description=description,
                include_in_schema=include_in_schema,
                **options,
            )
            return endpoint

        return declare


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Serve `router`'s routes from `app`, as they were declared.

    Not `app.include_router`: FastAPI (0.165 here) keeps an included router as
    one opaque entry of `app.routes`, and what reads the route table wants the
    routes themselves: the `Allow` header of a 405 (errors.py) would be empty,
    and the test that every route names its role would find no route. Nothing
    is added on the way (no prefix, tag or dependency). `app.dependency_overrides`
    does not reach these routes; nothing here uses it."""
    app.router.routes.extend(router.routes)
