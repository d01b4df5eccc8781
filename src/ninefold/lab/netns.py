"""Network namespaces through iproute2, and sockets made inside them.

Commands run in a namespace through `nsenter --net`, not `ip netns exec`:
that one also gives them a mount namespace of their own which does not pass
mounts back, so a namespace an agent pins (the lab provider of node pools
making a machine) would be invisible to the rest of the machine. Requests from this
process into a namespace (`Lab.http_get`) do not start a process: a short-lived
thread joins the namespace with setns(2) (through ctypes; Python 3.11 has no
`os.setns`), creates the socket and exits. A socket belongs to the namespace it
was created in for its whole life, so the caller then uses it from any thread,
and the rest of this process never leaves the root namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from ninefold.lab.errors import LabError

NETNS_DIR = Path("/run/netns")
"""Where `ip netns add` pins namespaces (iproute2's NETNS_RUN_DIR)."""
CLONE_NEWNET = 0x40000000
NAME_RE = re.compile(r"^nf[0-9a-f]{4}-")
"""Namespaces of a lab (any lab): `nf` + 4 hex digits + `-`."""


class CommandFailed(LabError):
    """A command (ip, nft, tc) answered with an error."""

    def __init__(self, argv: list[str], code: int, stderr: str) -> None:
        self.argv = argv
        self.code = code
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(argv)}: {self.stderr or f'exit code {code}'}")


def ip(*args: str, input: str | None = None) -> str:
    """Run `ip ARGS...`; its stdout, or CommandFailed."""
    return command(["ip", *args], input=input)


def command(argv: list[str], input: str | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr)
    return proc.stdout


def in_namespace(ns: str, argv: list[str]) -> list[str]:
    """`argv` prefixed so that it runs inside namespace `ns`."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--", *argv]


def namespaces() -> list[str]:
    """Every named network namespace on this machine."""
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def add(ns: str) -> None:
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")


def delete(ns: str) -> None:
    if exists(ns):
        ip("netns", "del", ns)


def pids(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (zombies have none: not listed)."""
    if not exists(ns):
        return []
    try:
        text = ip("netns", "pids", ns)
    except CommandFailed:
        return []
    me = os.getpid()
    return sorted(int(word) for word in text.split() if word.isdigit() and int(word) != me)


def signal_all(ns: str, sig: signal.Signals) -> list[int]:
    """Send `sig` to every process in `ns`; the pids it reached."""
    reached = []
    for pid in pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            reached.append(pid)
    return reached


def kill_all(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in `ns` until none is left (a dying parent may
    have forked just before): raises TimeoutError if some survive `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if not signal_all(ns, signal.SIGKILL) and not pids(ns):
            return
        if time.monotonic() > deadline:
            left = ", ".join(describe_process(pid) for pid in pids(ns))
            raise TimeoutError(f"processes still in namespace {ns}: {left}")
        time.sleep(0.02)


def describe_process(pid: int) -> str:
    """`pid (name, status, parent pid)`: what a process that would not die was."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return f"{pid} ({proc.name()}, {proc.status()}, parent {proc.ppid()})"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return str(pid)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal (SIGSTOP)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    """`ip -n NS -j ARGS...` parsed."""
    text = ip("-n", ns, "-j", *args)
    return json.loads(text) if text.strip() else []


def ipv4_addresses(ns: str) -> dict[str, set[str]]:
    """interface -> IPv4 addresses (without prefix) in `ns`."""
    out: dict[str, set[str]] = {}
    for link in ip_json(ns, "addr"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                out.setdefault(link["ifname"], set()).add(info["local"])
    return out


# --- sockets inside a namespace --------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket in namespace `ns`, made by a thread that joined it with setns(2)."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def make() -> None:
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {ns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=make, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def connect_in(ns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to host:port made from inside namespace `ns`."""
    sock = socket_in(ns)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Connection(http.client.HTTPConnection):
    def __init__(
        self, ns: str, host: str, port: int | None, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns
        self._tls = tls

    def connect(self) -> None:
        sock = connect_in(self._ns, self.host, self.port, self.timeout)  # type: ignore[arg-type]
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock


def http_get(
    ns: str, url: str, timeout: float = 2.0, tls: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    """GET `url` from inside `ns` on a fresh connection: (status, body); an
    https:// URL needs `tls`. OSError (TimeoutError, ConnectionRefusedError,
    ssl.SSLError, ...) when no answer comes."""
    return http_request(ns, "GET", url, timeout, tls)


def http_request(
    ns: str,
    method: str,
    url: str,
    timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """`method` `url` from inside `ns` on a fresh connection, as `http_get`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    if parts.scheme == "https" and tls is None:
        raise ValueError(f"{url}: an https URL needs a TLS context")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default = 443 if parts.scheme == "https" else 80
    conn = _Connection(ns, parts.hostname, parts.port or default, timeout,
                       tls if parts.scheme == "https" else None)  # fmt: skip
    try:
        conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad answer from {url}: {exc!r}") from exc
    finally:
        conn.close()
