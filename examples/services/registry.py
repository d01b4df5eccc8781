"""The Domain Registry of seed 004 (reTHINK), as a stateless ninefold service.

    python3 examples/services/registry.py ADDRESS PORT

It answers as the reTHINK project's own server does (the Java/Spark
HypertyController of github.com/reTHINK-project/dev-registry-domain, whose
RSpec API specs run unmodified against it: tests/registry_specs/), route by
route, with the same status codes, bodies and messages:

    PUT    /hyperty/user/:user/:hyperty   create, or replace one's own hyperty: 200
                                          {"message": "Hyperty created"}; 400 (empty
                                          body) without expires, dataSchemes,
                                          resources, runtime, status and descriptor;
                                          404 for another user's hyperty id
    DELETE /hyperty/user/:user/:hyperty   soft delete (status "disconnected"): 200
                                          {"message": "Hyperty deleted"}, or 404
    GET    /hyperty/user/:user            the user's hyperties {id: hyperty}
    GET    /hyperty/user/:user/x?resources=a,b&dataSchemes=c
                                          those holding every one listed
    GET    /hyperty/guid/:guid            the hyperties of the user with this guid
    GET    /hyperty/email/:email[/x?...]  of the users whose id ends in /email
    GET    /hyperty/url/:hyperty          one hyperty (with userID and hypertyID)
    PUT    /hyperty/url/:hyperty          {} is a keep-alive (status "live"):
                                          {"statusChanged": "true"|"false", "message":
                                          "Keep alive"}; other fields are changed:
                                          "Hyperty updated"; 404 if unknown
    PUT    /hyperty/dataobject/:url       create or replace a data object: "Data object
                                          created"; 400 without schema, name,
                                          reporter, resources, dataSchemes, status,
                                          expires and runtime
    PUT    /dataobject/url/:url           {}: "Keep alive", else "data object updated"
    GET    /hyperty/dataobject/url/:url[/x?...]       one data object ({url: it} with
    GET    /hyperty/dataobject/name/:name[/x?...]     a search), those of a name or
    GET    /hyperty/dataobject/reporter/:hyperty[/x?...]  of a reporter
    GET    /registry/updated              what became "disconnected" since the last
                                          call, by id/url (each returned once)
    GET    /live                          {"status": "up", "Storage_type": "ninefold",
                                          "Hyperties_stored": "N"}
    GET    /                              302 to /live

A lookup of hyperties answers 408 with the same body when all of them are
disconnected. Every "not found" (unknown id, user, guid, email, another
user's hyperty, a search that matches nothing, a search URL without
`resources`/`dataSchemes` or with other parameters, so also GET
/hyperty/user/:user/:hyperty without a query) is 404 {"message": "Not Found"};
a path no route takes is Spark's 404 HTML page. Ids are percent-encoded path
segments (`user%3A%2F%2Fexample.com%2Falice`); as in the Java server each is
the last (or, with a query, the last but one) segment of the path.

Hyperty ids are global: the first user to register an id owns it. `expires`
(seconds) is capped at EXPIRES_MAX (default 3600) on creation, 0 accepted; a
record not updated for more than `expires` whole seconds is disconnected
when next read, and by a sweep every EXPIRES seconds (default 60; the Java
server's HeartBeatThread). Nothing is ever removed. All fields are kept:
status, guid, runtime, p2pRequester and p2pHandler too.

Where the Java server fails with 500 (a body that is not a JSON object, a
value of the wrong JSON type, a search on an unknown data object url) this
one answers 400, 400 and 404. A body that parses to {} is a keep-alive
(there, only the exact text "{}"). Its LOAD_BALANCER_IP check, HTTPS and
HTML status page are left out; `GET /healthz` (200) is added for
ninefold's health checks, and an X-Served-By header naming the instance.
While the store does not answer for REGISTRY_STORE_WAIT seconds (default 6):
503 {"message": "store unavailable: ..."}; when the agent refuses (no or a
weak NINEFOLD_TOKEN): 502 {"message": "store refused the request: ..."}.

The data lives in ninefold's key-value store through the local agent's API
(NINEFOLD_API; NINEFOLD_TOKEN if the cluster needs one), keys in
registry_data.py, so any replica answers any request and a replica that dies
loses nothing. Each process reads from its own copy of those keys, fed by the
agent's key watch (registry_cache.py): reads cost no call to the store, writes
are compare-and-swap through it and answered once this process's watch has
delivered them (so another replica reads them too, or milliseconds later on a
busy machine; GET /registry/updated reads the store). Standard library only.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from minihttp import Request, Response, serve
from registry_cache import CachedKv
from registry_data import ROOT, NotFound, Record, Registry, search
from registry_kv import Kv, StoreRefused, StoreUnavailable
from registry_records import (
    DATA_OBJECT_REQUIRED,
    DATA_OBJECT_SETTABLE,
    HYPERTY_REQUIRED,
    HYPERTY_SETTABLE,
    all_disconnected,
    capped,
    data_object_view,
    hyperty_view,
    parse_object,
    problems,
    query_params,
    segments,
    settable_fields,
    valid_search,
)

INSTANCE = os.environ.get("NINEFOLD_INSTANCE", "registry")
ALL_PATH_SIZE = 6
"""HypertyController.ALL_HYPERTIES_PATH_SIZE: `http:`, ``, host, hyperty, user, :user."""
ALL_DO_PATH_SIZE = 7
NOT_FOUND_PAGE = b"<html><body><h2>404 Not found</h2></body></html>"


def message(text: str, status: int = 200) -> Response:
    return Response.json({"message": text}, status)


def not_found() -> Response:
    return message("Not Found", 404)


def bad_request(what: list[str], request: Request) -> Response:
    """halt(400): no body. The Java server logs what is missing; so do we."""
    print(f"400 {request.method} {request.path}: {', '.join(what)}", flush=True)
    return Response(400, b"", "application/json")


def hyperties(records: list[Record], with_user: bool = False) -> Response:
    """A map id -> hyperty: 408 when every one is disconnected."""
    body = {r["hypertyID"]: hyperty_view(r, with_user) for r in records}
    return Response.json(body, 408 if all_disconnected(records) else 200)


def data_objects(records: list[Record]) -> Response:
    return Response.json({r["url"]: data_object_view(r) for r in records})


class Routes:
    """HypertyController's routes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def route(self, request: Request) -> Response:
        path = request.path
        method = request.method
        parts = segments(path)
        table: list[tuple[str, str, Callable[[Request, list[str]], Awaitable[Response]]]] = [
            ("GET", "/hyperty/url/", self.get_url),
            ("GET", "/hyperty/guid/", self.get_guid),
            ("GET", "/hyperty/email/", self.get_email),
            ("GET", "/hyperty/user/", self.get_user),
            ("PUT", "/hyperty/url/", self.put_url),
            ("PUT", "/hyperty/user/", self.put_user),
            ("DELETE", "/hyperty/user/", self.delete_user),
            ("PUT", "/hyperty/dataobject/", self.put_data_object),
            ("PUT", "/dataobject/url/", self.put_data_object_url),
            ("GET", "/hyperty/dataobject/url/", self.get_data_object_url),
            ("GET", "/hyperty/dataobject/reporter/", self.get_data_objects_by),
            ("GET", "/hyperty/dataobject/name/", self.get_data_objects_by),
        ]
        for verb, prefix, handler in table:
            if method == verb and path.startswith(prefix) and len(path) > len(prefix):
                return await handler(request, parts)
        if method == "GET":
            if path == "/":
                return Response(302, b"", "text/html", {"Location": "/live"})
            if path == "/live":
                count = await self.registry.count_hyperties()
                stats = {"status": "up", "Storage_type": "ninefold", "Hyperties_stored": str(count)}
                return Response.json(stats)
            if path == "/registry/updated":
                return Response.json(await self.registry.take_updated())
            if path == "/error":  # where the real load balancer sends the unauthorized
                return message("Unauthorized.", 401)
            if path == "/throwexception":
                return message("Temporary Unavailable", 408)
            if path == "/healthz":
                return Response.json({"status": "ok", "instance": INSTANCE})
        return Response(404, NOT_FOUND_PAGE, "text/html; charset=utf-8")

    # --- hyperties ---------------------------------------------------------------------

    async def get_url(self, request: Request, parts: list[str]) -> Response:
        record = await self.registry.hyperty_by_url(parts[-1])
        return Response.json(hyperty_view(record), 408 if all_disconnected([record]) else 200)

    async def get_guid(self, request: Request, parts: list[str]) -> Response:
        return hyperties(await self.registry.hyperties_by_guid(parts[-1]))

    async def get_email(self, request: Request, parts: list[str]) -> Response:
        if len(parts) == ALL_PATH_SIZE:
            return hyperties(await self.registry.hyperties_by_email(parts[-1]), with_user=True)
        params = query_params(request.target)
        if not valid_search(params):
            return not_found()
        found = search(await self.registry.hyperties_by_email(parts[-2]), params)
        if not found:
            return not_found()
        return hyperties(found, with_user=True)

    async def get_user(self, request: Request, parts: list[str]) -> Response:
        if len(parts) == ALL_PATH_SIZE:
            return hyperties(await self.registry.hyperties_of(parts[-1]))
        params = query_params(request.target)
        if not valid_search(params):
            return not_found()
        found = search(await self.registry.hyperties_of(parts[-2]), params)
        if not found:
            return not_found()
        return hyperties(found)

    async def put_url(self, request: Request, parts: list[str]) -> Response:
        body = parse_object(request.body)
        if body is None:
            return bad_request(["the body is not a JSON object"], request)
        wrong = problems(body, (), HYPERTY_SETTABLE)
        if wrong:
            return bad_request(wrong, request)
        fields = settable_fields(body, HYPERTY_SETTABLE) if body else None
        changed = await self.registry.touch_hyperty(parts[-1], fields)
        text = "Hyperty updated" if body else "Keep alive"
        return Response.json({"statusChanged": str(changed).lower(), "message": text})

    async def put_user(self, request: Request, parts: list[str]) -> Response:
        body = parse_object(request.body)
        if body is None:
            return bad_request(["the body is not a JSON object"], request)
        wrong = problems(body, HYPERTY_REQUIRED, HYPERTY_SETTABLE)
        if wrong:
            return bad_request(wrong, request)
        fields = capped(settable_fields(body, HYPERTY_SETTABLE))
        await self.registry.create_hyperty(parts[-2], parts[-1], fields)
        return message("Hyperty created")

    async def delete_user(self, request: Request, parts: list[str]) -> Response:
        await self.registry.delete_hyperty(parts[-2], parts[-1])
        return message("Hyperty deleted")

    # --- data objects ------------------------------------------------------------------

    async def put_data_object(self, request: Request, parts: list[str]) -> Response:
        body = parse_object(request.body)
        if body is None:
            return bad_request(["the body is not a JSON object"], request)
        wrong = problems(body, DATA_OBJECT_REQUIRED, DATA_OBJECT_SETTABLE)
        if wrong:
            return bad_request(wrong, request)
        fields = capped(settable_fields(body, DATA_OBJECT_SETTABLE))
        await self.registry.create_data_object(parts[-1], fields)
        return message("Data object created")

    async def put_data_object_url(self, request: Request, parts: list[str]) -> Response:
        body = parse_object(request.body)
        if body is None:
            return bad_request(["the body is not a JSON object"], request)
        wrong = problems(body, (), DATA_OBJECT_SETTABLE)
        if wrong:
            return bad_request(wrong, request)
        fields = settable_fields(body, DATA_OBJECT_SETTABLE) if body else None
        await self.registry.touch_data_object(parts[-1], fields)
        return message("data object updated" if body else "Keep alive")

    async def get_data_object_url(self, request: Request, parts: list[str]) -> Response:
        if len(parts) == ALL_DO_PATH_SIZE:
            return Response.json(data_object_view(await self.registry.data_object(parts[-1])))
        params = query_params(request.target)
        if not valid_search(params):
            return not_found()
        found = search([await self.registry.data_object(parts[-2])], params)
        return data_objects(found) if found else not_found()

    async def get_data_objects_by(self, request: Request, parts: list[str]) -> Response:
        kind = parts[5]  # http: / "" / host / hyperty / dataobject / name|reporter
        if len(parts) == ALL_DO_PATH_SIZE:
            return data_objects(await self.registry.data_objects_by(kind, parts[-1]))
        params = query_params(request.target)
        if not valid_search(params):
            return not_found()
        found = search(await self.registry.data_objects_by(kind, parts[-2]), params)
        return data_objects(found) if found else not_found()


