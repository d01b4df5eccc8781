"""ninefold's key-value store, through the local agent's REST API, for asyncio code.

Standard library only, so every call is a blocking http.client request run
in a small pool of threads; each thread keeps one HTTP/1.1 connection to the
agent open and reuses it (a connection the agent closed while idle is
reopened once, at once). A store that does not answer (the agent restarting,
etcd electing a leader) is retried for RETRY_FOR seconds before
StoreUnavailable reaches the caller.

`stream` opens the agent's key watch (`GET /v1/kv-watch`) on a connection of
its own, for registry_cache.py, which serves the reads from what it follows.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

CALL_TIMEOUT = 3.0
"""Timeout of one call to the agent's API."""
RETRY_FOR = float(os.environ.get("REGISTRY_STORE_WAIT", "") or 6.0)
"""How long a store that does not answer is retried (REGISTRY_STORE_WAIT, seconds)."""
THREADS = 16
"""Calls in flight at once (and connections to the agent) per process."""


class StoreUnavailable(Exception):
    """The agent did not answer, or answered that its store has no quorum."""


class StoreRefused(Exception):
    """The agent refused a request (a 4xx other than 404 and 409)."""


class Conflict(Exception):
    """A compare-and-swap lost: the key is not at the revision given."""


@dataclass(frozen=True)
class Item:
    key: str
    value: str
    revision: int


class Stream:
    """An open response that is read line by line (the key watch), with its
    own connection."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self._conn = conn
        self._response = response

    def readline(self) -> bytes:
        """The next line; b"" when the agent ended the stream."""
        return self._response.readline()

    def close(self) -> None:
        self._response.close()
        self._conn.close()


class _Retry(Exception):
    """A 5xx or a broken connection: worth another try."""


class Kv:
    """The key-value routes of one agent's API (`NINEFOLD_API`)."""

    def __init__(self, api: str, token: str = "", threads: int = THREADS) -> None:
        parts = urlsplit(api)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {api!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kv")

    @classmethod
    def from_env(cls) -> Kv:
        api = os.environ.get("NINEFOLD_API", "http://127.0.0.1:7070")
        return cls(api, os.environ.get("NINEFOLD_TOKEN", "").strip())

    # --- the routes ------------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        status, data = await self._call("GET", "/v1/kv/" + quote(key))
        return None if status == 404 else _item(data)

    async def list(self, prefix: str) -> list[Item]:
        """Every key starting with prefix, sorted by key."""
        _, data = await self._call("GET", "/v1/kv?prefix=" + quote(prefix, safe=""))
        return [_item(entry) for entry in data or []]

    async def put(self, key: str, value: str, cas: int | None = None) -> int:
        """Set key; with cas, only if its revision is cas (0: only if absent),
        else Conflict. The key's new revision."""
        path = "/v1/kv/" + quote(key) + ("" if cas is None else f"?cas={cas}")
        status, data = await self._call("PUT", path, {"value": value})
        if status == 409:
            raise Conflict(key)
        return int(data["revision"])

    async def delete(self, key: str, cas: int | None = None) -> int | None:
        """Delete key: the store's revision after it, None if there was no key.
        With cas as for put."""
        path = "/v1/kv/" + quote(key) + ("" if cas is None else f"?cas={cas}")
        status, data = await self._call("DELETE", path)
        if status == 409:
            raise Conflict(key)
        return None if status == 404 else int(data["revision"])

    def stream(self, prefix: str, timeout: float) -> Stream:
        """Blocking: the agent's key watch under prefix, open on a connection of
        its own, whose reads time out after
        `timeout` seconds of silence. StoreUnavailable if it does not open."""
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        headers = {**self._headers, "Accept": "text/event-stream"}
        path = self._base + "/v1/kv-watch?prefix=" + quote(prefix, safe="")
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status != 200:
            raw = response.read()[:200].decode("utf-8", "replace")
            conn.close()
            raise StoreUnavailable(f"GET /v1/kv-watch: {response.status} {raw}")
        return Stream(conn, response)

    # --- calls -------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON) of one call, retried while the store does not
        answer; 404 and 409 are answers, other 4xx raise StoreRefused."""
        payload = None if body is None else json.dumps(body).encode()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.05
        while True:
            try:
                status, raw = await loop.run_in_executor(
                    self._pool, self._blocking, method, self._base + path, payload
                )
            except _Retry as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(str(exc)) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if status in (404, 409) or status < 400:
                return status, (json.loads(raw) if raw else None)
            raise StoreRefused(f"{method} {path}: {status} {raw[:200].decode('utf-8', 'replace')}")

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=CALL_TIMEOUT)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=CALL_TIMEOUT)
            self._local.conn = conn
        return conn

    def _blocking(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        """One request on this thread's connection. A kept-alive connection
        the agent has closed fails at once: reopened and sent again, once."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=payload, headers=self._headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            if response.will_close:
                conn.close()
            if response.status >= 500:
                raise _Retry(f"{response.status} {raw[:200].decode('utf-8', 'replace')}")
            return response.status, raw
        raise AssertionError("unreachable")


def _item(data: Any) -> Item:
    return Item(str(data["key"]), str(data["value"]), int(data["revision"]))
