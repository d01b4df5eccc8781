"""SupervisedProcess, run_hook, LeftoverRegistry and log files, with real small processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ninefold.supervisor import (
    LeftoverRecord,
    LeftoverRegistry,
    ProcessEvent,
    ProcessSpec,
    RestartPolicy,
    SupervisedProcess,
    logs,
    run_hook,
)

pytestmark = pytest.mark.process  # every test here starts a program

PY = sys.executable
FAST = RestartPolicy(backoff=0.05, backoff_max=0.2, limit=3, window=30.0)
SLEEPER = "import threading; threading.Event().wait()"


def gone(pid: int) -> bool:
    """Not there, or a zombie (this machine's init may not reap orphans)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def eventually(pred: Callable[[], object], within: float = 5.0) -> None:
    """Poll ``pred`` until true; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def make(
    tmp_path: Path,
    code: str | list[str],
    *,
    policy: RestartPolicy = FAST,
    stop_timeout: float = 2.0,
    events: list[ProcessEvent] | None = None,
    name: str = "svc",
    **spec_kw: object,
) -> SupervisedProcess:
    argv = [PY, "-c", code] if isinstance(code, str) else code
    spec = ProcessSpec(
        name, argv, {}, None, signal.SIGTERM, stop_timeout, tmp_path / "logs", **spec_kw
    )  # type: ignore[arg-type]
    registry = LeftoverRegistry(tmp_path / "run")
    return SupervisedProcess(spec, policy, registry, events.append if events is not None else None)


async def test_output_of_both_streams_lands_in_the_log(tmp_path: Path) -> None:
    code = "import sys, threading; print('to-out', flush=True); print('to-err', file=sys.stderr); "
    proc = make(tmp_path, code + "threading.Event().wait()")
    await proc.start()
    try:
        assert proc.state == "running"
        assert proc.pid is not None
        assert [r.pid for r in proc.registry.records()] == [proc.pid]
        log_path = proc.spec.log_path
        await eventually(lambda: "to-out" in read(log_path) and "to-err" in read(log_path))
    finally:
        await proc.stop()
    assert proc.state == "stopped"
    assert proc.registry.records() == []


async def test_crashing_process_restarts_with_growing_delay_then_fails(tmp_path: Path) -> None:
    events: list[ProcessEvent] = []
    proc = make(tmp_path, "import sys; sys.exit(3)", events=events)
    await proc.start()
    await proc.wait_state("failed", timeout=10)
    kinds = [e.kind for e in events]
    assert kinds == ["started", "exited", "restarting"] * 3 + ["started", "exited", "failed"]
    assert [e.delay for e in events if e.kind == "restarting"] == [0.05, 0.1, 0.2]
    assert all(e.returncode == 3 for e in events if e.kind == "exited")
    assert "gave up" in events[-1].detail and "exited with code 3" in events[-1].detail
    assert proc.restarts == 3
    assert proc.last_exit == 3
    assert proc.registry.records() == []
    await proc.stop()
    assert events[-1].kind == "stopped"


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = """
import signal, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('ready', flush=True)
threading.Event().wait()  # until killed
"""
    proc = make(tmp_path, code, stop_timeout=0.3)
    await proc.start()
    await eventually(lambda: "ready" in read(proc.spec.log_path))
    pid = proc.pid
    assert pid is not None
    await proc.stop()
    assert proc.last_exit == -signal.SIGKILL
    assert gone(pid)


async def test_stop_reaches_the_whole_group(tmp_path: Path) -> None:
    code = f"""
import subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])
print('grandchild', child.pid, flush=True)
threading.Event().wait()  # until killed
"""
    proc = make(tmp_path, code)
    await proc.start()
    await eventually(lambda: "grandchild" in read(proc.spec.log_path))
    grandchild = int(read(proc.spec.log_path).split("grandchild")[1].split()[0])
    pid = proc.pid
    assert pid is not None and not gone(grandchild)
    await proc.stop()
    await eventually(lambda: gone(grandchild), within=2)
    assert gone(pid)
    assert proc.last_exit == -signal.SIGTERM


async def test_stop_is_idempotent_and_safe_before_start(tmp_path: Path) -> None:
    events: list[ProcessEvent] = []
    proc = make(tmp_path, SLEEPER, events=events)
    await proc.stop()
    assert events == []
    await proc.start()
    await asyncio.gather(proc.stop(), proc.stop())
    await proc.stop()
    assert [e.kind for e in events] == ["started", "stopped"]


async def test_stop_during_backoff(tmp_path: Path) -> None:
    slow = RestartPolicy(backoff=30.0, backoff_max=30.0, limit=3, window=60.0)
    proc = make(tmp_path, "pass", policy=slow)
    await proc.start()
    await proc.wait_state("backoff", timeout=5)
    await asyncio.wait_for(proc.stop(), timeout=2)
    assert proc.state == "stopped"


async def test_pdeathsig_kills_child_when_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, signal, sys
        from pathlib import Path
        from ninefold.supervisor import (
            LeftoverRegistry, ProcessSpec, RestartPolicy, SupervisedProcess)

        async def main():
            d = Path(sys.argv[1])
            spec = ProcessSpec("orphan", [sys.executable, "-c", {SLEEPER!r}], {{}}, None,
                               signal.SIGTERM, 1.0, d)
            p = SupervisedProcess(spec, RestartPolicy(), LeftoverRegistry(d / "run"))
            await p.start()
            print(p.pid, flush=True)
            await asyncio.Event().wait()  # until killed

        asyncio.run(main())
        """)
    )
    parent = await asyncio.create_subprocess_exec(
        PY, str(script), str(tmp_path), stdout=subprocess.PIPE
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(await asyncio.wait_for(parent.stdout.readline(), timeout=10))
        assert not gone(child)
        parent.kill()
        await parent.wait()
        await eventually(lambda: gone(child), within=2)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


async def test_missing_executable_fails_with_detail(tmp_path: Path) -> None:
    events: list[ProcessEvent] = []
    policy = RestartPolicy(backoff=0.01, backoff_max=0.01, limit=1, window=30.0)
    proc = make(tmp_path, ["/nonexistent/ninefold-test"], policy=policy, events=events)
    await proc.start()  # no exception
    await proc.wait_state("failed", timeout=5)
    assert [e.kind for e in events] == ["exited", "restarting", "exited", "failed"]
    assert events[0].returncode == 127
    assert "executable /nonexistent/ninefold-test" in events[-1].detail
    assert "No such file" in events[-1].detail
    assert "cannot start" in read(proc.spec.log_path)
    await proc.stop()


async def test_missing_working_directory_is_named(tmp_path: Path) -> None:
    events: list[ProcessEvent] = []
    policy = RestartPolicy(backoff=0.01, backoff_max=0.01, limit=0, window=30.0)
    proc = make(tmp_path, SLEEPER, policy=policy, events=events)
    proc.spec.cwd = str(tmp_path / "nowhere")
    await proc.start()
    await proc.wait_state("failed", timeout=5)
    assert "working directory" in events[-1].detail


async def test_log_is_rotated_at_start(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "svc.log").write_text("old\n" * 100)
    (log_dir / "svc.log.1").write_text("older\n")
    proc = make(tmp_path, "print('new', flush=True); " + SLEEPER, log_max_bytes=100)
    await proc.start()
    try:
        await eventually(lambda: "new" in read(log_dir / "svc.log"))
        assert "old" not in read(log_dir / "svc.log")
        assert read(log_dir / "svc.log.1").startswith("old")
        assert read(log_dir / "svc.log.2") == "older\n"
    finally:
        await proc.stop()


# --- run_hook ---------------------------------------------------------------------------


async def test_run_hook_exit_code_and_output(tmp_path: Path) -> None:
    log_path = tmp_path / "hook.log"
    code = "import os; print('hook', os.environ['X']); raise SystemExit(3)"
    assert await run_hook([PY, "-c", code], {"X": "42"}, None, 5, log_path) == 3
    assert "hook 42" in read(log_path)


async def test_run_hook_timeout_kills_the_group(tmp_path: Path) -> None:
    code = f"""
import subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])
print(child.pid, flush=True)
threading.Event().wait()  # until killed
"""
    log_path = tmp_path / "hook.log"
    task = asyncio.create_task(run_hook([PY, "-c", code], {}, None, 60, log_path))
    await eventually(lambda: read(log_path).strip().isdigit())
    grandchild = int(read(log_path))
    task.cancel()  # cancellation kills the group as a timeout does
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await eventually(lambda: gone(grandchild), within=2)
    assert await run_hook([PY, "-c", SLEEPER], {}, None, 0.3, None) == 124


async def test_run_hook_not_found_and_signal() -> None:
    assert await run_hook(["/nonexistent/hook"], {}, None, 5, None) == 127
    code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert await run_hook([PY, "-c", code], {}, None, 5, None) == 128 + signal.SIGTERM


# --- leftovers --------------------------------------------------------------------------


def spawn_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-c", SLEEPER], start_new_session=True)


def spawn_group(extra: str = "") -> subprocess.Popen[bytes]:
    code = f"""
import subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])
print(child.pid, flush=True)
{extra}
"""
    return subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, start_new_session=True)


