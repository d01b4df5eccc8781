"""Children a previous agent left behind, and process-group helpers.

Every child gets ``PR_SET_PDEATHSIG`` so it dies with the agent, but its own
children (a shell's, a worker pool's) do not inherit that, and an agent can be
restarted between a fork and the prctl. So every started child is also written
down here, one small JSON file per process; a starting agent calls
``cleanup()`` and kills the process group of every recorded child that is
still there.

A pid is only trusted together with its creation time (psutil's
``create_time``): a record whose pid now belongs to a younger process is
dropped without a signal. When the recorded leader is gone but members of its
group remain, those members are killed one by one, and only those not older
than the leader (Linux does not reuse a pid while a process group with that
id exists, so they are the leader's descendants).

Zombies count as gone everywhere: they hold no resources but a pid, and on a
machine whose init does not reap they would otherwise look alive forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

CREATE_TIME_TOLERANCE = 0.05
"""Seconds; psutil's create_time of one process is stable to far better than this."""


# --- process groups ------------------------------------------------------------


def killpg_quiet(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no members (never raises for that)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to signal process group %d", pgid)
        return False
    return True


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of group ``pgid``. Blocking (reads /proc)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: the kill(0) above is all we know
        return [pgid]
    members = []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(name))
    return members


def create_time(pid: int) -> float | None:
    """psutil's creation time of ``pid``; None when it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


# --- the registry ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeftoverRecord:
    name: str
    pid: int
    pgid: int
    create_time: float


class LeftoverRegistry:
    """One JSON file per running child under ``dir``, written atomically.

    ``add``/``forget`` are small synchronous writes (no fsync: after a machine
    crash there is nothing left to kill anyway), cheap enough for the event loop.
    """

    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir)

    def _path(self, pid: int) -> Path:
        return self.dir / f"{pid}.json"

    def record(self, name: str, pid: int, pgid: int | None = None) -> LeftoverRecord | None:
        """Write down a child just started; None when it is already gone."""
        ctime = create_time(pid)
        if ctime is None:
            return None
        rec = LeftoverRecord(
            name=name, pid=pid, pgid=pid if pgid is None else pgid, create_time=ctime
        )
        self.add(rec)
        return rec

    def add(self, rec: LeftoverRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(rec.pid)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(rec)), encoding="utf-8")
        os.replace(tmp, path)

    def forget(self, pid: int) -> None:
        self._path(pid).unlink(missing_ok=True)

    def records(self) -> list[LeftoverRecord]:
        """All readable records; unreadable ones and stray temp files are removed."""
        out: list[LeftoverRecord] = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)
                continue
            if path.suffix != ".json":
                continue
            try:
                out.append(LeftoverRecord(**json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("dropping unreadable leftover record %s: %s", path, exc)
                path.unlink(missing_ok=True)
        return out

    async def cleanup(self, timeout: float = 5.0) -> list[str]:
        """Kill what previous runs left behind; the names of what was killed.

        Waits (polling, up to ``timeout`` per record) until each group is gone.
        """
        killed = []
        for rec in await asyncio.to_thread(self.records):
            targets = await asyncio.to_thread(_verified_members, rec)
            if targets:
                log.info("killing leftover %s (pid %d, group %d)", rec.name, rec.pid, rec.pgid)
                await _kill_until_gone(rec, asyncio.get_running_loop().time() + timeout)
                killed.append(rec.name)
            self.forget(rec.pid)
        return killed


def _verified_members(rec: LeftoverRecord) -> list[int]:
    """Members of the record's group that are provably the recorded child or its descendants."""
    leader_ctime = create_time(rec.pid)
    if leader_ctime is not None and abs(leader_ctime - rec.create_time) > CREATE_TIME_TOLERANCE:
        return []  # the pid was reused: the recorded child is gone, this is someone else
    members = []
    for pid in group_members(rec.pgid):
        ctime = create_time(pid)
        if ctime is not None and ctime >= rec.create_time - CREATE_TIME_TOLERANCE:
            members.append(pid)
    return members


async def _kill_until_gone(rec: LeftoverRecord, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        members = await asyncio.to_thread(_verified_members, rec)
        if not members:
            return
        if loop.time() > deadline:
            log.warning("leftover %s: pids %s survive SIGKILL", rec.name, members)
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.02)
