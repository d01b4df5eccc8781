"""rsync's remote shell for volume transfers: `-e "python -m ninefold.volumes.pipe
--port P --volume ID [--tls-dir DIR]"`.

rsync runs it as `... HOST rsync --server <options> . <path>`. It connects to
the agent's volume listener at HOST:P (volumes/transport.py), with mutual TLS
when given DIR (the node's TLS files: ca.crt, node.crt, node.key; the server's
certificate must chain to the cluster CA, its name is not checked), sends the
header line `{"volume": ID, "argv": [...]}`, reads the listener's answer
(`ok`, or `error: ...`: printed to stderr, exit 12), and then relays stdin to
the connection and the connection to stdout, like ssh: it exits when the
listener closes the connection (the receiving rsync has finished) and all it
sent has been written out. At the end of its stdin it ends its side of the
connection (plain TCP: a half close; TLS, which has none: a full close).

It runs once per transfer, so it imports the standard library only (ssl only
with TLS) and relays in one thread with a selector.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys

CONNECT_TIMEOUT = 10.0
"""Seconds to connect, finish the TLS handshake and get the listener's answer."""
CHUNK = 256 * 1024
"""Bytes read at once; also the most buffered each way."""
EXIT_REFUSED = 12
"""The listener refused the transfer (rsync's code for a protocol stream error)."""
EXIT_CONNECTION = 255
"""Cannot connect, or the connection failed (as ssh)."""
EXIT_USAGE = 2
# The names NodeTlsFiles gives a node's files (security/files.py), not imported
# from there to keep this program's start short.
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "node.crt", "node.key"
KEEPALIVE = (10, 5, 3)


class _Never(Exception):
    """Raised by nothing: stands for TLS's would-block errors on a plain socket."""


class Failure(Exception):
    """A message for stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse(argv: list[str]) -> tuple[int, str, str | None, str, list[str]]:
    """port, volume, tls dir, host, remote command."""
    port: int | None = None
    volume: str | None = None
    tls_dir: str | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option = argv[i]
        if option not in ("--port", "--volume", "--tls-dir") or i + 1 >= len(argv):
            raise Failure(f"error: pipe: bad option {option!r}", EXIT_USAGE)
        value = argv[i + 1]
        if option == "--port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise Failure(f"error: pipe: bad port {value!r}", EXIT_USAGE)
            port = int(value)
        elif option == "--volume":
            volume = value
        else:
            tls_dir = value
        i += 2
    rest = argv[i:]
    if port is None or not volume or len(rest) < 2:
        raise Failure(
            "usage: python -m ninefold.volumes.pipe --port P --volume ID [--tls-dir DIR] "
            "HOST COMMAND...",
            EXIT_USAGE,
        )
    return port, volume, tls_dir, rest[0], rest[1:]


def connect(host: str, port: int, tls_dir: str | None) -> socket.socket:
    """A connected socket (TLS-wrapped with tls_dir), blocking, CONNECT_TIMEOUT set."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        message = f"error: cannot connect to {host}:{port}: {_why(exc)}"
        raise Failure(message, EXIT_CONNECTION) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except (OSError, AttributeError):
        pass
    if tls_dir is None:
        return sock
    import ssl

    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # any certificate of the cluster CA
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=os.path.join(tls_dir, CA_FILE))
        ctx.load_cert_chain(os.path.join(tls_dir, CERT_FILE), os.path.join(tls_dir, KEY_FILE))
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        message = f"error: cannot load the TLS files in {tls_dir}: {_why(exc)}"
        raise Failure(message, EXIT_CONNECTION) from None
    try:
        return ctx.wrap_socket(sock)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise Failure(
            f"error: TLS with {host}:{port} failed: {_why(exc)}", EXIT_CONNECTION
        ) from None


def handshake(sock: socket.socket, volume: str, command: list[str], where: str) -> bytes:
    """Send the header, read the answer line; the bytes that came after it."""
    header = json.dumps({"volume": volume, "argv": command}).encode() + b"\n"
    buf = b""
    try:
        sock.sendall(header)
        while b"\n" not in buf:
            data = sock.recv(4096)
            if not data:
                break
            buf += data
            if len(buf) > 65536:
                break
    except OSError as exc:
        raise Failure(f"error: {where}: {_why(exc)}", EXIT_CONNECTION) from None
    line, newline, rest = buf.partition(b"\n")
    text = line.decode(errors="replace").strip()
    if text.startswith("error: "):
        raise Failure(text, EXIT_REFUSED)
    if not buf:
        raise Failure(f"error: {where} closed the connection without an answer", EXIT_REFUSED)
    if not newline or text != "ok":
        what = repr(text[:80])
        raise Failure(f"error: {where} answered {what}: not a volume listener?", EXIT_REFUSED)
    return rest