async def test_cleanup_kills_recorded_live_group(tmp_path: Path) -> None:
    registry = LeftoverRegistry(tmp_path / "run")
    leader = spawn_group("threading.Event().wait()")
    assert leader.stdout is not None
    grandchild = int(await asyncio.to_thread(leader.stdout.readline))
    try:
        assert registry.record("svc", leader.pid) is not None
        assert await registry.cleanup() == ["svc"]
        assert gone(leader.pid) and gone(grandchild)
        assert registry.records() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
        leader.stdout.close()


async def test_cleanup_kills_group_of_a_dead_leader(tmp_path: Path) -> None:
    registry = LeftoverRegistry(tmp_path / "run")
    leader = spawn_group("time.sleep(0.5)")
    assert leader.stdout is not None
    assert registry.record("svc", leader.pid) is not None
    grandchild = int(await asyncio.to_thread(leader.stdout.readline))
    await asyncio.to_thread(leader.wait)  # the leader is gone, its child remains in the group
    try:
        assert not gone(grandchild)
        assert await registry.cleanup() == ["svc"]
        assert gone(grandchild)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
        leader.stdout.close()


async def test_cleanup_ignores_reused_pid(tmp_path: Path) -> None:
    registry = LeftoverRegistry(tmp_path / "run")
    stranger = spawn_sleeper()
    try:
        ctime = psutil.Process(stranger.pid).create_time()
        registry.add(LeftoverRecord("old", stranger.pid, stranger.pid, ctime - 1000.0))
        registry.add(LeftoverRecord("dead", 2**22 + 5, 2**22 + 5, 1.0))  # above pid_max
        (registry.dir / ".7.json.tmp").write_text("{")
        (registry.dir / "8.json").write_text("not json")
        assert await registry.cleanup() == []
        assert not gone(stranger.pid)
        assert list(registry.dir.iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()


# --- log files --------------------------------------------------------------------------


def test_rotate_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    for i in range(5):
        path.write_text(f"gen{i}\n")
        logs.rotate(path, 3)
    assert not path.exists()
    assert [logs.backup_path(path, n).read_text() for n in (1, 2, 3)] == [
        "gen4\n",
        "gen3\n",
        "gen2\n",
    ]
    assert not logs.backup_path(path, 4).exists()


def test_rotate_copy_truncates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    fd = logs.open_for_child(path)
    try:
        os.write(fd, b"x" * 50)
        assert logs.rotate_if_larger(path, 10, 2, copy=True)
        os.write(fd, b"after\n")  # O_APPEND: continues at the start of the emptied file
    finally:
        os.close(fd)
    assert path.read_bytes() == b"after\n"
    assert logs.backup_path(path, 1).read_bytes() == b"x" * 50
    assert not logs.rotate_if_larger(path, 10, 2)


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    assert logs.tail(path, 5) == []
    path.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert logs.tail(path, 3) == ["line 9997", "line 9998", "line 9999"]
    logs.rotate(path, 2)
    path.write_text("fresh\n")
    assert logs.tail(path, 3) == ["fresh"]
    assert logs.tail(path, 3, backups=2) == ["line 9998", "line 9999", "fresh"]
    assert logs.tail(path, 0) == []
