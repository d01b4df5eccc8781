"""The haproxy gateway engine: HAProxy in master-worker mode under the supervisor.

- ``start`` renders haproxy.cfg (config.py), checks it with ``haproxy -c`` and
  runs ``haproxy -W -S <master socket> -f <cfg>`` as a ``SupervisedProcess``
  (restarted with backoff should it die; its output goes to
  ``<log_dir>/haproxy.log``). Files: ``<run_dir>/haproxy.cfg``,
  ``haproxy-master.sock``, ``haproxy-stats.sock``, ``haproxy-cookie.key``.
- ``apply`` asks ``plan_runtime`` for the runtime commands between the table
  served now and the new one and sends them to the current worker through the
  master CLI: no reload for instances that come, go, drain or change weight.
  A structural change (a service, route or balance setting, more instances
  than slots, other health checks) re-renders the file and reloads: the
  master re-executes itself, starts a new worker that takes the listening
  sockets over from the old one (the master passes ``-x sockpair@..`` itself
  in master-worker mode, so no connection is refused), and the old
  worker finishes what it has (``hard-stop-after`` at most). The file is
  re-rendered after runtime changes too, so a reload or a restart of HAProxy
  always starts from the current state.
- ``inflight`` and ``snapshot`` read what a small task polls from
  ``show stat`` every defaults.HAPROXY_STATS_INTERVAL (see metrics.py for the mapping and the
  latency approximation); ``apply`` polls once more before it returns, so a
  drain is visible in ``inflight`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from ninefold import defaults
from ninefold.gateway.engine import Engine, GatewaySettings, MetricsSnapshot
from ninefold.gateway.haproxy.access import key_path
from ninefold.gateway.haproxy.config import (
    Paths,
    Reload,
    SlotMap,
    allocate_slots,
    plan_runtime,
    render,
)
from ninefold.gateway.haproxy.metrics import TrafficLedger
from ninefold.gateway.haproxy.runtime import HaproxyCli, HaproxyCliError, Processes
from ninefold.gateway.mesh import MeshError, check_server_files
from ninefold.gateway.routes import RoutingTable
from ninefold.gateway.tls import (
    CertificateWatch,
    GatewayTlsError,
    TlsSettings,
    combined_pem,
    resolve_tls,
    write_private,
)
from ninefold.spec.models import CheckSpec
from ninefold.supervisor import (
    LeftoverRegistry,
    ProcessEvent,
    ProcessSpec,
    RestartPolicy,
    SupervisedProcess,
    tail,
)

log = logging.getLogger(__name__)

VALIDATE_TIMEOUT = 10.0
"""Limit of ``haproxy -c``."""
_SUN_PATH_MAX = 107


def haproxy_binary() -> str | None:
    """The haproxy executable, also found in the sbin directories when not on PATH."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin"])
    return shutil.which("haproxy", path=path)


def haproxy_available() -> bool:
    return haproxy_binary() is not None


class HaproxyReloadError(RuntimeError):
    """HAProxy refused a new configuration; the old one still serves."""


