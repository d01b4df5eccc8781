"""A small client of HAProxy's master CLI (and through it, the workers' runtime API).

Every command goes through the master socket (``-S``): ``@!<pid> <command>``
reaches one worker by pid, so a command is never answered by the old worker
of a reload that is still finishing its connections. One connection per
request line, in the CLI's non-interactive mode (the master answers once the
client has shut its side down).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from ninefold import defaults

BATCH = 40
"""Commands sent on one CLI line (joined by ';')."""

_FINE = ("changed from", "no need to change")
"""What `set server ... addr` says when it worked; other commands say nothing."""


class HaproxyCliError(Exception):
    """The master CLI could not be reached, or a command was refused."""


@dataclass(frozen=True)
class Processes:
    """`show proc` of the master."""

    master: int
    reloads: int
    failed_reloads: int
    workers: list[int] = field(default_factory=list)
    old_workers: list[int] = field(default_factory=list)

    @property
    def worker(self) -> int | None:
        """The current worker (the newest, should there be several)."""
        return max(self.workers) if self.workers else None


def parse_show_proc(text: str) -> Processes:
    master = reloads = failed = 0
    workers: list[int] = []
    old: list[int] = []
    section = "master"
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            section = {"workers": "workers", "old workers": "old"}.get(title, section)
            if title == "programs":
                section = "programs"
            continue
        parts = line.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if parts[1] == "master":
            master, reloads = int(parts[0]), int(parts[2])
            if "[failed:" in line:
                failed = int(line.split("[failed:", 1)[1].split("]", 1)[0])
        elif parts[1] == "worker" and section == "workers":
            workers.append(int(parts[0]))
        elif parts[1] == "worker" and section == "old":
            old.append(int(parts[0]))
    return Processes(master, reloads, failed, workers, old)


def parse_stat(text: str) -> list[dict[str, str]]:
    """`show stat` CSV as one dict per row, keyed by the header's field names."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    rows = []
    for values in csv.reader(io.StringIO("\n".join(lines[1:]))):
        rows.append(dict(zip(header, values, strict=False)))
    return rows


def refusals(reply: str) -> list[str]:
    """Lines of a reply to `set server ...` commands that report a failure."""
    return [
        ln.strip()
        for ln in reply.splitlines()
        if ln.strip() and not any(fine in ln for fine in _FINE)
    ]


class HaproxyCli:
    def __init__(
        self, master_socket: str, timeout: float = defaults.HAPROXY_RUNTIME_TIMEOUT
    ) -> None:
        self.master_socket = master_socket
        self.timeout = timeout

    async def master(self, line: str, retry_for: float = 0.0) -> str:
        """Send one line to the master and return its reply.

        Connection failures are retried for ``retry_for`` seconds (the master
        re-executes itself on a reload and cannot answer for a moment)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        while True:
            try:
                return await asyncio.wait_for(self._exchange(line), self.timeout)
            except (OSError, TimeoutError) as exc:
                if loop.time() >= deadline:
                    raise HaproxyCliError(
                        f"haproxy master CLI {self.master_socket}: {exc!r}"
                    ) from exc
                await asyncio.sleep(0.02)

    async def _exchange(self, line: str) -> str:
        reader, writer = await asyncio.open_unix_connection(self.master_socket)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()

    async def processes(self, retry_for: float = 0.0) -> Processes:
        return parse_show_proc(await self.master("show proc", retry_for))

    async def worker(self, pid: int, command: str) -> str:
        return await self.master(f"@!{pid} {command}")

    async def run(self, pid: int, commands: Sequence[str]) -> list[str]:
        """Send runtime commands to worker ``pid``; the lines reporting failures."""
        failures: list[str] = []
        for i in range(0, len(commands), BATCH):
            batch = commands[i : i + BATCH]
            reply = await self.master("; ".join(f"@!{pid} {c}" for c in batch))
            failures += refusals(reply)
        return failures

    async def stats(self, pid: int) -> list[dict[str, str]]:
        return parse_stat(await self.worker(pid, "show stat"))
