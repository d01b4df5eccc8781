"""restic, driven: one restic process per call, read through its ``--json``
output where it has one.

Written against Debian's restic 0.14, whose JSON is partial: ``backup``,
``snapshots``, ``forget`` and ``stats`` speak it; ``init``, ``check``,
``restore`` and ``unlock`` write text, which is read for what matters (a
check's errors) and otherwise only for error messages.

Every restic runs in its own session (no terminal, so ssh can never prompt),
dies with the agent (setpriv's parent-death signal) and gets its password
through its environment only (`repository.restic_environment`). A call that
times out or is cancelled stops its restic with SIGINT first, so that restic
removes its lock from the repository and closes its ssh, then SIGKILLs
whatever is left after ``stop_grace``, ssh included (restic starts ssh in a
process group of its own, so the ssh is found among restic's descendants, not
in its group).

For sftp, ssh writes its messages to a file of the call's (``ssh -E``) rather
than to restic, which now and then exits before passing ssh's stderr on: the
reason a connection failed ("Connection refused", "Permission denied
(publickey)", "Host key verification failed") is then always in the error.

Failures raise `ResticError`: one line, a `kind` to act on, and no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from ninefold.backup.repository import (
    Repository,
    RepositoryConfigError,
    ResticEnvironment,
    restic_environment,
)
from ninefold.supervisor.process import dies_with_parent

log = logging.getLogger("ninefold.backup")

__all__ = [
    "BackupResult",
    "CheckResult",
    "ErrorKind",
    "ForgetResult",
    "KeepPolicy",
    "Progress",
    "ProgressCallback",
    "Restic",
    "ResticError",
    "Snapshot",
    "Stats",
    "classify",
]

#: What Debian calls the package, for the message when restic is missing.
INSTALL_HINT = "install it with `apt-get install restic`"
STATS_MODES = ("restore-size", "files-by-contents", "blobs-per-file", "raw-data")
# restic's exit code when a backup was written but some files could not be read.
_EXIT_INCOMPLETE = 3
_LINE_LIMIT = 1 << 20
# restic clears its terminal line even when it has none ("\x1b[2K" before a message).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STDERR_KEPT = 200


class ErrorKind(StrEnum):
    """What went wrong, for a caller to act on (the message says it to a person)."""

    WRONG_PASSWORD = "wrong-password"
    NO_REPOSITORY = "no-repository"  # nothing initialised there (path, bucket, prefix)
    UNREACHABLE = "unreachable"  # connection refused, ssh refused, endpoint down
    LOCKED = "locked"
    NOT_INSTALLED = "not-installed"
    NOT_FOUND = "not-found"  # no such snapshot
    CONFIG = "config"  # password file, credentials, variables
    TIMEOUT = "timeout"
    FAILED = "failed"


class ResticError(Exception):
    """A restic call that failed: ``str(error)`` is one line without secrets."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        command: str | None = None,
        returncode: int | None = None,
    ) -> None:
        line = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(line)
        self.kind = kind
        self.message = line
        self.command = command
        self.returncode = returncode


# --- what the calls return ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """One of restic's status messages during a backup."""

    percent_done: float  # 0.0 .. 1.0
    bytes_done: int
    total_bytes: int
    files_done: int
    total_files: int
    seconds_elapsed: float | None = None
    seconds_remaining: float | None = None
    current_files: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, msg: Mapping[str, Any]) -> Progress:
        return cls(
            percent_done=_float(msg, "percent_done") or 0.0,
            bytes_done=_int(msg, "bytes_done"),
            total_bytes=_int(msg, "total_bytes"),
            files_done=_int(msg, "files_done"),
            total_files=_int(msg, "total_files"),
            seconds_elapsed=_float(msg, "seconds_elapsed"),
            seconds_remaining=_float(msg, "seconds_remaining"),
            current_files=_strings(msg, "current_files"),
        )


