"""A tiny keep-alive HTTP/1.1 server on asyncio, standard library only.

Shared by the example services (counter.py, registry.py), which run it as
`python3 examples/services/<service>.py ADDRESS PORT`: Python puts the
script's own directory on sys.path, so `import minihttp` finds this file.

It reads request bodies sent with Content-Length or chunked, answers with
Content-Length, and keeps the connection open unless the client asks not to.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        """The path as sent (still percent-encoded), without the query."""
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str, status: int = 200, **headers: str) -> Response:
        return cls(status, text.encode(), headers=dict(headers))

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> Response:
        body = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, "application/json", dict(headers))


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    pass


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise BadRequest("body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY:
        raise BadRequest("body too large")
    return await reader.readexactly(length) if length else b""


async def _read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    try:
        body = await _read_body(reader, headers)
    except ValueError:
        raise BadRequest("malformed body framing") from None
    return Request(method.upper(), target, headers, body)


def _encode(response: Response, head_only: bool, close: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Status"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        *(f"{k}: {v}" for k, v in response.headers.items()),
    ]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def connection_handler(handler: Handler) -> Callable[..., Awaitable[None]]:
    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except BadRequest as exc:
                    error = Response.json({"message": str(exc)}, 400)
                    writer.write(_encode(error, False, True))
                    await writer.drain()
                    return
                try:
                    response = await handler(request)
                except Exception as exc:  # an example service answers, it does not die
                    print(f"error handling {request.method} {request.target}: {exc!r}")
                    response = Response.json({"message": "internal error"}, 500)
                close = request.headers.get("connection", "").lower() == "close"
                writer.write(_encode(response, request.method == "HEAD", close))
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return serve_connection


async def serve(handler: Handler, address: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = await asyncio.start_server(
        connection_handler(handler), address, port, limit=MAX_HEAD, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {address}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(handler: Handler) -> None:
    """`script.py ADDRESS PORT`."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS PORT")
    asyncio.run(serve(handler, sys.argv[1], int(sys.argv[2])))
