"""The transfer channel of replicated volumes: rsync's delta transfer carried
between agents, the way rsync runs over ssh, with no sshd and no rsync daemon.

Sending side (`push`): `rsync -a --delete --partial --stats SRC/ HOST:.` with
`-e` naming `python -m ninefold.volumes.pipe` (volumes/pipe.py) as its remote
shell. The pipe connects to the receiving agent's `VolumeListener` (mutual
TLS with the node's certificate when `security.tls` is on, plain TCP
otherwise), sends one header line of JSON, `{"volume": ID, "argv": [...]}`,
where argv is what rsync asked its remote shell to run (`rsync --server
<options> . <path>`), and then relays rsync's bytes both ways.

Receiving side (`VolumeListener`): checks the header and answers one line,
`ok` or `error: <why>`. It refuses unless argv is a receiving rsync server
(`--sender` is refused: a peer may push to this node, never read from it)
whose every option is one that `rsync -a [-c] --delete --partial [--inplace]
[--stats]` produces, and `resolve(ID)` names the directory that may receive
the volume here. The path the peer sent is ignored: the listener runs `rsync
--server <options> . <dir>/` itself and relays bytes between the connection
and the process until the process has finished; then it closes the
connection, which ends the peer's pipe, and with it the peer's rsync.

One connection is one transfer; several run at once, but one directory
receives from one transfer at a time: a newer transfer into a directory ends
the one still running there (the peer retrying after a timeout, or a new
active whose token the resolver accepts now).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ninefold.security.files import NodeTlsFiles
from ninefold.security.tls import ReloadingServerContext
from ninefold.supervisor.process import dies_with_parent

log = logging.getLogger("ninefold.volumes")

__all__ = [
    "ALLOWED_OPTIONS",
    "PushResult",
    "Refused",
    "VolumeListener",
    "check_server_argv",
    "pipe_command",
    "push",
    "push_command",
]

CHUNK = 256 * 1024
"""Bytes relayed per read."""
HEADER_LIMIT = 64 * 1024
"""Longest header line accepted."""
HEADER_TIMEOUT = 10.0
"""Seconds a peer has to send its header after connecting (and its TLS handshake)."""
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a peer has for its TLS handshake."""
EXIT_WAIT = 30.0
"""Seconds the receiving rsync may take to exit after it closed its output."""
PEER_GONE_GRACE = 5.0
"""Seconds the receiving rsync may run on after the peer ended the connection
(the sending rsync exited or was killed: rsync keeps the connection until the
end), before it is killed."""
MAX_TRANSFERS = 64
"""Transfers received at once; a connection beyond is refused (`error: busy`)."""
KEEPALIVE = (10, 5, 3)
"""TCP keepalive idle, interval, count: a peer that vanished mid-transfer is
noticed within about 25 s on both sides."""

PARTIAL_DIR = ".ninefold-partial"
"""Where an interrupted transfer keeps what it got of a file (inside the
volume's directory, in the file's own directory), for the next transfer to
start from. Not `--partial`: rsync killed or cut off mid-file would put the
truncated file in place of the good copy the standby had."""
ALLOWED_OPTIONS = frozenset({"--delete", "--inplace", "--stats", "-@-1", "--log-format=X"})
"""Options besides the bundle a receiving server may get, as rsync 3.x passes
them (`-@-1` is `--modify-window=-1`; `--log-format=X` comes with the
sender's `--out-format`, which lists the files sent), and `--partial-dir
.ninefold-partial`."""
_BUNDLE = re.compile(r"-[logDtprc]+(?:e[.A-Za-z0-9]*)?")
"""The short options of `-a` (without -s: options hidden from argv are refused)
and `-c`, then rsync's `-e.<capabilities>`, e.g. `-logDtpre.iLsfxCIvu`."""


class Refused(ValueError):
    """A transfer the listener does not accept; the message says why, in one line."""