def handler(routes: Routes, cache: CachedKv) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        written = cache.track()
        try:
            response = await routes.route(request)
            await cache.settle(written)
        except NotFound:
            response = not_found()
        except StoreUnavailable as exc:
            response = Response.json({"message": f"store unavailable: {exc}"}, 503)
            response.headers["Retry-After"] = "1"
        except StoreRefused as exc:
            response = Response.json({"message": f"store refused the request: {exc}"}, 502)
        response.headers["X-Served-By"] = INSTANCE
        return response

    return handle


def sweep_every() -> float:
    raw = os.environ.get("EXPIRES", "").strip()
    try:
        return max(1.0, float(raw)) if raw else 60.0
    except ValueError:
        sys.exit(f"EXPIRES={raw!r}: not a number of seconds")


async def sweeper(registry: Registry, every: float) -> None:
    """HeartBeatThread: every `every` seconds, disconnect what has expired."""
    while True:
        await asyncio.sleep(every)
        try:
            await registry.sweep()
        except (StoreUnavailable, StoreRefused) as exc:
            print(f"expiry sweep skipped: {exc}", flush=True)


async def run(address: str, port: int) -> None:
    cache = CachedKv(Kv.from_env(), ROOT)
    cache.start()
    registry = Registry(cache)
    task: asyncio.Task[Any] = asyncio.create_task(sweeper(registry, sweep_every()))
    try:
        await serve(handler(Routes(registry), cache), address, port)
    finally:
        task.cancel()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS PORT")
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
