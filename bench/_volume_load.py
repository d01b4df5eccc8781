"""Helpers of bench/volume_replication.py: the writer the `db` service runs,
the seeding comparison (a tree pushed through ninefold's transfer channel
against plain `rsync -a`), and CPU accounting of an agent and its transfers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import resource
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ninefold.security.ca import create_ca
from ninefold.security.certs import issue_node_files
from ninefold.spec import NodeSpec
from ninefold.volumes.transport import RSYNC_ARGS, VolumeListener, push

# -- the writer ---------------------------------------------------------------------------
WRITER = r"""
import os, sys, threading, time, pathlib
volume, acks, me = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
rate, mb_rate, big = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
run = os.getpid()  # an instance that becomes active again must not reuse names

def stream(kind, period, payload, log_path):
    log = open(log_path, "a")
    n, due = 0, time.monotonic()
    while True:
        name = volume / f"{kind}-{me}-{run}-{n:06d}"
        with open(name, "wb") as f:
            f.write(payload())
            f.flush(); os.fsync(f.fileno())
        log.write(f"{name.name} {time.time()}\n"); log.flush()
        n += 1
        due += period
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:  # behind (a slow fsync): go on at the rate, no burst
            due = time.monotonic()

if mb_rate > 0:
    threading.Thread(
        target=stream, daemon=True,
        args=("b", big / (mb_rate * 1e6), lambda: os.urandom(big), f"{acks}.big"),
    ).start()
stream("w", 1.0 / rate, lambda: b"x" * 512, acks)
"""
"""The `db` service's process: argv volume, ack log, instance, small files per
second, MB per second of big files, bytes per big file. `w-*` files (512 B,
--rate a second) and `b-*` files (random bytes, one every big / mb_rate
seconds), each fsynced, then logged with the time (the acknowledgement) to the
ack log (small) or `<ack log>.big` (big)."""

KINDS = {"w": "small", "b": "big"}


def acks(work: Path) -> dict[str, float]:
    """Acknowledged file -> when (epoch), from every ack log."""
    found: dict[str, float] = {}
    for log in (work / "acks").glob("*.log*"):
        for line in log.read_text().splitlines():
            name, _, at = line.partition(" ")
            if at:
                with contextlib.suppress(ValueError):
                    found[name] = float(at)
    return found


def names(directory: Path) -> set[str]:
    """The writer's files in a copy (rsync's temporary `.name.XXXX` excluded)."""
    try:
        return {n for n in os.listdir(directory) if n[:2] in ("w-", "b-")}
    except FileNotFoundError:
        return set()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- CPU of an agent and its transfers ----------------------------------------------------
def _is_transfer(proc: psutil.Process) -> bool:
    """A sending rsync, or its remote shell (volumes/pipe.py)."""
    if proc.name() == "rsync":
        return True
    return any("ninefold.volumes.pipe" in a for a in proc.cmdline())


@dataclass
class CpuSample:
    at: float
    own: float
    """The agent's own user + system seconds."""
    reaped: float
    """Its children_user + children_system: every descendant that exited and was waited for."""
    live: dict[tuple[int, float], float] = field(default_factory=dict)
    """(pid, create time) -> user + system of the transfers running now."""


def cpu_sample(pid: int) -> CpuSample:
    agent = psutil.Process(pid)
    times = agent.cpu_times()
    live = {}
    for child in agent.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if _is_transfer(child):
                t = child.cpu_times()
                live[(child.pid, child.create_time())] = t.user + t.system
    return CpuSample(
        time.monotonic(),
        times.user + times.system,
        times.children_user + times.children_system,
        live,
    )


def cpu_between(a: CpuSample, b: CpuSample) -> dict[str, float]:
    """CPU seconds from sample a to b: the agent's own, and its transfers'
    (those still running at b: since a or since they started; those that
    ended: what they had at their exit, less what they had at a)."""
    transfers = b.reaped - a.reaped
    transfers += sum(cpu - a.live.get(key, 0.0) for key, cpu in b.live.items())
    transfers -= sum(cpu for key, cpu in a.live.items() if key not in b.live)
    return {"seconds": b.at - a.at, "agent": b.own - a.own, "transfers": max(0.0, transfers)}


# -- seeding: a 10,000-file tree, ninefold's push against rsync -a -----------------------
def build_tree(root: Path, files: int, seed: int = 9) -> int:
    """`files` files of 1-4 kB of random bytes, 100 to a directory, two levels
    deep; their total size."""
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        directory = root / f"d{i // 1000:02d}" / f"e{(i // 100) % 10}"
        if i % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 4096)
        (directory / f"f{i:05d}.dat").write_bytes(rng.randbytes(size))
        total += size
    return total


