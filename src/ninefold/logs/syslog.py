"""Forwarding to a syslog receiver: RFC 5424 messages over TCP, framed by
octet counting (RFC 6587), with TLS as an option (RFC 5425).

Nothing here may slow the agent down. A record or an output line is turned
into a message where it happens and put on a bounded queue (`submit`, which
never blocks and may be called from any thread); one task writes the queue
to the receiver. While the receiver is away the queue fills up, then new
messages are dropped and counted; the task reconnects with a growing pause
(0.5 s to 30 s) and, once back, logs how many it dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ninefold.logs.formats import (
    FACILITIES,
    INFO,
    TextFormatter,
    octet_counted,
    record_message,
    rfc5424,
    severity,
)
from ninefold.spec.logging import SyslogSpec

log = logging.getLogger("ninefold.logs.syslog")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
WRITE_TIMEOUT = 10.0
"""Seconds a write may wait for the receiver before the connection is dropped."""
BATCH = 256
"""Messages written before the writer waits for the receiver to take them."""


@dataclass
class ForwarderStats:
    sent: int = 0
    dropped: int = 0
    connects: int = 0
    connected: bool = False


class SyslogForwarder:
    """Sends messages to one receiver; `start` in the event loop, `submit` from anywhere."""

    def __init__(self, spec: SyslogSpec, hostname: str) -> None:
        self.spec = spec
        self.hostname = hostname
        self.facility = FACILITIES[spec.facility]
        self.stats = ForwarderStats()
        self._queue: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._drained = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._dropped_reported = 0

    # -- producing ------------------------------------------------------------------------
    def message(
        self,
        text: str,
        *,
        severity: int,
        when: float,
        procid: str | None,
        msgid: str | None,
        data: dict[str, str],
    ) -> bytes:
        return rfc5424(
            facility=self.facility,
            severity=severity,
            when=when,
            hostname=self.hostname,
            app_name=self.spec.app_name,
            procid=procid,
            msgid=msgid,
            data=data,
            message=text,
        )

    def submit(self, message: bytes) -> bool:
        """Queue one message (unframed); False when the queue was full and it was dropped."""
        with self._lock:
            if len(self._queue) >= self.spec.queue:
                self.stats.dropped += 1
                return False
            self._queue.append(message)
            first = len(self._queue) == 1
        if first:
            self._poke()
        return True

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- writing --------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="syslog")

    async def stop(self, flush: float = 2.0) -> None:
        """Stop writing, after up to `flush` seconds for the queue to empty."""
        if self.pending() and self._task is not None:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), flush)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.spec.tls:
            return None
        context = ssl.create_default_context(cafile=self.spec.ca)
        return context

    async def _run(self) -> None:
        pause = BACKOFF_MIN
        down_since: float | None = None
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.spec.host, self.spec.port, ssl=self._ssl(),
                        server_hostname=self.spec.host if self.spec.tls else None,
                    ),
                    WRITE_TIMEOUT,
                )  # fmt: skip
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "syslog receiver %s unreachable (%s); retrying, holding up to %d messages",
                        self.spec.address, _reason(exc), self.spec.queue,
                    )  # fmt: skip
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF_MAX)
                continue
            self.stats.connects += 1
            self.stats.connected = True
            pause = BACKOFF_MIN
            if down_since is not None:
                log.info("syslog receiver %s reached", self.spec.address)
                down_since = None
            try:
                await self._send(reader, writer)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                down_since = time.monotonic()
                log.warning(
                    "syslog receiver %s lost (%s); reconnecting", self.spec.address, _reason(exc)
                )
            finally:
                self.stats.connected = False
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._wake is not None
        closed = asyncio.ensure_future(_until_eof(reader))
        try:
            while True:
                if self.stats.dropped > self._dropped_reported:
                    newly = self.stats.dropped - self._dropped_reported
                    self._dropped_reported = self.stats.dropped
                    log.warning(
                        "syslog: dropped %d messages while %s was away or slow "
                        "(%d in all; logging.syslog.queue)",
                        newly, self.spec.address, self.stats.dropped,
                    )  # fmt: skip
                with self._lock:
                    batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                if not batch:
                    self._drained.set()
                    self._wake.clear()
                    waiter = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                    if closed.done():
                        waiter.cancel()
                        raise ConnectionResetError("the receiver closed the connection")
                    continue
                if closed.done():
                    self._requeue(batch)
                    raise ConnectionResetError("the receiver closed the connection")
                writer.write(b"".join(octet_counted(m) for m in batch))
                try:
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                except BaseException:
                    # What the socket took may have arrived; the rest is lost with it.
                    self.stats.dropped += len(batch)
                    raise
                self.stats.sent += len(batch)
        finally:
            closed.cancel()
            if closed.done() and not closed.cancelled():
                closed.exception()  # a reset connection: said by the caller's warning

    def _requeue(self, batch: list[bytes]) -> None:
        with self._lock:
            room = self.spec.queue - len(self._queue)
            keep = batch[-room:] if room > 0 else []
            self.stats.dropped += len(batch) - len(keep)
            self._queue.extendleft(reversed(keep))


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Returns when the receiver closes the connection (it sends nothing else)."""
    while await reader.read(4096):
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class SyslogHandler(logging.Handler):
    """Puts the agent's log records on a forwarder's queue (never blocks)."""

    def __init__(self, forwarder: SyslogForwarder, node: str) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.node = node
        self._text = TextFormatter(node)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.forwarder.message(
                record_message(record, self._text),
                severity=severity(record.levelno),
                when=record.created,
                procid=str(record.process or os.getpid()),
                msgid="agent",
                data={"node": self.node, "logger": record.name, "level": record.levelname.lower()},
            )
        except Exception:
            self.handleError(record)
            return
        self.forwarder.submit(message)


