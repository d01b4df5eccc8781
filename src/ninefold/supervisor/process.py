"""Run one child process, restart it per policy, stop it for good.

Every child

- leads its own session and process group (``start_new_session``), so a stop
  reaches everything it forked, and a terminal's signals never reach it;
- gets ``PR_SET_PDEATHSIG = SIGKILL`` before exec (Linux), so it dies with the
  agent even when the agent is SIGKILLed. The kernel sends it when the *thread*
  that forked exits; asyncio forks in the event-loop thread, so the loop must
  run in the agent's main thread (or one that lives as long as the agent);
- writes stdout and stderr straight to ``<log_dir>/<name>.log`` (see ``logs``
  for rotation and its limits);
- is written down in the ``LeftoverRegistry`` while it runs, for the
  descendants PDEATHSIG does not reach.

When the leader exits, the rest of its group gets the same stop sequence as on
``stop()`` (stop signal, ``stop_timeout``, SIGKILL) before a restart, so a
restarted service never finds its old workers holding its port. Limits: a
descendant that calls ``setsid`` itself leaves the group and escapes all this
(cgroups would be needed to catch it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ninefold import defaults
from ninefold.supervisor import logs
from ninefold.supervisor.leftovers import LeftoverRegistry, group_members, killpg_quiet
from ninefold.supervisor.restart import RestartPolicy, RestartTracker

log = logging.getLogger(__name__)

GROUP_POLL_INTERVAL = 0.02
"""How often a stopping process group is checked for remaining members."""
KILL_WAIT = 5.0
"""How long to wait for a SIGKILLed leader before giving up on it (D state)."""

State = Literal["starting", "running", "backoff", "failed", "stopped"]
EventKind = Literal["started", "exited", "restarting", "failed", "stopped"]


# --- child setup -------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(None, use_errno=True)  # loaded here: not safe to load after fork
    _libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    _libc.prctl.restype = ctypes.c_int


def _child_setup() -> Callable[[], None] | None:
    """A preexec_fn that sets PDEATHSIG, and exits when the parent already died."""
    if _libc is None:
        return None
    libc, parent = _libc, os.getpid()

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return setup


def _spawn_failure(argv: Sequence[str], cwd: str | None, exc: Exception) -> tuple[int, str]:
    """Shell-style exit code (127 not found, 126 other) and a readable reason."""
    if isinstance(exc, OSError):
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        what = "working directory" if cwd and exc.filename == cwd else "executable"
        target = exc.filename or (cwd if what == "working directory" else argv[0])
        return code, f"cannot start: {what} {target}: {exc.strerror or exc}"
    return 126, f"cannot start {argv[0]}: {exc}"


def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


_SETPRIV = shutil.which("setpriv")


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` made to receive SIGKILL when the calling process dies (through
    setpriv; unchanged without it): for short-lived helpers such as a volume
    transfer, which must not outlive a dead agent and go on writing."""
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


def _exec_argv(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> list[str]:
    """The command line that starts argv with PDEATHSIG set.

    util-linux's setpriv sets the parent-death signal and execs the command,
    so no Python runs in the forked child: a preexec_fn is not safe under
    uvloop (children crashed now and then). Without setpriv, the preexec_fn
    is used instead. A missing executable is reported before the fork, as
    FileNotFoundError, so the error stays precise."""
    if _SETPRIV is None:
        return list(argv)
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    program = argv[0]
    if os.sep in program:
        full = program if os.path.isabs(program) else os.path.join(cwd or os.getcwd(), program)
        if not os.path.exists(full):
            raise FileNotFoundError(2, "No such file or directory", program)
    elif shutil.which(program, path=path) is None:
        raise FileNotFoundError(2, "No such file or directory", program)
    if cwd is not None and not os.path.isdir(cwd):
        raise FileNotFoundError(2, "No such file or directory", cwd)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


_HIDDEN_ENV: set[str] = set()


def hide_from_children(names: Iterable[str]) -> None:
    """Variables of the agent's environment that its children (instances,
    hooks) must not inherit: the backup repositories' passwords and
    credentials (`password_env`, `credentials_env`)."""
    _HIDDEN_ENV.update(names)


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without the hidden variables and any
    RESTIC_*, plus `env`."""
    base = {
        k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV and not k.startswith("RESTIC_")
    }
    return {**base, **env}


async def _spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None, stdout: int
) -> asyncio.subprocess.Process:
    full_env = child_environment(env)
    return await asyncio.create_subprocess_exec(
        *_exec_argv(argv, full_env, cwd),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=None if _SETPRIV else _child_setup(),
    )


# --- one supervised process --------------------------------------------------------------


@dataclass(slots=True)
class ProcessSpec:
    """What to run. ``env`` is added to the agent's own environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stop_signal: int
    stop_timeout: float
    log_dir: Path
    log_max_bytes: int = defaults.LOG_MAX_BYTES
    log_backups: int = defaults.LOG_BACKUPS

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"process {self.name!r}: empty command")

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir) / f"{self.name}.log"


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    kind: EventKind
    name: str
    pid: int | None
    returncode: int | None
    detail: str
    delay: float | None = None
    """For "restarting": seconds until the restart."""