#: Called with each status message; a coroutine function is awaited. It runs
#: in the task reading restic's output, so a slow callback slows that reading.
ProgressCallback = Callable[[Progress], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class BackupResult:
    """restic's summary of one backup.

    ``snapshot_id`` is what restic 0.14 reports: the SHORT id (8 hex digits);
    every restic command accepts it, and `Snapshot.short_id` matches it.
    ``complete`` is False when restic wrote the snapshot but could not read
    some files (exit code 3): they are in ``errors``. ``warnings`` are the
    other lines restic wrote on stderr (``... does not exist, skipping``).
    """

    snapshot_id: str
    files_new: int
    files_changed: int
    files_unmodified: int
    dirs_new: int
    dirs_changed: int
    dirs_unmodified: int
    data_added: int  # bytes added to the repository (after deduplication)
    total_files_processed: int
    total_bytes_processed: int
    duration: float  # seconds, as restic measured it
    complete: bool = True
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    hostname: str
    username: str = ""
    parent: str | None = None
    tree: str = ""

    @classmethod
    def from_json(cls, msg: Mapping[str, Any]) -> Snapshot:
        snapshot_id = _str(msg, "id")
        when = _str(msg, "time")
        try:
            parsed = datetime.fromisoformat(when)
        except ValueError:
            raise ValueError(f"snapshot {snapshot_id[:8]} has a bad time {when!r}") from None
        return cls(
            id=snapshot_id,
            short_id=_str(msg, "short_id") or snapshot_id[:8],
            time=parsed,
            paths=_strings(msg, "paths"),
            tags=_strings(msg, "tags"),
            hostname=_str(msg, "hostname"),
            username=_str(msg, "username"),
            parent=_str(msg, "parent") or None,
            tree=_str(msg, "tree"),
        )


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """restic's keep rules (``--keep-last`` ...); None leaves a rule out.

    restic applies them per group of snapshots (by default the same host and
    paths) and keeps a snapshot any rule wants."""

    last: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def __post_init__(self) -> None:
        for name, value in self._rules():
            if value is None:
                continue
            # Checked at run time too: the values often come from a spec or YAML.
            valid: object = value
            if isinstance(valid, bool) or not isinstance(valid, int) or valid < 1:
                raise ValueError(f"keep {name} must be a whole number of at least 1, not {value!r}")
        if all(value is None for _, value in self._rules()):
            # restic would then keep everything and say so: a policy that
            # means nothing is a mistake in the caller.
            raise ValueError("a keep policy needs at least one rule")

    def _rules(self) -> list[tuple[str, int | None]]:
        return [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]

    def args(self) -> list[str]:
        out: list[str] = []
        for name, value in self._rules():
            if value is not None:
                out += [f"--keep-{name}", str(value)]
        return out


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """Full ids of the snapshots kept and removed (in restic's order)."""

    kept: tuple[str, ...]
    removed: tuple[str, ...]
    pruned: bool


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``ok`` when restic found no error; else ``errors`` are its lines."""

    ok: bool
    errors: tuple[str, ...] = ()
    read_data_subset: str | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    total_size: int
    total_file_count: int
    snapshots_count: int
    total_blob_count: int | None = None
    mode: str = "restore-size"


# --- the driver ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    returncode: int
    stdout: str
    stderr: list[str]  # redacted already
    secrets: frozenset[str]

    def redact(self, text: str) -> str:
        return ResticEnvironment(variables={}, secrets=self.secrets).redact(text)


@dataclass(slots=True)
class _Prepared:
    binary: str
    env: ResticEnvironment
    argv_prefix: list[str] = field(default_factory=list)
    ssh_log: str | None = None


class Restic:
    """One repository, driven through the restic program.

    - ``binary``: the program, a name on PATH or a path.
    - ``cache_dir``: restic's local cache (default: restic's, under $HOME).
    - ``timeout``: seconds a call may take (None: no limit); each call can
      give its own.
    - ``limit_upload`` / ``limit_download``: KiB/s, restic's bandwidth limits.
    - ``stop_grace``: seconds a restic being stopped has after SIGINT (to
      remove its lock) before SIGKILL.
    - ``progress_interval``: seconds between restic's status messages.
    - ``environ``: the environment restic starts from (default: this process's).
    """

    def __init__(
        self,
        repository: Repository,
        *,
        binary: str = "restic",
        cache_dir: Path | None = None,
        timeout: float | None = None,
        limit_upload: int | None = None,
        limit_download: int | None = None,
        stop_grace: float = 5.0,
        progress_interval: float = 1.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if progress_interval <= 0:
            raise ValueError("progress_interval must be positive")
        self.repository = repository
        self.binary = binary
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.limit_upload = limit_upload
        self.limit_download = limit_download
        self.stop_grace = stop_grace
        self.progress_interval = progress_interval
        self.environ = environ

    # -- the calls --

    async def init(self, *, timeout: float | None = None) -> bool:
        """Create the repository unless there is one: True when it was
        created. An existing repository must open with the password (else
        WRONG_PASSWORD), so "already there" is never mistaken for "usable"."""
        try:
            await self._run("cat", ["config", "--no-lock"], timeout=timeout)
            return False
        except ResticError as exc:
            if exc.kind is not ErrorKind.NO_REPOSITORY:
                raise
        out = await self._run("init", [], timeout=timeout, check=False)
        if out.returncode == 0:
            return True
        if re.search(r"already exists|already initialized", "\n".join(out.stderr), re.I):
            # Another agent created it in between: it must open all the same.
            await self._run("cat", ["config", "--no-lock"], timeout=timeout)
            return False
        raise self._failure("init", out)

    async def backup(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        tags: Sequence[str] = (),
        host: str | None = None,
        excludes: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> BackupResult:
        """Back up `paths` (files or directories) into a new snapshot.

        restic finds the parent snapshot (what is unchanged is not read
        again) among those of the same ``host`` and paths, so pass the same
        ``host`` every time for a target that moves between nodes. Relative
        paths are stored relative to ``cwd``: backing up ``"."`` with
        ``cwd=<volume>`` puts the volume's content at the snapshot's root, so
        it restores into any directory."""
        if not paths:
            raise ValueError("backup needs at least one path")
        args = ["--json"]
        for tag in tags:
            args += ["--tag", _tag(tag)]
        if host is not None:
            args += ["--host", _one_word(host, "host")]
        for pattern in excludes:
            args += ["--exclude", _one_line(pattern, "exclude pattern")]
        args += ["--", *(os.fspath(p) for p in paths)]

        summary: dict[str, Any] | None = None
        errors: list[str] = []

        async def on_line(line: str) -> None:
            nonlocal summary
            msg = _json_object(line)
            if msg is None:
                return
            kind = msg.get("message_type")
            if kind == "status" and progress is not None:
                await _report(progress, Progress.from_json(msg))
            elif kind == "summary":
                summary = msg
            elif kind == "error":
                errors.append(_describe_item_error(msg))

        out = await self._run(
            "backup", args, timeout=timeout, check=False, cwd=cwd, on_stdout=on_line
        )
        if out.returncode not in (0, _EXIT_INCOMPLETE) or summary is None:
            raise self._failure("backup", out)
        return BackupResult(
            snapshot_id=_str(summary, "snapshot_id"),
            files_new=_int(summary, "files_new"),
            files_changed=_int(summary, "files_changed"),
            files_unmodified=_int(summary, "files_unmodified"),
            dirs_new=_int(summary, "dirs_new"),
            dirs_changed=_int(summary, "dirs_changed"),
            dirs_unmodified=_int(summary, "dirs_unmodified"),
            data_added=_int(summary, "data_added"),
            total_files_processed=_int(summary, "total_files_processed"),
            total_bytes_processed=_int(summary, "total_bytes_processed"),
            duration=_float(summary, "total_duration") or 0.0,
            complete=out.returncode == 0,
            errors=tuple(out.redact(e) for e in errors),
            warnings=tuple(out.stderr),
        )

    async def snapshots(
        self,
        *,
        tags: Sequence[str] | None = None,
        host: str | None = None,
        no_lock: bool = False,
        timeout: float | None = None,
    ) -> list[Snapshot]:
        """The snapshots, oldest first; with ``tags``, those carrying all of them.
        ``no_lock``: without taking a lock, so a prune holding the repository
        exclusively does not fail the listing (restic 0.14 waits for no lock)."""
        args = ["--json", *_tag_filter(tags), *(["--no-lock"] if no_lock else [])]
        if host is not None:
            args += ["--host", _one_word(host, "host")]
        out = await self._run("snapshots", args, timeout=timeout)
        data = _json_value(out.stdout.strip() or "[]", "snapshots")
        if not isinstance(data, list):
            raise ResticError(ErrorKind.FAILED, "restic snapshots: the output is not a list")
        found = [Snapshot.from_json(item) for item in data if isinstance(item, dict)]
        found.sort(key=lambda s: s.time)
        return found

    async def forget(
        self,
        keep: KeepPolicy,
        *,
        tags: Sequence[str] | None = None,
        host: str | None = None,
        group_by: str | None = None,
        prune: bool = False,
        timeout: float | None = None,
    ) -> ForgetResult:
        """Apply `keep` to the snapshots (those carrying all ``tags``, of
        ``host``), grouped by restic's default (host and paths) or
        ``group_by`` (``"host"``, ``"tags"``, ``"host,paths"``, ``""`` for one
        group); ``prune`` also deletes the data no snapshot uses any more."""
        args = ["--json", *keep.args(), *_tag_filter(tags)]
        if host is not None:
            args += ["--host", _one_word(host, "host")]
        if group_by is not None:
            if not re.fullmatch(r"((host|paths|tags)(,(host|paths|tags))*)?", group_by):
                raise ValueError(f"group_by: {group_by!r} is not a list of host, paths, tags")
            args += ["--group-by", group_by]
        if prune:
            args.append("--prune")
        out = await self._run("forget", args, timeout=timeout)
        # With --prune, restic 0.14 prints prune's text report after the JSON line.
        groups: list[Any] = []
        for line in out.stdout.splitlines():
            if line.startswith("["):
                value = _json_value(line, "forget")
                groups = value if isinstance(value, list) else []
                break
        kept: list[str] = []
        removed: list[str] = []
        for group in groups:
            if not isinstance(group, dict):
                continue
            kept += [_str(s, "id") for s in group.get("keep") or [] if isinstance(s, dict)]
            removed += [_str(s, "id") for s in group.get("remove") or [] if isinstance(s, dict)]
        return ForgetResult(kept=tuple(kept), removed=tuple(removed), pruned=prune)

    async def check(
        self, *, read_data_subset: str | None = None, timeout: float | None = None
    ) -> CheckResult:
        """restic check: the repository's structure, and with
        ``read_data_subset`` (``"1/5"``, ``"10%"``) that part of its data read
        back and verified. Damage is a result (``ok=False``); a repository
        that cannot be opened is a ResticError."""
        args = []
        if read_data_subset is not None:
            args.append(f"--read-data-subset={_one_word(read_data_subset, 'read_data_subset')}")
        out = await self._run("check", args, timeout=timeout, check=False)
        if out.returncode == 0:
            return CheckResult(ok=True, read_data_subset=read_data_subset)
        if not any("repository contains errors" in line for line in out.stderr):
            raise self._failure("check", out)
        errors = tuple(
            line
            for line in out.stderr
            if line and "repository contains errors" not in line and not line.startswith("[")
        )
        return CheckResult(ok=False, errors=errors, read_data_subset=read_data_subset)

    async def restore(
        self,
        snapshot_id: str,
        target_dir: str | os.PathLike[str],
        *,
        include: Sequence[str] | None = None,
        verify: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Restore `snapshot_id` (an id, a short id, or ``latest``) into
        `target_dir`, under the paths the snapshot stored (a directory backed
        up as ``/srv/x`` comes back as ``<target>/srv/x``; one backed up as
        ``.`` from inside it, at ``<target>``). Files there are overwritten;
        files the snapshot lacks are left alone. ``include`` limits it to
        these patterns; ``verify`` reads what was written back."""
        args = [_snapshot_ref(snapshot_id), "--target", os.fspath(target_dir)]
        for pattern in include or ():
            args += ["--include", _one_line(pattern, "include pattern")]
        if verify:
            args.append("--verify")
        await self._run("restore", args, timeout=timeout)

    async def stats(
        self,
        snapshot: str | None = None,
        *,
        mode: str = "restore-size",
        timeout: float | None = None,
    ) -> Stats:
        """Sizes of `snapshot` (or of all snapshots): ``restore-size`` is what
        a restore writes, ``raw-data`` what the repository stores for it."""
        if mode not in STATS_MODES:
            raise ValueError(f"stats mode must be one of {', '.join(STATS_MODES)}")
        args = ["--json", "--mode", mode]
        if snapshot is not None:
            args.append(_snapshot_ref(snapshot))
        out = await self._run("stats", args, timeout=timeout)
        # restic 0.14 skips an unknown snapshot with a warning and exits 0.
        if snapshot is not None and any(line.startswith("Ignoring") for line in out.stderr):
            raise ResticError(
                ErrorKind.NOT_FOUND,
                f"there is no snapshot {snapshot} in repository {self.repository.display_url}",
                command="stats",
                returncode=out.returncode,
            )
        last = (out.stdout.strip().splitlines() or ["{}"])[-1]
        data = _json_value(last, "stats")
        if not isinstance(data, dict):
            raise ResticError(ErrorKind.FAILED, "restic stats: the output is not an object")
        blobs = data.get("total_blob_count")
        return Stats(
            total_size=_int(data, "total_size"),
            total_file_count=_int(data, "total_file_count"),
            snapshots_count=_int(data, "snapshots_count"),
            total_blob_count=blobs if isinstance(blobs, int) else None,
            mode=mode,
        )

    async def unlock(self, *, remove_all: bool = False, timeout: float | None = None) -> None:
        """Remove stale locks (those of restic processes that are gone);
        ``remove_all`` removes every lock, live ones too."""
        await self._run("unlock", ["--remove-all"] if remove_all else [], timeout=timeout)

    # -- running restic --

    def _prepare(self) -> _Prepared:
        """The program and environment for one call (reads files: off the loop)."""
        base = os.environ if self.environ is None else self.environ
        binary = shutil.which(self.binary, path=base.get("PATH", os.defpath))
        if binary is None:
            where = "" if os.sep in self.binary else " on PATH"
            raise ResticError(
                ErrorKind.NOT_INSTALLED,
                f"restic is not installed ({self.binary} was not found{where}): {INSTALL_HINT}",
            )
        try:
            env = restic_environment(self.repository, base)
        except RepositoryConfigError as exc:
            raise ResticError(ErrorKind.CONFIG, str(exc)) from None
        variables = dict(env.variables)
        variables["RESTIC_PROGRESS_FPS"] = f"{1 / self.progress_interval:g}"
        ssh_log = None
        if self.repository.backend == "sftp":
            fd, ssh_log = tempfile.mkstemp(prefix="ninefold-ssh-", suffix=".log")
            os.close(fd)
        prefix = list(self.repository.options(ssh_log))
        if self.cache_dir is not None:
            prefix += ["--cache-dir", os.fspath(self.cache_dir)]
        if self.limit_upload is not None:
            prefix += ["--limit-upload", str(int(self.limit_upload))]
        if self.limit_download is not None:
            prefix += ["--limit-download", str(int(self.limit_download))]
        return _Prepared(
            binary=binary,
            env=ResticEnvironment(variables=variables, secrets=env.secrets),
            argv_prefix=prefix,
            ssh_log=ssh_log,
        )

    async def _run(
        self,
        command: str,
        args: list[str],
        *,
        timeout: float | None,
        check: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        on_stdout: Callable[[str], Awaitable[None]] | None = None,
    ) -> _Outcome:
        prepared = await asyncio.to_thread(self._prepare)
        try:
            outcome = await self._run_prepared(prepared, command, args, timeout, cwd, on_stdout)
        finally:
            if prepared.ssh_log is not None:
                ssh_lines = await asyncio.to_thread(_take_log, prepared.ssh_log)
        if prepared.ssh_log is not None:
            # ssh's own words, the way restic passes them on when it does.
            outcome.stderr += [prepared.env.redact(f"subprocess ssh: {line}") for line in ssh_lines]
        if check and outcome.returncode != 0:
            raise self._failure(command, outcome)
        return outcome

    async def _run_prepared(
        self,
        prepared: _Prepared,
        command: str,
        args: list[str],
        timeout: float | None,
        cwd: str | os.PathLike[str] | None,
        on_stdout: Callable[[str], Awaitable[None]] | None,
    ) -> _Outcome:
        env = prepared.env
        argv = [prepared.binary, *prepared.argv_prefix, command, *args]
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *dies_with_parent(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env.variables),
                cwd=None if cwd is None else os.fspath(cwd),
                start_new_session=True,
                limit=_LINE_LIMIT,
            )
        except FileNotFoundError as exc:
            if cwd is not None and exc.filename == os.fspath(cwd):
                raise ResticError(
                    ErrorKind.FAILED, f"restic {command}: no directory {os.fspath(cwd)}"
                ) from None
            raise ResticError(
                ErrorKind.NOT_INSTALLED,
                f"restic is not installed ({exc.filename or self.binary} was not found):"
                f" {INSTALL_HINT}",
                command=command,
            ) from None
        except OSError as exc:
            raise ResticError(
                ErrorKind.FAILED, f"restic {command} could not start: {exc.strerror or exc}"
            ) from None

        assert proc.stdout is not None and proc.stderr is not None
        stderr: list[str] = []
        stdout_parts: list[str] = []

        async def read_stdout(stream: asyncio.StreamReader) -> None:
            if on_stdout is None:
                stdout_parts.append((await stream.read()).decode(errors="replace"))
                return
            async for line in _lines(stream):
                await on_stdout(line)

        async def read_stderr(stream: asyncio.StreamReader) -> None:
            async for line in _lines(stream):
                text = env.redact(_ANSI.sub("", line).strip())
                if text:
                    stderr.append(text)
                    del stderr[:-_STDERR_KEPT]

        readers = [
            asyncio.create_task(read_stdout(proc.stdout)),
            asyncio.create_task(read_stderr(proc.stderr)),
        ]
        try:
            try:
                async with asyncio.timeout(limit):
                    for reader in readers:
                        await reader
                    code = await proc.wait()
            except TimeoutError:
                raise ResticError(
                    ErrorKind.TIMEOUT,
                    f"restic {command} on {self.repository.display_url} did not finish"
                    f" within {limit:g} s and was stopped",
                    command=command,
                ) from None
        finally:
            if proc.returncode is None:
                stopping = asyncio.ensure_future(self._stop(proc))
                await asyncio.shield(stopping)
            for reader in readers:
                reader.cancel()
            for reader in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        log.debug(
            "restic %s on %s: exit %d in %.2f s",
            command, self.repository.display_url, code, time.monotonic() - started,
        )  # fmt: skip
        return _Outcome(
            returncode=code, stdout="".join(stdout_parts), stderr=stderr, secrets=env.secrets
        )

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGINT, so restic removes its lock and closes its ssh; SIGKILL to
        restic's group and descendants still there after ``stop_grace``."""
        descendants = await asyncio.to_thread(_descendants, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(self.stop_grace):
                await proc.wait()
        except TimeoutError:
            log.warning(
                "restic (pid %d) ignored SIGINT for %g s: killed", proc.pid, self.stop_grace
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if descendants:
            await asyncio.to_thread(_end_processes, descendants, self.stop_grace)

    def _failure(self, command: str, out: _Outcome) -> ResticError:
        kind, detail = classify(out.stderr)
        url = self.repository.display_url
        detail = out.redact(detail) or f"exit code {out.returncode}"
        if kind is ErrorKind.WRONG_PASSWORD:
            message = (
                f"the password of repository {url} is wrong: no key in the repository opens with it"
            )
        elif kind is ErrorKind.NO_REPOSITORY:
            message = (
                f"there is no restic repository at {url} (not initialised, or a wrong path,"
                f" bucket or prefix): {detail}"
            )
        elif kind is ErrorKind.UNREACHABLE:
            message = f"repository {url} cannot be reached: {detail}"
        elif kind is ErrorKind.LOCKED:
            message = (
                f"repository {url} is locked: {detail}; if no restic is using it any more,"
                " unlock removes the stale lock"
            )
        elif kind is ErrorKind.NOT_FOUND:
            message = f"restic {command} on {url}: {detail}"
        else:
            message = f"restic {command} on {url} failed (exit code {out.returncode}): {detail}"
        return ResticError(kind, out.redact(message), command=command, returncode=out.returncode)


# --- reading restic's words ----------------------------------------------------------------

_UNREACHABLE = (
    "connection refused",
    "no such host",
    "could not resolve hostname",
    "name or service not known",
    "network is unreachable",
    "no route to host",
    "connection reset",
    "i/o timeout",
    "connection timed out",
    "host key verification failed",
    "permission denied (publickey",
    "unable to start the sftp session",
    "tls handshake",
    "timeout awaiting response headers",
)


def classify(stderr: Sequence[str]) -> tuple[ErrorKind, str]:
    """What kind of failure restic's stderr describes, and the line that says
    it best (restic's last ``Fatal:`` line, or ssh's own words for sftp)."""
    lines = [line.strip() for line in stderr if line.strip()]
    low = "\n".join(lines).lower()
    fatal = [line.removeprefix("Fatal:").strip() for line in lines if line.startswith("Fatal:")]
    ssh = [
        line.removeprefix("subprocess ssh:").strip()
        for line in lines
        if line.startswith("subprocess ssh:") and "Permanently added" not in line
    ]
    detail = fatal[-1] if fatal else (lines[-1] if lines else "")
    if "wrong password or no key found" in low:
        return ErrorKind.WRONG_PASSWORD, "wrong password or no key found"
    if "repository is already locked" in low:
        line = next(line for line in lines if "repository is already locked" in line.lower())
        return ErrorKind.LOCKED, line.removeprefix("unable to create lock in backend:").strip()
    if any(pattern in low for pattern in _UNREACHABLE):
        if ssh:
            return ErrorKind.UNREACHABLE, ssh[-1].removeprefix("ssh:").strip()
        return ErrorKind.UNREACHABLE, detail
    if "unable to open config file" in low or "is there a repository at the" in low:
        return ErrorKind.NO_REPOSITORY, detail
    if "no matching id found" in low or "invalid id" in low:
        return ErrorKind.NOT_FOUND, detail
    if "resolving password failed" in low:
        return ErrorKind.CONFIG, detail
    return ErrorKind.FAILED, detail


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """The lines of `stream` (a line over the limit is skipped)."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            continue
        if not raw:
            return
        yield raw.decode(errors="replace").rstrip("\r\n")


async def _report(callback: ProgressCallback, progress: Progress) -> None:
    try:
        result = callback(progress)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.warning("restic progress callback failed", exc_info=True)


def _take_log(path: str) -> list[str]:
    """The lines of a log file, which is then removed."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines()[-50:]]
    except OSError:
        lines = []
    with contextlib.suppress(OSError):
        os.unlink(path)
    return [line for line in lines if line]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _end_processes(procs: list[psutil.Process], grace: float) -> None:
    """Wait up to `grace` for `procs` (restic's ssh: it leaves when restic
    closes its pipes) to exit, then SIGKILL the rest. Blocking: in a thread.
    They are not our children once restic is gone, so a zombie counts as gone."""
    deadline = time.monotonic() + grace
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _alive(p)]


def _json_object(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json_value(text: str, command: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ResticError(
            ErrorKind.FAILED, f"restic {command}: its JSON output could not be read"
        ) from None


def _describe_item_error(msg: Mapping[str, Any]) -> str:
    item = _str(msg, "item") or "?"
    error = msg.get("error")
    if isinstance(error, dict):
        text = error.get("message") or " ".join(
            str(error[k]) for k in ("Op", "Path") if isinstance(error.get(k), str)
        )
    else:
        text = str(error) if error else ""
    during = _str(msg, "during")
    return f"{item}: {text or 'error'}" + (f" (during {during})" if during else "")


def _int(msg: Mapping[str, Any], key: str) -> int:
    value = msg.get(key)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def _float(msg: Mapping[str, Any], key: str) -> float | None:
    value = msg.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _str(msg: Mapping[str, Any], key: str) -> str:
    value = msg.get(key)
    return value if isinstance(value, str) else ""


def _strings(msg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = msg.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


# --- checking what goes on restic's command line ------------------------------------------


def _one_line(value: str, what: str) -> str:
    if not value or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{what} must be one non-empty line: {value!r}")
    return value


def _one_word(value: str, what: str) -> str:
    if not value or value.startswith("-") or any(c.isspace() or c == "\0" for c in value):
        raise ValueError(f"{what} must be one word not starting with '-': {value!r}")
    return value


def _tag(tag: str) -> str:
    """restic splits --tag values at commas."""
    _one_line(tag, "tag")
    if "," in tag:
        raise ValueError(f"a tag cannot hold a comma: {tag!r}")
    return tag


def _tag_filter(tags: Sequence[str] | None) -> list[str]:
    """One --tag with every tag: snapshots carrying all of them."""
    if not tags:
        return []
    return ["--tag", ",".join(_tag(t) for t in tags)]


def _snapshot_ref(snapshot: str) -> str:
    return _one_word(snapshot, "snapshot id")