# --- instance output ---------------------------------------------------------------------

TAP_INTERVAL = 0.5
"""Seconds between two looks at the instances' log files."""
MAX_LINE = 16384
"""Bytes of one output line forwarded; longer lines are cut."""


@dataclass
class _Followed:
    inode: int
    offset: int
    partial: bytes = b""


class OutputTap:
    """Forwards what the instances print: follows the files in `log_dir`
    (`<instance>.log`, written by the children themselves; see
    supervisor/logs.py) and submits each new complete line.

    A file seen for the first time at start is followed from its end (its
    older lines were forwarded by an earlier agent, or predate forwarding); a
    file created later, or truncated or replaced by a rotation, from its start."""

    def __init__(
        self,
        log_dir: Path,
        forwarder: SyslogForwarder,
        node: str,
        service_of: dict[str, str] | None = None,
        interval: float = TAP_INTERVAL,
    ) -> None:
        self.log_dir = log_dir
        self.forwarder = forwarder
        self.node = node
        self.service_of = service_of or {}
        self.interval = interval
        self._files: dict[str, _Followed] = {}
        for path in self._paths():  # what is there now is followed from its end
            with contextlib.suppress(OSError):
                st = path.stat()
                self._files[path.stem] = _Followed(st.st_ino, st.st_size)

    async def run(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(self.poll)
            except Exception as exc:  # a bad file must not end forwarding
                log.warning("syslog: reading instance output failed: %s", exc)
                found = []
            now = time.time()
            for name, line in found:
                data = {"node": self.node, "instance": name}
                service = self.service(name)
                if service:
                    data["service"] = service
                text = line.decode("utf-8", errors="replace")
                self.forwarder.submit(
                    self.forwarder.message(
                        text, severity=INFO, when=now, procid=None, msgid=name, data=data
                    )
                )
            await asyncio.sleep(self.interval)

    def service(self, instance: str) -> str | None:
        if instance in self.service_of:
            return self.service_of[instance]
        base, sep, number = instance.rpartition("-")
        return base if sep and number.isdigit() else None

    def _paths(self) -> list[Path]:
        try:
            return sorted(self.log_dir.glob("*.log"))
        except OSError:
            return []

    def poll(self) -> list[tuple[str, bytes]]:
        """New complete lines of every followed file (blocking)."""
        out: list[tuple[str, bytes]] = []
        seen = set()
        for path in self._paths():
            name = path.stem
            seen.add(name)
            try:
                st = path.stat()
            except OSError:
                continue
            followed = self._files.get(name)
            if followed is None:
                followed = _Followed(st.st_ino, 0)
                self._files[name] = followed
            elif followed.inode != st.st_ino or st.st_size < followed.offset:
                followed.inode, followed.offset, followed.partial = st.st_ino, 0, b""
            if st.st_size == followed.offset:
                continue
            try:
                with path.open("rb") as f:
                    f.seek(followed.offset)
                    data = f.read(st.st_size - followed.offset)
            except OSError:
                continue
            followed.offset += len(data)
            chunks = (followed.partial + data).split(b"\n")
            followed.partial = chunks.pop()[:MAX_LINE]
            out += [(name, c[:MAX_LINE].rstrip(b"\r")) for c in chunks]
        for gone in set(self._files) - seen:
            del self._files[gone]
        return out


@dataclass
class Forwarding:
    """What `start_forwarding` set up, for `stop`."""

    forwarder: SyslogForwarder
    handler: SyslogHandler
    tap: asyncio.Task[None] | None

    async def stop(self) -> None:
        if self.tap is not None:
            self.tap.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.tap
        logging.getLogger().removeHandler(self.handler)
        await self.forwarder.stop()


def start_forwarding(spec: SyslogSpec, node: str, log_dir: Path | None) -> Forwarding:
    """Forward this agent's records (root logger) and, if `spec.instances`,
    the output in `log_dir`; call in the event loop."""
    forwarder = SyslogForwarder(spec, node)
    forwarder.start()
    handler = SyslogHandler(forwarder, node)
    logging.getLogger().addHandler(handler)
    tap = None
    if spec.instances and log_dir is not None:
        tap = asyncio.create_task(OutputTap(log_dir, forwarder, node).run(), name="syslog-tap")
    log.info("forwarding logs to syslog at %s%s", spec.address, " (TLS)" if spec.tls else "")
    return Forwarding(forwarder, handler, tap)