def count_files(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under root, .ninefold-partial excluded."""
    count = size = 0
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".ninefold-partial"]
        for name in files:
            count += 1
            size += os.lstat(os.path.join(directory, name)).st_size
    return count, size


@dataclass
class SeedRun:
    variant: str
    wall: float
    cpu: float
    """User + system seconds of everything involved: the rsyncs, the pipe, and
    (for a push) the listener relaying in this process."""
    ok: bool
    error: str = ""


LOCAL_RSH = '#!/bin/sh\nshift\nexec "$@"\n'
"""A remote shell that runs the remote command here (drops the host): rsync's
remote mode over plain pipes, no relay."""


def _rusage() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


async def _timed(
    variant: str, run: Callable[[], Awaitable[tuple[bool, str]]], check: Callable[[], bool]
) -> SeedRun:
    await asyncio.to_thread(os.sync)  # the last run's writeback is not this one's
    cpu, started = _rusage(), time.perf_counter()
    ok, error = await run()
    wall, cpu = time.perf_counter() - started, _rusage() - cpu
    if ok and not check():
        ok, error = False, "the copy differs from the tree"
    return SeedRun(variant, wall, cpu, ok, error)


async def _rsync(*argv: str) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        "rsync", *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode == 0, err.decode(errors="replace").strip()[-200:]


async def seeding(
    work: Path, files: int, rounds: int, tls: bool = True, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build the tree in work/src and copy it to a new directory with each
    variant, `rounds` times in turn; per variant the median wall and CPU
    seconds (and every run)."""
    src = work / "src"
    say(f"seeding: building a tree of {files} files")
    size = await asyncio.to_thread(build_tree, src, files)
    rsh = work / "local-rsh"
    rsh.write_text(LOCAL_RSH)
    rsh.chmod(0o755)
    volume = "seed/tree@1"
    target: dict[str, Path] = {}
    plain = VolumeListener("127.0.0.1", 0, lambda v: target["dst"] if v == volume else None)
    listeners = [plain]
    secure: VolumeListener | None = None
    tls_dir: Path | None = None
    if tls:
        ca = create_ca("bench")
        server = issue_node_files(ca, NodeSpec(name="n1", address="127.0.0.1"), work / "n1")
        client = issue_node_files(ca, NodeSpec(name="n2", address="127.0.0.1"), work / "n2")
        tls_dir = client.directory
        secure = VolumeListener(
            "127.0.0.1", 0, lambda v: target["dst"] if v == volume else None, tls=server
        )
        listeners.append(secure)
    for listener in listeners:
        await listener.start()

    async def pushed(
        listener: VolumeListener, tls_dir: Path | None, **options: Any
    ) -> tuple[bool, str]:
        result = await push(
            src, "127.0.0.1", listener.port, volume, tls_dir=tls_dir, timeout=900, **options
        )
        return result.ok, result.error

    variants: dict[str, Callable[[Path], Awaitable[tuple[bool, str]]]] = {
        "rsync -a": lambda dst: _rsync("-a", f"{src}/", f"{dst}/"),
        "rsync, push's options": lambda dst: _rsync(*RSYNC_ARGS, f"{src}/", f"{dst}/"),
        "rsync, push's options, pipe": lambda dst: _rsync(
            *RSYNC_ARGS, "-e", str(rsh), f"{src}/", f"here:{dst}/"
        ),
        "push, plain TCP": lambda dst: pushed(plain, None),
    }
    if secure is not None:
        variants["push, mutual TLS"] = lambda dst: pushed(secure, tls_dir)
    if "progress" in inspect.signature(push).parameters:
        # how the mirror makes a first copy: with rsync's progress reported
        variants["push, plain TCP, as a first copy"] = lambda dst: pushed(
            plain, None, progress=lambda _done: None
        )
    runs: list[SeedRun] = []
    order = list(variants)
    try:
        # untimed: the first copy on a file system pays for things the next do not
        await _rsync("-a", f"{src}/", f"{work}/warm-up/")
        for r in range(rounds):
            for variant in order[r % len(order) :] + order[: r % len(order)]:
                dst = work / f"dst-{r}-{order.index(variant)}"
                target["dst"] = dst

                async def go(
                    run: Callable[[Path], Awaitable[tuple[bool, str]]] = variants[variant],
                    dst: Path = dst,
                ) -> tuple[bool, str]:
                    return await run(dst)

                def check(dst: Path = dst) -> bool:
                    return count_files(dst) == (files, size)

                done = await _timed(variant, go, check)
                runs.append(done)
                say(
                    f"seeding round {r + 1}/{rounds}: {variant}: {done.wall:.2f} s wall, "
                    f"{done.cpu:.2f} s CPU{'' if done.ok else ' FAILED: ' + done.error}"
                )
    finally:
        for listener in listeners:
            await listener.stop()
    summary: dict[str, Any] = {"files": files, "mb": round(size / 1e6, 2), "variants": {}}
    for variant in variants:
        mine = [run for run in runs if run.variant == variant]
        summary["variants"][variant] = {
            "wall_s": round(statistics.median(run.wall for run in mine), 3),
            "cpu_s": round(statistics.median(run.cpu for run in mine), 3),
            "runs_wall_s": [round(run.wall, 3) for run in mine],
            "ok": all(run.ok for run in mine),
            "error": next((run.error for run in mine if run.error), ""),
        }
    return summary