class SupervisedProcess:
    """One child kept running: started, watched, restarted with backoff, stopped.

    ``state`` is "stopped" before ``start()``; then "starting" (spawning),
    "running", "backoff" (exited, restart pending), "failed" (restart limit hit:
    the monitor ends) and "stopped" after ``stop()``. ``started_at`` is the wall
    clock time of the current run's start.
    """

    def __init__(
        self,
        spec: ProcessSpec,
        policy: RestartPolicy,
        registry: LeftoverRegistry,
        on_event: Callable[[ProcessEvent], None] | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.registry = registry
        self._on_event = on_event
        self._tracker = RestartTracker(policy)
        self._state: State = "stopped"
        self._waiters: list[tuple[frozenset[str], asyncio.Future[str]]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._lifecycle = asyncio.Lock()
        self._log_lock = asyncio.Lock()
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_detail = ""
        self.started_at: float | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Start the child and its monitor; returns after the first spawn attempt.

        A no-op while already supervising. After "failed" it starts afresh with
        a new restart budget.
        """
        async with self._lifecycle:
            if self._task is not None and not self._task.done():
                return
            self._tracker.reset()
            self._first_attempt = asyncio.Event()
            self._task = asyncio.create_task(self._supervise(), name=f"supervise {self.spec.name}")
            self._log_task = asyncio.create_task(self._watch_log(), name=f"log {self.spec.name}")
        await self._first_attempt.wait()

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the running child's whole group (SIGSTOP/SIGCONT freeze
        and thaw it); False when nothing runs."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return False
        return killpg_quiet(proc.pid, sig)

    async def stop(self) -> None:
        """Stop signal to the whole group, SIGKILL after ``stop_timeout``. Idempotent."""
        async with self._lifecycle:
            tasks = [t for t in (self._task, self._log_task) if t is not None]
            self._task = self._log_task = None
            if not tasks and self._proc is None:
                return
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks)
            proc, self._proc = self._proc, None
            pid = proc.pid if proc is not None else None
            if proc is not None:
                await self._stop_group(proc)
                self.registry.forget(proc.pid)
                if proc.returncode is not None:
                    self.last_exit = proc.returncode
                    self.last_detail = describe_exit(proc.returncode)
            self._set_state("stopped")
            self._emit("stopped", pid, self.last_exit, "stopped")

    async def wait_state(
        self,
        states: str | Collection[str],
        timeout: float | None,
    ) -> str:
        """Wait until ``state`` is one of ``states``; TimeoutError after ``timeout``."""
        wanted = frozenset([states] if isinstance(states, str) else states)
        if self._state in wanted:
            return self._state
        entry = (wanted, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(entry[1], timeout)
        finally:
            self._waiters.remove(entry)

    # --- internals -------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self._state = state
        for wanted, fut in self._waiters:
            if state in wanted and not fut.done():
                fut.set_result(state)

    def _emit(
        self,
        kind: EventKind,
        pid: int | None,
        returncode: int | None,
        detail: str,
        delay: float | None = None,
    ) -> None:
        log.info("%s: %s (pid %s) %s", self.spec.name, kind, pid, detail)
        if self._on_event is None:
            return
        try:
            self._on_event(ProcessEvent(kind, self.spec.name, pid, returncode, detail, delay))
        except Exception:
            log.exception("%s: event handler failed", self.spec.name)

    async def _supervise(self) -> None:
        try:
            while True:
                returncode, detail, ran_from = await self._run_once()
                decision = self._tracker.record_exit(time.monotonic(), ran_from)
                if decision.action == "give_up":
                    self._set_state("failed")
                    self._emit("failed", None, returncode, f"gave up: {decision.reason}; {detail}")
                    return
                self._set_state("backoff")
                self._emit(
                    "restarting",
                    None,
                    returncode,
                    f"restart {self.restarts + 1} in {decision.delay:.2f}s",
                    decision.delay,
                )
                await asyncio.sleep(decision.delay)
                self.restarts += 1
        except Exception as exc:  # a bug here must not leave a silent zombie monitor
            log.exception("%s: supervisor failed", self.spec.name)
            self._set_state("failed")
            self._emit("failed", self.pid, None, f"supervisor error: {exc!r}")
        finally:
            self._first_attempt.set()

    async def _run_once(self) -> tuple[int, str, float]:
        """Spawn, wait for the exit, clean up the group: (returncode, detail, start time)."""
        spec = self.spec
        self._set_state("starting")
        ran_from = time.monotonic()
        try:
            async with self._log_lock:
                await asyncio.to_thread(
                    logs.rotate_if_larger, spec.log_path, spec.log_max_bytes, spec.log_backups
                )
            fd = await asyncio.to_thread(logs.open_for_child, spec.log_path)
        except OSError as exc:
            return self._spawn_failed(126, f"cannot open log {spec.log_path}: {exc}", ran_from)
        try:
            proc = await _spawn(spec.argv, spec.env, spec.cwd, fd)
        except (OSError, subprocess.SubprocessError) as exc:
            code, detail = _spawn_failure(spec.argv, spec.cwd, exc)
            await asyncio.to_thread(logs.append_line, spec.log_path, detail)
            return self._spawn_failed(code, detail, ran_from)
        finally:
            os.close(fd)

        self._proc = proc
        try:
            self.registry.record(spec.name, proc.pid)
        except OSError as exc:
            log.warning("%s: cannot record pid %d: %s", spec.name, proc.pid, exc)
        self.started_at = time.time()
        self._set_state("running")
        self._emit("started", proc.pid, None, " ".join(spec.argv))
        self._first_attempt.set()

        returncode = await proc.wait()
        detail = describe_exit(returncode)
        self.last_exit, self.last_detail = returncode, detail
        self._set_state("backoff")
        self._emit("exited", proc.pid, returncode, detail)
        await self._stop_group(proc)  # descendants of the dead leader
        self.registry.forget(proc.pid)
        self._proc = None
        await asyncio.to_thread(logs.append_line, spec.log_path, f"pid {proc.pid} {detail}")
        return returncode, detail, ran_from

    def _spawn_failed(self, code: int, detail: str, ran_from: float) -> tuple[int, str, float]:
        self.last_exit, self.last_detail = code, detail
        self._emit("exited", None, code, detail)
        self._first_attempt.set()
        return code, detail, ran_from

    async def _stop_group(self, proc: asyncio.subprocess.Process) -> None:
        """Stop signal to the group, wait up to stop_timeout for all of it, then SIGKILL."""
        loop = asyncio.get_running_loop()
        pgid = proc.pid
        deadline = loop.time() + self.spec.stop_timeout
        if not killpg_quiet(pgid, self.spec.stop_signal) and proc.returncode is not None:
            return  # nobody left
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - loop.time()))
        # Polling: the members are not our children, nothing tells us when they exit.
        while await asyncio.to_thread(group_members, pgid) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(GROUP_POLL_INTERVAL)
        if proc.returncode is None or bool(await asyncio.to_thread(group_members, pgid)):
            log.info("%s: group %d ignored the stop signal, SIGKILL", self.spec.name, pgid)
            killpg_quiet(pgid, signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), KILL_WAIT)
            except TimeoutError:
                log.warning("%s: pid %d survives SIGKILL", self.spec.name, pgid)

    async def _watch_log(self) -> None:
        spec = self.spec
        while True:
            await asyncio.sleep(defaults.LOG_CHECK_INTERVAL)
            try:
                async with self._log_lock:
                    await asyncio.to_thread(
                        logs.rotate_if_larger,
                        spec.log_path,
                        spec.log_max_bytes,
                        spec.log_backups,
                        copy=True,
                    )
            except OSError as exc:
                log.warning("%s: log rotation failed: %s", spec.name, exc)


# --- hooks ----------------------------------------------------------------------------


async def run_hook(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = defaults.HOOK_TIMEOUT,
    log_path: Path | None = None,
) -> int:
    """Run a command to completion (on_promote / on_demote); its exit code.

    Same child setup as a supervised process (own group, PDEATHSIG); output is
    appended to ``log_path`` (or discarded). Shell conventions: 124 when it was
    killed (whole group, SIGKILL) at ``timeout``, 127 when not found, 126 when
    it cannot be started otherwise, 128+N when killed by signal N. Descendants
    it leaves running after a normal exit are left alone.
    """
    fd = await asyncio.to_thread(logs.open_for_child, log_path) if log_path else None
    try:
        proc = await _spawn(argv, env or {}, cwd, subprocess.DEVNULL if fd is None else fd)
    except (OSError, subprocess.SubprocessError) as exc:
        code, detail = _spawn_failure(argv, cwd, exc)
        log.debug("hook %s: %s", argv[0], detail)
        if log_path:
            await asyncio.to_thread(logs.append_line, log_path, detail)
        return code
    finally:
        if fd is not None:
            os.close(fd)
    try:
        returncode = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        log.debug("hook %s: timed out after %gs, killed", argv[0], timeout)
        if log_path:
            await asyncio.to_thread(logs.append_line, log_path, f"timed out after {timeout:g}s")
        return 124
    finally:
        if proc.returncode is None:  # timeout or cancellation
            killpg_quiet(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT)
    return 128 - returncode if returncode < 0 else returncode