def check_server_argv(argv: object) -> list[str]:
    """The options of `rsync --server <options> . <path>` if argv is a receiving
    server with allowed options only; Refused otherwise."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise Refused("argv must be a list of strings")
    if len(argv) < 4 or argv[0] != "rsync" or argv[1] != "--server":
        raise Refused("not an rsync server command line")
    if "--sender" in argv:
        raise Refused("--sender: a peer may only push to this node, never read from it")
    if argv[-2] != ".":
        raise Refused("expected `. <path>` after the options")
    options: list[str] = argv[2:-2]
    bundles = 0
    for i, option in enumerate(options):
        if _BUNDLE.fullmatch(option):
            bundles += 1
        elif option == "--partial-dir":
            if options[i + 1 : i + 2] != [PARTIAL_DIR]:
                raise Refused(f"--partial-dir must be {PARTIAL_DIR}")
        elif option == PARTIAL_DIR and options[i - 1 : i] == ["--partial-dir"]:
            pass
        elif option == "--partial":
            raise Refused(
                "--partial is not allowed: an interrupted transfer would leave a "
                f"truncated file in place of the good one (use --partial-dir={PARTIAL_DIR})"
            )
        elif re.fullmatch(r"--timeout=\d+", option):
            pass
        elif option not in ALLOWED_OPTIONS:
            raise Refused(f"option {option!r} is not allowed")
    if bundles != 1:
        raise Refused("expected one bundle of short options")
    return options


@dataclass(slots=True, eq=False)
class _Transfer:
    volume: str
    peer: str
    directory: Path
    writer: asyncio.StreamWriter
    proc: asyncio.subprocess.Process | None = None
    ended_by: str = ""

    def ended(self) -> bool:
        return bool(self.ended_by)


class VolumeListener:
    """Receives pushes of replicated volumes (see the module's docstring).

    `resolve(volume_id)`: the directory on this node that may receive that
    volume, or None to refuse it; called on the event loop, it must not block.
    `tls`: the node's TLS files: mutual TLS, a client certificate from the
    cluster CA required (files reloaded when they change). None: plain TCP.
    `allow_peer(address)`: False refuses a peer before anything is read (for
    plain TCP: the cluster's node addresses)."""

    def __init__(
        self,
        address: str,
        port: int,
        resolve: Callable[[str], Path | None],
        *,
        tls: NodeTlsFiles | None = None,
        allow_peer: Callable[[str], bool] | None = None,
        rsync: str = "rsync",
        max_transfers: int = MAX_TRANSFERS,
    ) -> None:
        self.address = address
        self._port = port
        self.resolve = resolve
        self.tls = tls
        self.allow_peer = allow_peer
        self.rsync = rsync
        self.max_transfers = max_transfers
        self.peer_gone_grace = PEER_GONE_GRACE
        self._context: ReloadingServerContext | None = None
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._transfers: set[_Transfer] = set()
        self.received = 0
        """Transfers completed with rsync's exit code 0."""
        self.refused = 0

    @property
    def port(self) -> int:
        """The bound port once started (the one asked for before)."""
        return self._port

    @property
    def transfers(self) -> list[str]:
        """The volume ids being received now."""
        return sorted(t.volume for t in self._transfers)

    async def start(self) -> None:
        """Bind and accept (TlsError if the node's TLS files cannot be loaded,
        OSError if the address cannot be bound)."""
        if self._sock is not None:
            return
        if self.tls is not None:
            self._context = await asyncio.to_thread(
                ReloadingServerContext, self.tls, True, "volume listener"
            )
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.create_server((self.address, self._port), family=family, backlog=128)
        sock.setblocking(False)
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept(sock), name="volume listener")
        log.info(
            "volume listener on %s:%d (%s)",
            self.address,
            self._port,
            "mutual TLS" if self._context else "plain TCP",
        )

    async def stop(self) -> None:
        """Stop accepting and end every transfer under way (its rsync is killed,
        its connection aborted); returns when all are gone."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for transfer in list(self._transfers):
            self._end(transfer, "the listener stopped")
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        for task in handlers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def abort(self, which: Callable[[str], bool], reason: str = "aborted") -> int:
        """End the transfers whose volume id `which` accepts (a fenced
        sender's, say); how many."""
        ended = [t for t in self._transfers if which(t.volume)]
        for transfer in ended:
            self._end(transfer, reason)
        return len(ended)

    # -- accepting ---------------------------------------------------------------------
    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and the like: try again shortly
                log.warning("volume listener: accept failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            task = asyncio.create_task(self._serve(conn, addr), name="volume transfer")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _open(
        self, conn: socket.socket, peer: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Streams over the accepted socket, after the TLS handshake if any
        (None: refused, logged)."""
        loop = asyncio.get_running_loop()
        _keepalive(conn)
        reader = asyncio.StreamReader(limit=HEADER_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        ctx = self._context.context if self._context is not None else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ctx is not None else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.refused += 1
            log.warning(
                "volume transfer from %s refused: TLS handshake failed: %s", peer, _why(exc)
            )
            conn.close()
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _serve(self, conn: socket.socket, addr: object) -> None:
        peer = _peer(addr)
        try:
            if self.allow_peer is not None and not self.allow_peer(_host(addr)):
                self.refused += 1
                log.warning("volume transfer from %s refused: not a node of the cluster", peer)
                conn.close()
                return
            await self._handle(conn, peer)
        except Exception:
            log.exception("volume transfer from %s failed", peer)
            conn.close()

    async def _handle(self, conn: socket.socket, peer: str) -> None:
        streams = await self._open(conn, peer)
        if streams is None:
            return
        reader, writer = streams
        who = peer
        name = _peer_name(writer)
        if name:
            who = f"{name} ({peer})"
        transfer: _Transfer | None = None
        try:
            try:
                volume, options, directory = await self._check(reader, who)
            except Refused as exc:
                self.refused += 1
                log.warning("volume transfer from %s refused: %s", who, exc)
                await _say(writer, f"error: {exc}")
                return
            transfer = _Transfer(volume, who, directory, writer)
            for running in [t for t in self._transfers if t.directory == directory]:
                self._end(running, f"a newer transfer into {directory} from {who}")
            self._transfers.add(transfer)
            await self._receive(transfer, reader, options)
        finally:
            if transfer is not None:
                self._transfers.discard(transfer)
            if transfer is not None and transfer.ended_by:
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await writer.wait_closed()

    async def _check(self, reader: asyncio.StreamReader, who: str) -> tuple[str, list[str], Path]:
        """The header's volume, the server options, the directory; Refused."""
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                line = await reader.readline()
        except TimeoutError:
            raise Refused(f"no header within {HEADER_TIMEOUT:g} s") from None
        except ValueError:
            raise Refused("header line too long") from None
        except OSError as exc:
            raise Refused(f"connection lost before the header: {_why(exc)}") from None
        if not line.endswith(b"\n"):
            raise Refused("no header line")
        try:
            header = json.loads(line)
        except ValueError:
            raise Refused("the header is not JSON") from None
        if not isinstance(header, dict):
            raise Refused("the header is not a JSON object")
        volume = header.get("volume")
        if not isinstance(volume, str) or not volume:
            raise Refused("the header names no volume")
        options = check_server_argv(header.get("argv"))
        if len(self._transfers) >= self.max_transfers:
            raise Refused(f"busy: {len(self._transfers)} transfers under way")
        try:
            directory = self.resolve(volume)
        except Exception:
            log.exception("volume listener: resolving %r failed", volume)
            raise Refused(f"volume {volume!r} cannot be resolved here") from None
        if directory is None:
            raise Refused(f"volume {volume!r} is not accepted on this node")
        if not directory.is_absolute():
            log.error("volume listener: %r resolves to a relative path %s", volume, directory)
            raise Refused(f"volume {volume!r} cannot be resolved here")
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise Refused(f"cannot create the volume's directory: {_why(exc)}") from None
        return volume, options, directory

    async def _receive(
        self, transfer: _Transfer, reader: asyncio.StreamReader, options: list[str]
    ) -> None:
        writer = transfer.writer
        started = time.monotonic()
        try:
            argv = [self.rsync, "--server", *options, ".", f"{transfer.directory}/"]
            proc = await asyncio.create_subprocess_exec(
                *dies_with_parent(argv),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=CHUNK,
            )  # fmt: skip
        except OSError as exc:
            log.warning("volume transfer from %s: cannot start rsync: %s", transfer.peer, _why(exc))
            await _say(writer, f"error: cannot start rsync on the receiving node: {_why(exc)}")
            return
        transfer.proc = proc
        errors: list[str] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            if transfer.ended():  # ended while rsync was starting
                return
            writer.write(b"ok\n")
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            tasks = [
                asyncio.create_task(_copy_in(reader, proc.stdin)),
                asyncio.create_task(_collect(proc.stderr, errors)),
            ]
            tasks[0].add_done_callback(lambda _: self._peer_gone(transfer))
            try:
                await _copy_out(proc.stdout, writer)
            except (OSError, RuntimeError) as exc:  # the peer went away
                self._end(transfer, f"connection lost: {_why(exc)}")
            try:
                async with asyncio.timeout(EXIT_WAIT):
                    code = await proc.wait()
            except TimeoutError:
                self._end(transfer, f"rsync did not exit within {EXIT_WAIT:g} s")
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                _kill(proc)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(proc.wait())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        seconds = time.monotonic() - started
        if code == 0:
            self.received += 1
            log.debug(
                "volume %s received from %s in %.3f s", transfer.volume, transfer.peer, seconds
            )
            return
        detail = transfer.ended_by or (errors[-1] if errors else "")
        log.warning(
            "volume %s from %s: rsync exited %s after %.3f s%s",
            transfer.volume, transfer.peer, code, seconds, f": {detail}" if detail else "",
        )  # fmt: skip

    def _peer_gone(self, transfer: _Transfer) -> None:
        """The peer ended the connection: rsync has PEER_GONE_GRACE to finish."""

        grace = self.peer_gone_grace

        def late() -> None:
            if transfer.proc is not None and transfer.proc.returncode is None:
                self._end(transfer, f"still running {grace:g} s after the peer left")

        asyncio.get_running_loop().call_later(grace, late)

    def _end(self, transfer: _Transfer, reason: str) -> None:
        """Kill a transfer's rsync and abort its connection (its handler then
        returns)."""
        if not transfer.ended_by:
            transfer.ended_by = reason
            log.info("volume transfer %s from %s ended: %s", transfer.volume, transfer.peer, reason)
        if transfer.proc is not None and transfer.proc.returncode is None:
            _kill(transfer.proc)
        transfer.writer.transport.abort()


async def _say(writer: asyncio.StreamWriter, line: str) -> None:
    """Write one line to the peer, best effort."""
    with contextlib.suppress(Exception):
        writer.write(line.replace("\n", " ").encode() + b"\n")
        async with asyncio.timeout(5):
            await writer.drain()


async def _copy_in(reader: asyncio.StreamReader, stdin: asyncio.StreamWriter) -> None:
    """Connection -> rsync, then close rsync's input (the peer closed)."""
    try:
        while data := await reader.read(CHUNK):
            stdin.write(data)
            await stdin.drain()
    except (OSError, RuntimeError):
        pass
    finally:
        with contextlib.suppress(Exception):
            stdin.close()


async def _copy_out(stdout: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """rsync -> connection, until rsync closes its output."""
    while data := await stdout.read(CHUNK):
        if writer.transport.is_closing():
            raise ConnectionResetError("connection closed")
        writer.write(data)
        await writer.drain()


async def _collect(stderr: asyncio.StreamReader, lines: list[str]) -> None:
    """Keep the last lines rsync wrote to its stderr (for the log)."""
    while line := await stderr.readline():
        text = line.decode(errors="replace").strip()
        if text:
            lines[:] = [*lines[-9:], text]


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group of a process started with start_new_session."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _keepalive(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def _host(addr: object) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


def _peer(addr: object) -> str:
    host = _host(addr)
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return host


def _peer_name(writer: asyncio.StreamWriter) -> str:
    """The common name of the peer's client certificate ("" without TLS)."""
    cert = writer.get_extra_info("peercert")
    if not isinstance(cert, dict):
        return ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- sending -------------------------------------------------------------------------------
@dataclass(slots=True)
class PushResult:
    """One push. `ok`: rsync exited 0, or 24 (files that vanished while it ran:
    deleted at the source, nothing to send; `error` says so). `bytes_sent`:
    rsync's "Total bytes sent"; `files_transferred`: regular files sent
    (wholly or as a delta). `error`: why it failed, one line ("" when ok)."""

    ok: bool
    bytes_sent: int
    files_transferred: int
    seconds: float
    error: str
    sent_files: tuple[str, ...] = ()
    """The regular files sent, relative to the volume (only when asked: `list_sent`)."""


IO_TIMEOUT = 30
"""rsync's `--timeout`: a transfer during which nothing moves for this many
seconds ends (a frozen or cut-off peer), and is retried."""
RSYNC_ARGS = (
    "-a", "--delete", f"--partial-dir={PARTIAL_DIR}", "--stats", "--modify-window=-1",
    f"--timeout={IO_TIMEOUT}",
)  # fmt: skip
"""`--modify-window=-1`: the quick check compares mtimes to the nanosecond (the
default compares whole seconds: a file rewritten at the same size within the
second of the last push would never be sent again)."""
SENT_MARK = "sent: "
"""Prefix of the lines `--out-format` prints for each item sent."""
VANISHED = 24
"""rsync's exit code when some source files vanished during the transfer."""
_SAFE = re.compile(r"[A-Za-z0-9_./@%+=:,-]+")


def _rsh_quote(arg: str) -> str:
    """Quote one word of rsync's `-e` (rsync splits it on spaces, honouring
    single quotes, and double quotes in which "" is a literal ")."""
    if _SAFE.fullmatch(arg):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    return '"' + arg.replace('"', '""') + '"'


def pipe_command(port: int, volume: str, tls_dir: Path | None) -> str:
    """The `-e` of a push: this Python running volumes/pipe.py."""
    words = [sys.executable, "-m", "ninefold.volumes.pipe", "--port", str(port)]
    words += ["--volume", volume]
    if tls_dir is not None:
        words += ["--tls-dir", str(Path(tls_dir).absolute())]
    return " ".join(_rsh_quote(w) for w in words)


def _stat(stdout: str, label: str) -> int:
    match = re.search(rf"^{label}: ([\d,]+)", stdout, re.MULTILINE)
    return int(match.group(1).replace(",", "")) if match else 0


def _error_line(stderr: str, code: int) -> str:
    """The most telling stderr line: the pipe's own (`error: ...`: refused,
    cannot connect), else rsync's last message, else the exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error: "):
            return line
    for line in reversed(lines):
        if line.startswith("rsync: "):
            return line
    if lines:
        return lines[-1]
    return f"rsync exited with code {code}"


def push_command(
    source: Path,
    host: str,
    port: int,
    volume: str,
    *,
    tls_dir: Path | None,
    exclude: Sequence[str] = (),
    checksum: bool = False,
    list_sent: bool = False,
    progress: bool = False,
) -> list[str]:
    """The rsync command line of a push (relative paths are taken from the
    current directory; ValueError for a host rsync cannot be given)."""
    if not host or any(c.isspace() or c in "'\"@" for c in host):
        raise ValueError(f"bad host {host!r}")
    if isinstance(exclude, str):
        raise TypeError("exclude is a sequence of patterns, not one string")
    destination = f"[{host}]:." if ":" in host else f"{host}:."
    return [
        "rsync",
        *RSYNC_ARGS,
        *(["--checksum"] if checksum else []),
        *([f"--out-format={SENT_MARK}%n"] if list_sent else []),
        *(["--info=progress2", "--no-inc-recursive"] if progress else []),
        *(f"--exclude={pattern}" for pattern in exclude),
        "-e",
        pipe_command(port, volume, tls_dir),
        f"{Path(source).absolute()}/",
        destination,
    ]


async def push(
    source: Path,
    host: str,
    port: int,
    volume: str,
    *,
    tls_dir: Path | None,
    exclude: Sequence[str] = (),
    timeout: float,
    checksum: bool = False,
    list_sent: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PushResult:
    """Send the contents of `source` to the `VolumeListener` at host:port as
    volume `volume` (rsync -a --delete --partial; `exclude`: rsync patterns
    neither sent nor deleted there). `tls_dir`: this node's TLS files
    directory (ca.crt, node.crt, node.key): mutual TLS; None: plain TCP.
    `checksum`: compare whole-file checksums instead of size and mtime (reads
    every file on both sides: the periodic verification, not every push).
    Never raises for a failed transfer: ok=False and why; rsync and its pipe
    are killed after `timeout` seconds, or when the caller is cancelled.
    `list_sent`: name the regular files sent in the result. `progress`: called
    with the bytes sent so far as rsync reports them (a first copy, which may
    take long)."""
    args = push_command(
        source, host, port, volume, tls_dir=tls_dir, exclude=exclude, checksum=checksum,
        list_sent=list_sent, progress=progress is not None,
    )  # fmt: skip
    env = {**os.environ, "LC_ALL": "C"}
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *dies_with_parent(args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
    except OSError as exc:
        return PushResult(False, 0, 0, 0.0, f"cannot run rsync: {_why(exc)}")
    try:
        async with asyncio.timeout(timeout):
            assert proc.stdout is not None and proc.stderr is not None
            err_task = asyncio.ensure_future(proc.stderr.read())
            out = await _read_reporting(proc.stdout, progress)
            err = await err_task
            await proc.wait()
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        seconds = time.monotonic() - started
        return PushResult(False, 0, 0, seconds, f"transfer timed out after {timeout:g} s")
    except BaseException:
        _kill(proc)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(proc.wait())
        raise
    seconds = time.monotonic() - started
    code = proc.returncode
    assert code is not None
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    sent = _stat(stdout, "Total bytes sent")
    files = _stat(stdout, "Number of regular files transferred")
    names = tuple(
        line[len(SENT_MARK) :]
        for line in stdout.splitlines()
        if line.startswith(SENT_MARK) and not line.endswith("/")
    )
    if code == 0:
        return PushResult(True, sent, files, seconds, "", names)
    if code == VANISHED:
        note = "some files vanished at the source during the transfer (rsync 24)"
        return PushResult(True, sent, files, seconds, note, names)
    return PushResult(False, sent, files, seconds, _error_line(stderr, code), names)


_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")


async def _read_reporting(
    stdout: asyncio.StreamReader, progress: Callable[[int], None] | None
) -> bytes:
    """All of rsync's stdout; with `progress`, each `--info=progress2` line's
    byte count is passed on as it comes (those lines end in a carriage return)."""
    if progress is None:
        return await stdout.read()
    chunks: list[bytes] = []
    tail = b""
    while data := await stdout.read(CHUNK):
        chunks.append(data)
        *lines, tail = re.split(rb"[\r\n]", tail + data)
        for line in reversed(lines):
            if match := _PROGRESS.match(line):
                progress(int(match.group(1).replace(b",", b"")))
                break
    return b"".join(chunks)