class HaproxyEngine(Engine):
    name = "haproxy"

    def __init__(
        self,
        settings: GatewaySettings,
        checks: Mapping[str, CheckSpec | None] | None = None,
        *,
        binary: str | None = None,
        registry: LeftoverRegistry | None = None,
        cookie_key: str | None = None,
        on_event: Callable[[ProcessEvent], None] | None = None,
    ) -> None:
        """``checks``: the health check HAProxy runs per service (``checks_for(spec)``);
        ``registry``: the agent's leftover registry (default: one of its own
        under run_dir, cleaned at start); ``cookie_key``: secret of sticky
        cookies, the same on every node for stickiness across gateways
        (default: a random key kept in run_dir, so this node only)."""
        super().__init__(settings)
        self.paths = Paths.of(settings)
        self._checks: dict[str, CheckSpec | None] = dict(checks or {})
        self._binary = binary
        self._registry = registry
        self._cookie_key = cookie_key
        self._on_event = on_event
        self._table: RoutingTable | None = None
        """As HAProxy serves it now (or, before start, as it will)."""
        self._slots = SlotMap()
        self._process: SupervisedProcess | None = None
        self._cli = HaproxyCli(self.paths.master_socket)
        self._ledger = TrafficLedger()
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._tls: TlsSettings | None = None
        self._tls_watcher: asyncio.Task[None] | None = None
        self._mesh_tls: TlsSettings | None = None
        """The node's own certificate, for the mesh (mesh.pem)."""
        self._mesh_watcher: asyncio.Task[None] | None = None
        self.reloads = 0
        """Reloads done by apply/set_checks since start."""

    # --- Engine ----------------------------------------------------------------------

    @property
    def master_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        if self._process is not None:
            return
        binary = self._binary or haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy engine: no haproxy binary (apt-get install haproxy)")
        for sock in (self.paths.master_socket, self.paths.stats_socket):
            if len(sock) > _SUN_PATH_MAX:
                raise ValueError(f"socket path too long for a unix socket: {sock}")
        run_dir, log_dir = self.settings.run_dir, self.settings.log_dir
        await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
        if self._registry is None:
            self._registry = LeftoverRegistry(run_dir / "haproxy-leftovers")
            await self._registry.cleanup()
        if self._cookie_key is None:
            self._cookie_key = await asyncio.to_thread(_cookie_key, run_dir / "haproxy-cookie.key")
        settings = self.settings
        self._tls = resolve_tls(settings.tls, settings.node_cert, settings.node_key)
        if self._tls is not None:
            await asyncio.to_thread(self._write_tls_pem, self._tls)
        self._mesh_tls = _mesh_tls(settings)
        if self._mesh_tls is not None:
            await asyncio.to_thread(self._write_mesh_pem, self._mesh_tls)
        async with self._lock:
            table = self._table or RoutingTable()
            slots = allocate_slots(table, self._slots)
            await self._install_table(table, slots, binary)
            self._table, self._slots = table, slots
            master = f"{self.paths.master_socket},mode,600"
            self._process = SupervisedProcess(
                ProcessSpec(
                    name="haproxy",
                    argv=[binary, "-W", "-S", master, "-f", self.paths.config],
                    env={},
                    cwd=str(run_dir),
                    stop_signal=signal.SIGTERM,
                    stop_timeout=defaults.STOP_TIMEOUT,
                    log_dir=log_dir,
                ),
                RestartPolicy(),
                self._registry,
                self._on_event,
            )
            await self._process.start()
            try:
                await self._wait_for_worker(defaults.HAPROXY_START_TIMEOUT)
            except BaseException:
                await self._process.stop()
                self._process = None
                raise
            await self._refresh()
        self._poller = asyncio.create_task(self._poll(), name="haproxy stats")
        if self._tls is not None:
            self._tls_watcher = asyncio.create_task(
                self._watch_certificate(self._tls), name="haproxy certificate"
            )
        if self._mesh_tls is not None:
            self._mesh_watcher = asyncio.create_task(
                self._watch_certificate(self._mesh_tls, mesh=True), name="haproxy mesh certificate"
            )

    async def apply(self, table: RoutingTable) -> None:
        async with self._lock:
            if self._process is None:
                self._table = table
                return
            # counters so far belong to the instances in the slots so far
            with contextlib.suppress(HaproxyCliError):
                await self._refresh()
            plan = plan_runtime(self._table, table, self._slots, self._checks)
            if isinstance(plan, Reload):
                await self._reload(table, plan.reason)
            else:
                failures: list[str] = []
                if plan.commands:
                    worker = await self._worker()
                    log.debug("haproxy runtime: %s", "; ".join(plan.commands))
                    failures = await self._cli.run(worker, plan.commands)
                self._table, self._slots = table, plan.slots
                await self._install_table(table, plan.slots)
                if failures:
                    await self._reload(table, f"runtime API refused: {'; '.join(failures)}")
            try:  # so that a drain shows in inflight() at once
                await self._refresh()
            except HaproxyCliError as exc:
                log.warning("haproxy: cannot read counters after a change: %s", exc)

    async def set_checks(self, checks: Mapping[str, CheckSpec | None]) -> None:
        """Health checks changed in the spec: reload with the new ones (when they differ)."""
        async with self._lock:
            new = dict(checks)
            if new == self._checks:
                return
            old, self._checks = self._checks, new
            if self._process is None or self._table is None:
                return
            try:
                await self._reload(self._table, "health checks changed")
            except BaseException:
                self._checks = old
                raise

    def inflight(self, backend_key: str) -> int:
        return self._ledger.inflight(backend_key)

    def snapshot(self) -> MetricsSnapshot:
        return self._ledger.snapshot()

    async def stop(self) -> None:
        for watcher in (self._tls_watcher, self._mesh_watcher):
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        self._tls_watcher = self._mesh_watcher = None
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        async with self._lock:
            if self._process is not None:
                await self._process.stop()
                self._process = None

    # --- introspection (tests, status) -------------------------------------------------

    async def processes(self) -> Processes:
        """The master's `show proc`: master pid, reload count, worker pids."""
        return await self._cli.processes()

    @property
    def slots(self) -> SlotMap:
        return self._slots

    # --- internals -----------------------------------------------------------------------

    def _render(self, table: RoutingTable, slots: SlotMap) -> str:
        return render(table, self.settings, self._checks, slots, cookie_key=self._cookie_key or "")

    async def _install_table(
        self, table: RoutingTable, slots: SlotMap, binary: str | None = None
    ) -> None:
        """The access policies' key files, then the configuration for `table`."""
        await asyncio.to_thread(_write_keys, self.settings.run_dir, table)
        await self._install(self._render(table, slots), binary)

    async def _install(self, text: str, binary: str | None = None) -> None:
        """Write the configuration; with ``binary``, only once ``haproxy -c`` accepts it."""
        path = Path(self.paths.config)
        if binary is not None:
            tmp = path.with_name(path.name + ".new")
            await asyncio.to_thread(tmp.write_text, text, encoding="utf-8")
            await _validate(binary, tmp)
            await asyncio.to_thread(os.replace, tmp, path)
        else:
            await asyncio.to_thread(_write_atomically, path, text)

    async def _reload(self, table: RoutingTable, reason: str) -> None:
        log.info("haproxy: reload (%s)", reason)
        binary = self._process.spec.argv[0] if self._process else haproxy_binary()
        slots = allocate_slots(table, self._slots)
        path = Path(self.paths.config)
        previous = await asyncio.to_thread(path.read_text, encoding="utf-8")
        await self._install_table(table, slots, binary)
        await self._refresh()  # the old worker's last counters
        before = await self._cli.processes(retry_for=defaults.HAPROXY_RELOAD_TIMEOUT)
        try:
            with contextlib.suppress(HaproxyCliError):  # the master hangs up on a reload
                await self._cli.master("reload")
            await self._wait_reloaded(before)
        except BaseException:
            await asyncio.to_thread(_write_atomically, path, previous)
            raise
        self._table, self._slots = table, slots
        self.reloads += 1

    async def _wait_reloaded(self, before: Processes) -> Processes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + defaults.HAPROXY_RELOAD_TIMEOUT
        while True:
            procs = await self._cli.processes(retry_for=max(0.0, deadline - loop.time()))
            if any(pid not in before.workers for pid in procs.workers):
                return procs
            # `failed` counts failures since the last success
            if procs.failed_reloads > before.failed_reloads or (
                procs.reloads > before.reloads and procs.failed_reloads > 0
            ):
                raise HaproxyReloadError(f"haproxy refused the new configuration{self._log_tail()}")
            if loop.time() >= deadline:
                raise HaproxyReloadError(
                    f"no new haproxy worker after {defaults.HAPROXY_RELOAD_TIMEOUT:g}s"
                )
            await asyncio.sleep(0.02)

    async def _wait_for_worker(self, timeout: float) -> Processes:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._process.state in ("backoff", "failed"):
                raise RuntimeError(f"haproxy did not start{self._log_tail()}")
            with contextlib.suppress(HaproxyCliError):
                procs = await self._cli.processes()
                if procs.workers:
                    return procs
            if loop.time() >= deadline:
                raise RuntimeError(f"haproxy: no worker after {timeout:g}s{self._log_tail()}")
            await asyncio.sleep(0.02)

    async def _worker(self) -> int:
        procs = await self._cli.processes(retry_for=defaults.HAPROXY_RELOAD_TIMEOUT)
        if procs.worker is None:
            raise HaproxyCliError("haproxy has no worker")
        return procs.worker

    async def _refresh(self) -> None:
        """Read the counters of the current worker (and old workers' in-flight)."""
        procs = await self._cli.processes()
        if procs.worker is None:
            return
        rows = await self._cli.stats(procs.worker)
        old_rows: list[dict[str, str]] = []
        for pid in procs.old_workers:
            with contextlib.suppress(HaproxyCliError):
                old_rows += await self._cli.stats(pid)
        self._ledger.update(procs.worker, rows, self._slots, old_rows)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(defaults.HAPROXY_STATS_INTERVAL)
            try:
                async with self._lock:
                    if self._process is not None and self._process.state == "running":
                        await self._refresh()
            except HaproxyCliError as exc:
                log.debug("haproxy stats: %s", exc)
            except Exception:
                log.exception("haproxy stats")

    def _write_tls_pem(self, tls: TlsSettings) -> None:
        """Certificate and key in one file, mode 0600 (GatewayTlsError if unusable)."""
        write_private(Path(self.paths.tls_pem), combined_pem(tls))

    def _write_mesh_pem(self, tls: TlsSettings) -> None:
        """The node's certificate and key in one file for the mesh, mode 0600
        (MeshError if the node's files do not load)."""
        assert self.settings.node_tls is not None
        check_server_files(self.settings.node_tls)
        write_private(Path(self.paths.mesh_pem), combined_pem(tls))

    async def _watch_certificate(self, tls: TlsSettings, mesh: bool = False) -> None:
        """A rotated certificate: a new combined file and a seamless reload."""
        watch = CertificateWatch(tls)
        write = self._write_mesh_pem if mesh else self._write_tls_pem
        while True:
            await asyncio.sleep(defaults.GATEWAY_TLS_CHECK_INTERVAL)
            if not await asyncio.to_thread(watch.changed):
                continue
            try:
                async with self._lock:
                    await asyncio.to_thread(write, tls)
                    if self._process is not None and self._table is not None:
                        await self._reload(self._table, "certificate changed")
            except (GatewayTlsError, MeshError, HaproxyReloadError, HaproxyCliError) as exc:
                log.error("haproxy keeps its old certificate: %s", str(exc).splitlines()[0])

    def _log_tail(self) -> str:
        path = self.settings.log_dir / "haproxy.log"
        try:
            lines = tail(path, 20)
        except OSError:
            return ""
        return (":\n" + "\n".join(lines)) if lines else ""


def _mesh_tls(settings: GatewaySettings) -> TlsSettings | None:
    """The node's certificate and key as the mesh's (None: no mesh on this node)."""
    files = settings.node_tls
    if files is None:
        return None
    return TlsSettings(settings.mesh_port or 0, files.cert, files.key, node_certificate=True)


async def _validate(binary: str, path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        "-q",
        "-f",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), VALIDATE_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise ValueError(f"haproxy rejects {path}:\n{out.decode(errors='replace').strip()}")


def _write_keys(run_dir: Path, table: RoutingTable) -> None:
    """Each access policy key as a PEM file for jwt_verify (public keys: 0644)."""
    for routes in table.services.values():
        for key in routes.access.keys if routes.access is not None else ():
            path = key_path(run_dir, key)
            if not path.exists():
                path.parent.mkdir(mode=0o700, exist_ok=True)
                _write_atomically(path, key.pem.decode())


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cookie_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if not key:
        key = secrets.token_hex(16)
        path.write_text(key + "\n", encoding="utf-8")
        path.chmod(0o600)
    return key
