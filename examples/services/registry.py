"""The Domain Registry of seed 004 (reThink), as a stateless ninefold service.

    python3 examples/services/registry.py ADDRESS PORT

It maps users to the Hyperty instances they run (seed 004, Table I):

    GET    /hyperty/user/:user/:hyperty   the hyperty (200) or 404
    PUT    /hyperty/user/:user/:hyperty   create or update it (200)
    DELETE /hyperty/user/:user/:hyperty   delete it (200) or 404
    GET    /hyperty/user/:user            all the user's hyperties (200) or 404
    GET    /hyperty/user/:user/hy?resources=com&dataSchemes=video
                                          those holding every listed resource and
                                          data scheme (200), or 404 when none does

A query with `resources` and/or `dataSchemes` makes a GET a search over the
user's hyperties, whatever the last path segment (the seed writes `hy`); a
parameter may repeat or list several values separated by commas. User and
hyperty ids are path segments, so ids that are URLs (`user://example.com/alice`)
are sent percent-encoded.

PUT takes a JSON object `{"descriptor": str, "expires": seconds, "resources":
[str], "dataSchemes": [str]}` (all optional; expires defaults to 3600). A
hyperty is returned as those fields plus `startingTime` and `lastModified`
(ISO 8601); a user's list maps each hyperty id to its hyperty. A hyperty not
updated within `expires` seconds is treated as gone. Every answer is JSON;
errors are `{"message": "..."}` (400 for a bad body, 405 for a method the
endpoint lacks, 503 when the store stays unreachable).

The data lives in ninefold's key-value store, through the local agent's REST
API (NINEFOLD_API, e.g. http://127.0.0.1:7070): one key per hyperty,
`registry/<user>/<hyperty>`, holding the hyperty as JSON. No replica keeps
state, so any replica answers any request, and a replica that dies loses
nothing. A store that is unavailable for a moment (an etcd leader election)
is waited out for a few seconds before the request is answered 503.
`GET /healthz` answers 200. Standard library only.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from minihttp import Request, Response, main

API = os.environ.get("NINEFOLD_API", "http://127.0.0.1:7070").rstrip("/")
INSTANCE = os.environ.get("NINEFOLD_INSTANCE", "registry")
KEY_PREFIX = "registry/"
DEFAULT_EXPIRES = 3600
STORE_TIMEOUT = 3.0
"""Timeout of one call to the agent's API."""
RETRY_FOR = 6.0
"""How long a store that does not answer is retried before answering 503."""
FIELDS = ("descriptor", "expires", "resources", "dataSchemes", "startingTime", "lastModified")


# --- the key-value store, through the local agent's API ------------------------------


class StoreUnavailable(Exception):
    """The agent did not answer, or answered that its store has no quorum."""


class StoreRefused(Exception):
    """The agent refused the request (a 4xx other than 404)."""


