"""A small keep-alive HTTP server for tests: answers every request with the
name of its instance (NINEFOLD_INSTANCE) and the request target, or with
?peer=1 the address the connection came from. Optional ?sleep=SECONDS delays it."""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import parse_qs, urlsplit

NAME = os.environ.get("NINEFOLD_INSTANCE", "unknown").encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _version = lines[0].split(" ", 2)
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value.strip())
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            query = parse_qs(urlsplit(target).query)
            if "sleep" in query:
                await asyncio.sleep(float(query["sleep"][0]))
            seen = writer.get_extra_info("peername")[0] if "peer" in query else target
            body = NAME + b" " + seen.encode() + b"\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode()
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(address: str, port: int) -> None:
    server = await asyncio.start_server(handle, address, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
