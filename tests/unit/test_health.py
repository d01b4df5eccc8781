"""Health checks: pure counting, and http / tcp / exec probes against real targets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from ninefold.health import CheckCounter, HealthMonitor, HttpProbe, TcpProbe

FAST = {"interval": 0.05, "timeout": 0.5, "fall": 2, "rise": 2, "start_grace": 0.0}


async def eventually(pred: Callable[[], object], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


# --- counting ---------------------------------------------------------------------------


def test_rise_and_fall() -> None:
    c = CheckCounter(fall=3, rise=2, start_grace=0.0)
    assert c.state == "starting"
    assert c.record(True, 1) is None
    assert c.record(True, 2) == "healthy"
    assert c.record(True, 3) is None
    assert [c.record(False, t) for t in (4, 5, 6)] == [None, None, "unhealthy"]
    assert c.record(False, 7) is None
    assert c.record(True, 8) is None
    assert c.record(False, 9) is None  # a failure breaks the success streak
    assert [c.record(True, t) for t in (10, 11)] == [None, "healthy"]


def test_success_resets_failure_streak() -> None:
    c = CheckCounter(fall=2, rise=1, start_grace=0.0)
    assert c.record(True, 0) == "healthy"
    assert [c.record(ok, t) for t, ok in enumerate([False, True, False, True])] == [None] * 4
    assert c.state == "healthy"


def test_starting_becomes_unhealthy_without_grace() -> None:
    c = CheckCounter(fall=2, rise=2, start_grace=0.0)
    assert [c.record(False, t) for t in (0, 1)] == [None, "unhealthy"]


def test_grace_ignores_failures_before_first_success() -> None:
    c = CheckCounter(fall=2, rise=2, start_grace=10.0, started_at=100.0)
    assert all(c.record(False, t) is None for t in range(100, 110))
    assert c.state == "starting"
    # after the grace, failures count
    assert [c.record(False, t) for t in (110, 111)] == [None, "unhealthy"]


def test_grace_ends_with_first_success() -> None:
    c = CheckCounter(fall=2, rise=3, start_grace=10.0, started_at=0.0)
    c.record(True, 1)
    assert [c.record(False, t) for t in (2, 3)] == [None, "unhealthy"]


def test_invalid_counts() -> None:
    with pytest.raises(ValueError):
        CheckCounter(fall=0, rise=1, start_grace=0)


# --- probes against real targets ------------------------------------------------------


class Target:
    """A tiny server on 127.0.0.1 that answers every request with a fixed response."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.server: asyncio.Server | None = None
        self.port = 0
        self._handlers: set[asyncio.Task[None]] = set()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.response)
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop open connections (3.11's Server.close leaves them)."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


def http_response(status: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target(http_response("200 OK"))
    await t.start()
    yield t
    if t.server is not None and t.server.is_serving():
        await t.stop()


@pytest.mark.parametrize("kind", ["http", "tcp"])
async def test_network_check_healthy_then_unhealthy(target: Target, kind: str) -> None:
    changes: list[str] = []
    mon = HealthMonitor.build(
        kind,  # type: ignore[arg-type]
        port=target.port,
        path="/health",
        on_change=changes.append,
        **FAST,  # type: ignore[arg-type]
    )
    await mon.start()
    try:
        await eventually(lambda: mon.state == "healthy")
        assert mon.checks >= 2
        await target.stop()
        await eventually(lambda: mon.state == "unhealthy")
        assert changes == ["healthy", "unhealthy"]
        assert mon.last_result is not None and not mon.last_result.ok
    finally:
        await mon.stop()


async def test_http_status_decides() -> None:
    for status, ok in [("204 No Content", True), ("302 Found", True), ("503 Nope", False)]:
        t = Target(http_response(status))
        await t.start()
        probe = HttpProbe(f"http://127.0.0.1:{t.port}/")
        try:
            result = await probe.check(1.0)
            assert result.ok is ok, result
            assert status.split()[0] in result.detail
        finally:
            await probe.aclose()
            await t.stop()


async def test_http_timeout_is_a_failure() -> None:
    t = Target(b"")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers

    t._answer = silent  # type: ignore[method-assign]
    await t.start()
    probe = HttpProbe(f"http://127.0.0.1:{t.port}/")
    try:
        assert not (await probe.check(0.1)).ok
    finally:
        await probe.aclose()
        await t.stop()


@pytest.mark.process
@pytest.mark.parametrize(("command", "expected"), [("true", "healthy"), ("false", "unhealthy")])
async def test_exec_check(command: str, expected: str) -> None:
    changes: list[str] = []
    mon = HealthMonitor.build("exec", command=[command], on_change=changes.append, **FAST)  # type: ignore[arg-type]
    await mon.start()
    try:
        await eventually(lambda: mon.state == expected)
        assert changes == [expected]
    finally:
        await mon.stop()


@pytest.mark.process
async def test_exec_timeout_is_a_failure() -> None:
    mon = HealthMonitor.build("exec", command=["sleep", "10"], **{**FAST, "timeout": 0.1})  # type: ignore[arg-type]
    await mon.start()
    try:
        await eventually(lambda: mon.state == "unhealthy")
        assert mon.last_result is not None and "timed out" in mon.last_result.detail
    finally:
        await mon.stop()


async def test_start_grace_respected() -> None:
    mon = HealthMonitor.build("exec", command=["false"], **{**FAST, "start_grace": 30.0})  # type: ignore[arg-type]
    await mon.start()
    try:
        await eventually(lambda: mon.checks >= 5)
        assert mon.state == "starting"
    finally:
        await mon.stop()


async def test_without_check_is_healthy_once_started() -> None:
    changes: list[str] = []
    mon = HealthMonitor.without_check(on_change=changes.append)
    assert mon.state == "starting"
    await mon.start()
    assert mon.state == "healthy"
    assert changes == ["healthy"]
    await mon.stop()


def test_build_validates() -> None:
    with pytest.raises(ValueError):
        HealthMonitor.build("http")
    with pytest.raises(ValueError):
        HealthMonitor.build("exec")


async def test_from_check_uses_named_or_first_port(target: Target) -> None:
    from ninefold.spec.models import CheckSpec

    ports = {"main": target.port, "admin": 1}
    mon = HealthMonitor.from_check(CheckSpec(http="/x", interval=0.05, rise=1), "127.0.0.1", ports)
    assert isinstance(mon.probe, HttpProbe) and mon.probe.url.endswith(f":{target.port}/x")
    await mon.start()
    try:
        await eventually(lambda: mon.state == "healthy")
    finally:
        await mon.stop()
    tcp = HealthMonitor.from_check(CheckSpec(tcp="admin"), "127.0.0.1", ports)
    assert isinstance(tcp.probe, TcpProbe) and tcp.probe.port == 1
    with pytest.raises(ValueError):
        HealthMonitor.from_check(CheckSpec(tcp="nope"), "127.0.0.1", ports)
