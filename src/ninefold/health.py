"""Health checks of instances: http, tcp, exec -> "starting" | "healthy" | "unhealthy".

The counting (``CheckCounter``) is pure and apart from the probing
(``HttpProbe``, ``TcpProbe``, ``ExecProbe``); ``HealthMonitor`` runs a probe
every ``interval`` and feeds the counter. The rules, as in HAProxy/keepalived
(seed 003: every 500 ms, fall 3, rise 2):

- a monitor starts "starting";
- ``rise`` consecutive successes make it "healthy";
- ``fall`` consecutive failures make it "unhealthy";
- failures within ``start_grace`` after the start, before the first success,
  do not count: a slow service is not declared dead while it boots.

An instance without a check: ``HealthMonitor.without_check()``, healthy from
``start()`` on; the caller starts it once the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

import httpx

from ninefold import defaults
from ninefold.latency import LatencyHistogram
from ninefold.supervisor.process import run_hook

log = logging.getLogger(__name__)

HealthState = Literal["starting", "healthy", "unhealthy"]
CheckKind = Literal["http", "tcp", "exec"]


# --- counting (pure) -----------------------------------------------------------------


class CheckCounter:
    """Turns a sequence of check results into state transitions. Times are the caller's."""

    def __init__(self, fall: int, rise: int, start_grace: float, started_at: float = 0.0) -> None:
        if fall < 1 or rise < 1:
            raise ValueError("fall and rise must be at least 1")
        self.fall, self.rise, self.start_grace = fall, rise, start_grace
        self.reset(started_at)

    def reset(self, started_at: float) -> None:
        self.started_at = started_at
        self.state: HealthState = "starting"
        self._successes = self._failures = 0
        self._seen_success = False

    def record(self, ok: bool, now: float) -> HealthState | None:
        """Count one result at ``now``; the new state on a transition, else None."""
        if ok:
            self._seen_success = True
            self._failures = 0
            self._successes += 1
            if self.state != "healthy" and self._successes >= self.rise:
                self.state = "healthy"
                return self.state
            return None
        self._successes = 0
        if not self._seen_success and now - self.started_at < self.start_grace:
            return None
        self._failures += 1
        if self.state != "unhealthy" and self._failures >= self.fall:
            self.state = "unhealthy"
            return self.state
        return None


# --- probes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str = ""


class Probe:
    """One kind of check. ``check`` never raises for a failing target."""

    async def check(self, timeout: float) -> CheckResult:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the probe holds (connections)."""


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


class HttpProbe(Probe):
    """GET the URL; a 2xx or 3xx status is healthy (redirects are not followed).
    With `any_status`, any HTTP answer is: the server is up, whatever it says."""

    def __init__(self, url: str, any_status: bool = False) -> None:
        self.url = url
        self.any_status = any_status
        self._client: httpx.AsyncClient | None = None

    async def check(self, timeout: float) -> CheckResult:
        if self._client is None:
            # trust_env=False: a proxy from the environment must not answer for the instance.
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        try:
            async with (
                asyncio.timeout(timeout),
                self._client.stream("GET", self.url, timeout=timeout) as resp,
            ):
                status = resp.status_code
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return CheckResult(False, f"GET {self.url}: {type(exc).__name__} {exc}".strip())
        return CheckResult(self.any_status or 200 <= status < 400, f"GET {self.url}: {status}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class TcpProbe(Probe):
    """A TCP connection to address:port can be opened."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port

    async def check(self, timeout: float) -> CheckResult:
        target = f"{_host(self.address)}:{self.port}"
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(self.address, self.port)
        except (OSError, TimeoutError) as exc:
            return CheckResult(False, f"connect {target}: {type(exc).__name__} {exc}".strip())
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return CheckResult(True, f"connect {target}: ok")


