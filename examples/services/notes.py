"""Notes kept as files in a directory: the stateful service of examples/shop.yaml.

    python3 examples/services/notes.py ADDRESS PORT DIRECTORY [VIP:VIPPORT]

    POST /        store the body (UTF-8 text, 1 to 65536 bytes) as a new note:
                  200 {"id": ..., "instance": ...} once it is on disk
    GET  /        every note, oldest first: 200 [{"id": ..., "text": ...}, ...]
    GET  /ID      one note's text (200), or 404
    GET  /healthz 200 "ok"

Each note is one file, `ID.note`, in DIRECTORY (the service's volume,
`{volume.data}`): written to a hidden `.ID.tmp` file, fsynced, renamed into
place, and the directory fsynced, so a note is on disk before the answer says
it is stored and a half-written note never has a `.note` name (the spec's
`exclude: ["*.tmp"]` keeps those out of the mirror). An ID is the time of the
write in nanoseconds and the instance's name, so IDs sort oldest first and
two instances never make the same one.

Nothing is kept in memory: every GET reads the directory. That is what lets
ninefold fail it over: with `volumes: {data: {replicate: continuous}}` the
active's directory is mirrored to the standby's node as it changes, and a
standby that becomes active answers from that copy. The gateway sends
requests only to the active; a hot standby runs too and answers whoever asks
it directly from its copy, which the mirror overwrites. Every answer says which
instance gave it (`X-Served-By`).

With `VIP:VIPPORT` (examples/ha-block.yaml: `"{vip}:5000"`) it also answers
on the service's floating address at a fixed port, bound with IP_FREEBIND so
that a standby listens there before its node holds the address: clients use
that one address, and whichever node holds it answers. Standard library only.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from pathlib import Path
from urllib.parse import unquote

from minihttp import MAX_HEAD, Request, Response, connection_handler, serve

INSTANCE = os.environ.get("NINEFOLD_INSTANCE", "notes")
MAX_NOTE = 64 * 1024
NOTE_ID = re.compile(r"^[0-9]{19}-[A-Za-z0-9_.-]+$")

directory = Path(".")
last_stamp = 0


def new_id() -> str:
    """A fresh, sortable ID: nanoseconds since the epoch, then this instance."""
    global last_stamp
    last_stamp = max(time.time_ns(), last_stamp + 1)
    return f"{last_stamp:019d}-{INSTANCE}"


def store(text: bytes) -> str:
    note_id = new_id()
    partial = directory / f".{note_id}.tmp"
    with open(partial, "wb") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, directory / f"{note_id}.note")
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is on disk
    finally:
        os.close(fd)
    return note_id


def read(note_id: str) -> str | None:
    try:
        return (directory / f"{note_id}.note").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:  # never written, or removed by the mirror meanwhile
        return None


def every_note() -> list[dict[str, str]]:
    notes = []
    for path in sorted(directory.glob("*.note")):
        text = read(path.stem)
        if text is not None:
            notes.append({"id": path.stem, "text": text})
    return notes


async def handle(request: Request) -> Response:
    served = {"X-Served-By": INSTANCE}
    if request.path == "/healthz":
        return Response.text("ok\n", **served)
    if request.path == "/":
        if request.method in ("GET", "HEAD"):
            return Response.json(every_note(), **served)
        if request.method != "POST":
            return Response.json({"message": "GET or POST"}, 405, Allow="GET, HEAD, POST", **served)
        if not 0 < len(request.body) <= MAX_NOTE:
            return Response.json({"message": f"a note is 1 to {MAX_NOTE} bytes"}, 400, **served)
        # Blocking on the disk is fine here: one note at a time is what fsync allows.
        note_id = store(request.body)
        return Response.json({"id": note_id, "instance": INSTANCE}, **served)
    note_id = unquote(request.path[1:])
    if not NOTE_ID.match(note_id):
        return Response.json({"message": "no such note"}, 404, **served)
    if request.method not in ("GET", "HEAD"):
        return Response.json({"message": "only GET"}, 405, Allow="GET, HEAD", **served)
    text = read(note_id)
    if text is None:
        return Response.json({"message": "no such note"}, 404, **served)
    return Response.text(text, **served)


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; Python 3.12 names it


async def serve_also_on(address: str, port: int, vip: str) -> None:
    """Serve on ADDRESS:PORT and on the VIP (`host:port`), even while the VIP
    is on another node."""
    host, _, vip_port = vip.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind((host, int(vip_port)))
    floating = await asyncio.start_server(connection_handler(handle), sock=sock, limit=MAX_HEAD)
    print(f"listening on {vip} too", flush=True)
    async with floating:
        await serve(handle, address, port)


def main() -> None:
    global directory
    if len(sys.argv) not in (4, 5):
        sys.exit(f"usage: {sys.argv[0]} ADDRESS PORT DIRECTORY [VIP:VIPPORT]")
    directory = Path(sys.argv[3])
    directory.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) == 5:
        asyncio.run(serve_also_on(sys.argv[1], int(sys.argv[2]), sys.argv[4]))
    else:
        asyncio.run(serve(handle, sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