def _call(method: str, path: str, body: Any = None) -> Any:
    """One blocking API call; None for 404."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        API + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=STORE_TIMEOUT) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode("utf-8", "replace")
        if exc.code == 404:
            return None
        if exc.code >= 500:
            raise StoreUnavailable(f"{exc.code} {detail}") from None
        raise StoreRefused(f"{exc.code} {detail}") from None
    except (OSError, ValueError) as exc:  # URLError, refused, reset, timeout
        raise StoreUnavailable(str(exc)) from None
    return json.loads(raw) if raw else {}


async def store(method: str, path: str, body: Any = None) -> Any:
    """An API call in a worker thread, retried while the store is unavailable."""
    deadline = time.monotonic() + RETRY_FOR
    delay = 0.1
    while True:
        try:
            return await asyncio.to_thread(_call, method, path, body)
        except StoreUnavailable:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def key_part(text: str) -> str:
    """An id as one key segment: letters, digits, '-' and '.' stay, any other
    byte (and a leading '.') becomes _XX, so `user://a.com/x` -> `user_3A_2F_2Fa.com_2Fx`."""
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if (char.isascii() and char.isalnum()) or char == "-" or (char == "." and i > 0):
            out.append(char)
        else:
            out.append(f"_{byte:02X}")
    return "".join(out)


def user_prefix(user: str) -> str:
    return f"{KEY_PREFIX}{key_part(user)}/"


def hyperty_key(user: str, hyperty: str) -> str:
    return user_prefix(user) + key_part(hyperty)


async def load(user: str, hyperty: str) -> dict[str, Any] | None:
    item = await store("GET", "/v1/kv/" + quote(hyperty_key(user, hyperty)))
    if item is None:
        return None
    record = json.loads(item["value"])
    return record if alive(record) else None


async def load_all(user: str) -> list[dict[str, Any]]:
    items = await store("GET", "/v1/kv?prefix=" + quote(user_prefix(user), safe=""))
    records = [json.loads(item["value"]) for item in items or []]
    return [r for r in records if alive(r)]


# --- hyperties ------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alive(record: dict[str, Any]) -> bool:
    modified = datetime.fromisoformat(record["lastModified"]).timestamp()
    return time.time() < modified + record["expires"]


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in FIELDS}


def parse_body(request: Request) -> dict[str, Any] | str:
    """The hyperty fields of a PUT body, or what is wrong with it."""
    try:
        body = request.json() if request.body.strip() else {}
    except ValueError:
        return "the body is not JSON"
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    fields: dict[str, Any] = {
        "descriptor": body.get("descriptor", ""),
        "expires": body.get("expires", DEFAULT_EXPIRES),
        "resources": body.get("resources", []),
        "dataSchemes": body.get("dataSchemes", []),
    }
    if not isinstance(fields["descriptor"], str):
        return "descriptor must be a string"
    expires = fields["expires"]
    if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
        return "expires must be a positive number of seconds"
    for name in ("resources", "dataSchemes"):
        value = fields[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{name} must be a list of strings"
    return fields


def wanted(request: Request, name: str) -> set[str]:
    return {v for raw in request.query.get(name, []) for v in raw.split(",") if v}


def matches(record: dict[str, Any], resources: set[str], schemes: set[str]) -> bool:
    return resources <= set(record["resources"]) and schemes <= set(record["dataSchemes"])


def message(text: str, status: int, **headers: str) -> Response:
    return Response.json({"message": text}, status, **headers)


# --- endpoints ---------------------------------------------------------------------------


async def get_user(user: str, request: Request) -> Response:
    resources, schemes = wanted(request, "resources"), wanted(request, "dataSchemes")
    found = {
        r["hypertyID"]: public(r) for r in await load_all(user) if matches(r, resources, schemes)
    }
    if found:
        return Response.json(found)
    if resources or schemes:
        return message("no hyperty of this user matches", 404)
    return message("user not found", 404)


async def get_hyperty(user: str, hyperty: str) -> Response:
    record = await load(user, hyperty)
    if record is None:
        return message("hyperty not found", 404)
    return Response.json(public(record))


async def put_hyperty(user: str, hyperty: str, request: Request) -> Response:
    fields = parse_body(request)
    if isinstance(fields, str):
        return message(fields, 400)
    old = await load(user, hyperty)
    now = now_iso()
    record = {
        "user": user,
        "hypertyID": hyperty,
        **fields,
        "startingTime": old["startingTime"] if old else now,
        "lastModified": now,
    }
    path = "/v1/kv/" + quote(hyperty_key(user, hyperty))
    await store("PUT", path, {"value": json.dumps(record)})
    return message("hyperty updated" if old else "hyperty created", 200)


async def delete_hyperty(user: str, hyperty: str) -> Response:
    if await load(user, hyperty) is None:
        return message("hyperty not found", 404)
    await store("DELETE", "/v1/kv/" + quote(hyperty_key(user, hyperty)))
    return message("hyperty deleted", 200)


async def route(request: Request) -> Response:
    if request.path == "/healthz":
        return Response.json({"status": "ok", "instance": INSTANCE})
    parts = request.path.split("/")
    # "", "hyperty", "user", user[, hyperty][, ""]
    if parts[-1] == "" and len(parts) > 4:
        parts.pop()
    if len(parts) not in (4, 5) or parts[1:3] != ["hyperty", "user"] or not all(parts[3:]):
        return message("not found", 404)
    user = unquote(parts[3])
    method = "GET" if request.method == "HEAD" else request.method
    if len(parts) == 4:
        if method != "GET":
            return message("method not allowed", 405, Allow="GET")
        return await get_user(user, request)
    hyperty = unquote(parts[4])
    if method == "GET":
        if "resources" in request.query or "dataSchemes" in request.query:
            return await get_user(user, request)
        return await get_hyperty(user, hyperty)
    if method == "PUT":
        return await put_hyperty(user, hyperty, request)
    if method == "DELETE":
        return await delete_hyperty(user, hyperty)
    return message("method not allowed", 405, Allow="GET, PUT, DELETE")


async def handle(request: Request) -> Response:
    try:
        response = await route(request)
    except StoreUnavailable as exc:
        response = message(f"store unavailable: {exc}", 503, **{"Retry-After": "1"})
    except StoreRefused as exc:
        response = message(f"store refused the request: {exc}", 502)
    response.headers["X-Served-By"] = INSTANCE
    return response


if __name__ == "__main__":
    main(handle)
