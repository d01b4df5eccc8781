"""Every error the API answers, in one shape: {"error": {"code", "message"[, "issues"]}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ninefold.api.models import ErrorBody
from ninefold.operations import Conflict, Invalid, NotFound, OperationError
from ninefold.store.base import StoreError, StoreUnavailable

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid",
    503: "store_unavailable",
}


def error_response(
    status: int, code: str, message: str, issues: list[str] | None = None
) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    if issues:
        detail["issues"] = issues
    return JSONResponse({"error": detail}, status_code=status)


_MEANING = {
    404: "unknown service, instance, node or key",
    409: "compare-and-swap lost, or the cluster's state does not allow it",
    422: "malformed body or spec",
    503: "the store is unavailable (no quorum)",
}


def documented(*statuses: int, json_route: bool = True) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error statuses.

    A route whose success is not JSON (text, event stream) names the error's
    media type itself: FastAPI would give errors the route's media type."""
    if json_route:
        return {s: {"model": ErrorBody, "description": _MEANING[s]} for s in statuses}
    ref = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
    return {
        s: {"description": _MEANING[s], "content": {"application/json": {"schema": ref}}}
        for s in statuses
    }


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed(request: Request) -> list[str]:
    """Every method some route takes at this path: Starlette names only those
    of the first route matching it (GET, PUT and DELETE /v1/kv/{key} are three)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install(app: FastAPI) -> None:
    async def operation_error(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, NotFound):
            return error_response(404, "not_found", str(exc))
        if isinstance(exc, Conflict):
            return error_response(409, "conflict", str(exc))
        if isinstance(exc, Invalid):
            return error_response(422, "invalid", str(exc), exc.issues)
        return error_response(409, "conflict", str(exc))

    async def store_error(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StoreUnavailable):
            message = f"the store is unavailable: {exc}" if str(exc) else "the store is unavailable"
        else:
            message = f"the store refused the request: {exc}"
        return error_response(503, "store_unavailable", message)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        issues = [f"{_location(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        first = issues[0] if issues else "malformed request"
        return error_response(422, "invalid", f"invalid request: {first}", issues)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode: a malformed body, 422.
            return error_response(422, "invalid", f"invalid request: {exc.detail}")
        code = _HTTP_CODES.get(exc.status_code, "error")
        response = error_response(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            response.headers["allow"] = ", ".join(_allowed(request))
        return response

    app.add_exception_handler(OperationError, operation_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