def relay(sock: socket.socket, tls: bool, early: bytes, fd_in: int = 0, fd_out: int = 1) -> int:
    """fd_in -> sock and sock -> fd_out until the peer closes and everything
    it sent is written out; the exit code."""
    # What a non-blocking call raises when it must wait for the socket to be
    # readable or writable; TLS may need either for a send or a recv.
    tls_wants_read: type[BaseException] = _Never
    tls_wants_write: type[BaseException] = _Never
    if tls:
        import ssl

        tls_wants_read, tls_wants_write = ssl.SSLWantReadError, ssl.SSLWantWriteError
    sock.setblocking(False)
    os.set_blocking(fd_in, False)
    os.set_blocking(fd_out, False)
    up = bytearray()
    down = bytearray(early)
    sending = b""  # what the socket last refused, offered again as is (TLS wants that)
    in_open = True  # fd_in has more
    sock_open = True  # the socket has more
    up_closed = False  # our side of the connection is ended
    send_waits = recv_waits = 0  # the event each socket call waits for
    # poll, not epoll: it also takes a regular file or /dev/null as stdin
    sel = selectors.PollSelector()
    registered: dict[int, int] = {}

    def interest(fd: int | socket.socket, events: int) -> None:
        key = fd if isinstance(fd, int) else fd.fileno()
        old = registered.get(key, 0)
        if events == old:
            return
        if not events:
            sel.unregister(key)
            del registered[key]
        elif old:
            sel.modify(key, events)
            registered[key] = events
        else:
            sel.register(key, events)
            registered[key] = events

    while True:
        progress = True
        while progress:
            progress = False
            # stdin -> up
            if in_open and len(up) < CHUNK:
                try:
                    data = os.read(fd_in, CHUNK)
                except BlockingIOError:
                    pass
                except OSError:
                    data, progress = b"", True
                    in_open = False
                else:
                    progress = True
                    if data:
                        up += data
                    else:
                        in_open = False
            # up -> socket
            send_waits = 0
            if not up_closed and (sending or up):
                if not sending:
                    sending = bytes(up[:CHUNK])
                    del up[:CHUNK]
                try:
                    sent = sock.send(sending)
                except tls_wants_read:
                    send_waits = selectors.EVENT_READ
                except (BlockingIOError, tls_wants_write):
                    send_waits = selectors.EVENT_WRITE
                except OSError as exc:
                    _tell(f"error: connection lost: {_why(exc)}")
                    return EXIT_CONNECTION
                else:
                    sending = sending[sent:]
                    progress = True
            # end of stdin -> end of our side
            if not in_open and not up and not sending and not up_closed:
                up_closed = progress = True
                if tls:  # no half close in TLS: the listener's rsync sees its input end
                    sock_open = False
                else:
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        sock_open = False
            # socket -> down
            recv_waits = 0
            if sock_open and len(down) < CHUNK:
                try:
                    data = sock.recv(CHUNK)
                except tls_wants_write:
                    recv_waits = selectors.EVENT_WRITE
                except (BlockingIOError, tls_wants_read):
                    recv_waits = selectors.EVENT_READ
                except OSError as exc:
                    _tell(f"error: connection lost: {_why(exc)}")
                    return EXIT_CONNECTION
                else:
                    progress = True
                    if data:
                        down += data
                    else:
                        sock_open = False
            # down -> stdout
            if down:
                try:
                    written = os.write(fd_out, down[:CHUNK])
                except BlockingIOError:
                    pass
                except OSError:  # rsync went away: nothing more to do
                    return EXIT_CONNECTION
                else:
                    del down[:written]
                    progress = True
        if not sock_open and not down:
            return 0
        interest(fd_in, selectors.EVENT_READ if in_open and len(up) < CHUNK else 0)
        interest(fd_out, selectors.EVENT_WRITE if down else 0)
        interest(sock, send_waits | recv_waits)
        if not registered:  # cannot happen; do not spin
            return EXIT_CONNECTION
        sel.select()


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _tell(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, message.encode(errors="replace") + b"\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        port, volume, tls_dir, host, command = parse(args)
        where = f"{host}:{port}"
        sock = connect(host, port, tls_dir)
        try:
            early = handshake(sock, volume, command, where)
            return relay(sock, tls_dir is not None, early)
        finally:
            sock.close()
    except Failure as failure:
        _tell(str(failure))
        return failure.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
