"""Sequential HTTP GETs, one JSON line per request: what a client sees.

    python -m ninefold.lab.probe URL [--timeout 0.5] [--interval 0]
                                     [--max-seconds 60] [--count N]

Every request uses a fresh TCP connection (`Connection: close`), so each one
goes through connection set-up, like a new client. Each line, flushed as soon
as the request ends:

    {"t": 1234.5, "ok": true, "status": 200, "ms": 1.9, "error": null, "body": "..."}

`t` is `time.monotonic()` when the request started (CLOCK_MONOTONIC is the
same in every network namespace, so it compares with the caller's clock), `ok`
means a 2xx or 3xx answer, `ms` how long the request took, `error` why there
was no answer (`"TimeoutError: timed out"`), `body` its first 200 characters.
The probe stops after --count requests or --max-seconds, and on SIGTERM or
SIGINT (after the request under way). Standard library only: the lab runs it
inside a namespace with `lab.popen("client", [...])`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

BODY_CHARS = 200


def get(url: str, timeout: float) -> dict[str, Any]:
    """One GET on a new connection, as the line the probe prints."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    started = time.monotonic()
    status: int | None = None
    body = ""
    error: str | None = None
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        status = response.status
        body = response.read().decode("utf-8", errors="replace")[:BODY_CHARS]
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        conn.close()
    elapsed = (time.monotonic() - started) * 1000
    return {
        "t": started,
        "ok": status is not None and 200 <= status < 400,
        "status": status,
        "ms": round(elapsed, 3),
        "error": error,
        "body": body,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ninefold.lab.probe",
        description="Sequential HTTP GETs on fresh connections; one JSON line per request.",
    )
    parser.add_argument("url", help="http://HOST:PORT/PATH")
    parser.add_argument("--timeout", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between requests")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--count", type=int, default=None, help="stop after this many requests")
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme != "http" or not urlsplit(args.url).hostname:
        parser.error(f"not an http:// URL: {args.url}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    end = time.monotonic() + args.max_seconds
    sent = 0
    while not stop.is_set() and time.monotonic() < end:
        if args.count is not None and sent >= args.count:
            break
        line = get(args.url, args.timeout)
        sent += 1
        try:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            return 0
        if args.interval > 0:
            stop.wait(min(args.interval, max(0.0, end - time.monotonic())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