class ExecProbe(Probe):
    """The command exits 0 within the timeout (its process group is killed otherwise)."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.argv, self.env, self.cwd = list(argv), dict(env or {}), cwd

    async def check(self, timeout: float) -> CheckResult:
        code = await run_hook(self.argv, self.env, self.cwd, timeout, None)
        detail = "timed out" if code == 124 else f"exit code {code}"
        return CheckResult(code == 0, f"{self.argv[0]}: {detail}")


class CheckLike(Protocol):
    """What ``HealthMonitor.from_check`` reads (``spec.models.CheckSpec`` has it);
    read-only, so a ``list[str]`` command is a ``Sequence[str]`` one."""

    @property
    def http(self) -> str | None: ...
    @property
    def tcp(self) -> str | None: ...
    @property
    def exec(self) -> Sequence[str] | None: ...
    @property
    def port(self) -> str | None: ...
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def fall(self) -> int: ...
    @property
    def rise(self) -> int: ...
    @property
    def start_grace(self) -> float: ...


class _Timing(TypedDict):
    interval: float
    timeout: float
    fall: int
    rise: int
    start_grace: float


# --- the monitor ----------------------------------------------------------------------------


class HealthMonitor:
    """Runs one probe periodically and keeps the instance's health state.

    ``probe=None`` is the no-check variant: "healthy" as soon as started.
    ``on_change(new_state)`` is called on every transition, from the event loop.
    """

    def __init__(
        self,
        probe: Probe | None,
        *,
        interval: float = defaults.CHECK_INTERVAL,
        timeout: float = defaults.CHECK_TIMEOUT,
        fall: int = defaults.CHECK_FALL,
        rise: int = defaults.CHECK_RISE,
        start_grace: float = defaults.CHECK_START_GRACE,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.probe = probe
        self.interval, self.timeout = interval, timeout
        self._counter = CheckCounter(fall, rise, start_grace)
        self._on_change = on_change
        self._state: HealthState = "starting"
        self._task: asyncio.Task[None] | None = None
        self.checks = 0
        """Checks run since the last start."""
        self.last_result: CheckResult | None = None
        self.latency = LatencyHistogram()
        """How long each check took (an instance hands its own, kept across restarts)."""

    @classmethod
    def build(
        cls,
        kind: CheckKind,
        *,
        address: str = "127.0.0.1",
        port: int | None = None,
        path: str = "/",
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        interval: float = defaults.CHECK_INTERVAL,
        timeout: float = defaults.CHECK_TIMEOUT,
        fall: int = defaults.CHECK_FALL,
        rise: int = defaults.CHECK_RISE,
        start_grace: float = defaults.CHECK_START_GRACE,
        on_change: Callable[[str], None] | None = None,
    ) -> HealthMonitor:
        """A monitor from plain values: http needs port (and path), tcp port, exec command."""
        probe: Probe
        if kind in ("http", "tcp") and port is None:
            raise ValueError(f"{kind} check needs a port")
        if kind == "http":
            path = path if path.startswith("/") else f"/{path}"
            probe = HttpProbe(f"http://{_host(address)}:{port}{path}")
        elif kind == "tcp":
            assert port is not None
            probe = TcpProbe(address, port)
        elif kind == "exec":
            if not command:
                raise ValueError("exec check needs a command")
            probe = ExecProbe(command, env, cwd)
        else:
            raise ValueError(f"unknown check kind {kind!r}")
        return cls(
            probe,
            interval=interval,
            timeout=timeout,
            fall=fall,
            rise=rise,
            start_grace=start_grace,
            on_change=on_change,
        )

    @classmethod
    def from_check(
        cls,
        check: CheckLike,
        address: str,
        ports: Mapping[str, int],
        on_change: Callable[[str], None] | None = None,
        cwd: str | None = None,
    ) -> HealthMonitor:
        """A monitor for a service's ``check:``; ``ports`` maps port names to numbers.

        An http check without ``port`` uses the first port; tcp names its port.
        """
        timing: _Timing = {
            "interval": check.interval,
            "timeout": check.timeout,
            "fall": check.fall,
            "rise": check.rise,
            "start_grace": check.start_grace,
        }
        if check.exec is not None:
            return cls.build("exec", command=check.exec, cwd=cwd, on_change=on_change, **timing)
        name = check.tcp if check.tcp is not None else check.port
        if name is None:
            name = next(iter(ports), None)
        if name is None or name not in ports:
            raise ValueError(f"health check port {name!r} is not among {sorted(ports)}")
        kind: CheckKind = "tcp" if check.tcp is not None else "http"
        return cls.build(
            kind,
            address=address,
            port=ports[name],
            path=check.http or "/",
            on_change=on_change,
            **timing,
        )

    @classmethod
    def without_check(cls, on_change: Callable[[str], None] | None = None) -> HealthMonitor:
        return cls(None, on_change=on_change)

    @property
    def state(self) -> HealthState:
        return self._state

    async def start(self) -> None:
        """Begin checking from "starting" (again); no-op while running."""
        if self._task is not None and not self._task.done():
            return
        self.checks = 0
        self._counter.reset(asyncio.get_running_loop().time())
        self._set_state("starting")
        if self.probe is None:
            self._set_state("healthy")
            return
        self._task = asyncio.create_task(self._run(), name="health check")

    async def stop(self) -> None:
        """Stop checking; the state stays what it was last."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self.probe is not None:
            await self.probe.aclose()

    def _set_state(self, state: HealthState) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_change is not None:
            try:
                self._on_change(state)
            except Exception:
                log.exception("health on_change handler failed")

    async def _run(self) -> None:
        assert self.probe is not None
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                result = await self.probe.check(self.timeout)
            except Exception as exc:  # a probe bug counts as a failed check, not a dead monitor
                log.exception("health probe failed")
                result = CheckResult(False, f"probe error: {exc!r}")
            self.checks += 1
            self.last_result = result
            self.latency.observe(loop.time() - began)
            new = self._counter.record(result.ok, loop.time())
            if new is not None:
                log.info("health: %s (%s)", new, result.detail)
                self._set_state(new)
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - began)))
