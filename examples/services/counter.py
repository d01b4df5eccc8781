"""A hit counter, like the PHP counter of seed 000's load-balancing test.

    python3 examples/services/counter.py ADDRESS PORT

`GET /` (any path but /healthz) counts the hit and answers `<instance> <count>`,
where the instance is the ninefold instance name (NINEFOLD_INSTANCE) and the
count is this instance's hits so far, kept in memory: two replicas behind the
gateway show how requests are split. With `Accept: application/json` the answer
is `{"instance": ..., "node": ..., "count": ...}`. `GET /healthz` answers 200
without counting. Standard library only.
"""

from __future__ import annotations

import os

from minihttp import Request, Response, main

INSTANCE = os.environ.get("NINEFOLD_INSTANCE", "counter")
NODE = os.environ.get("NINEFOLD_NODE", "")
hits = 0


async def handle(request: Request) -> Response:
    global hits
    if request.path == "/healthz":
        return Response.text("ok\n")
    if request.method not in ("GET", "HEAD"):
        return Response.text("only GET\n", 405, Allow="GET, HEAD")
    hits += 1
    if "application/json" in request.headers.get("accept", ""):
        return Response.json({"instance": INSTANCE, "node": NODE, "count": hits})
    return Response.text(f"{INSTANCE} {hits}\n")


if __name__ == "__main__":
    main(handle)
