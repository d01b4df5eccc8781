"""The transfer channel of replicated volumes: rsync pushed through the agent's
volume listener (volumes/transport.py) by its remote shell (volumes/pipe.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ninefold.security.ca import create_ca
from ninefold.security.certs import issue_node_files
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import NodeSpec
from ninefold.volumes.transport import (
    PushResult,
    Refused,
    VolumeListener,
    check_server_argv,
    pipe_command,
    push,
)
from tests.tls_probes import tls_refused

VOLUME = "web/docroot@7"
BUNDLE = "-logDtpre.iLsfxCIvu"
PARTIAL = ["--partial-dir", ".ninefold-partial"]


def resolver(target: Path, volume: str = VOLUME) -> Callable[[str], Path | None]:
    return lambda asked: target if asked == volume else None


async def send(
    source: Path,
    listener: VolumeListener,
    volume: str = VOLUME,
    *,
    tls_dir: Path | None = None,
    exclude: tuple[str, ...] = (),
    timeout: float = 30.0,
    checksum: bool = False,
) -> PushResult:
    return await push(
        source,
        "127.0.0.1",
        listener.port,
        volume,
        tls_dir=tls_dir,
        exclude=exclude,
        timeout=timeout,
        checksum=checksum,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "index.html").write_text("<h1>hello</h1>\n")
    (src / "sub" / "page.html").write_text("page\n")
    (src / "sub" / "deeper" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "sub" / "deeper" / "run.sh").chmod(0o750)
    (src / "sub" / "secret").write_text("s\n")
    (src / "sub" / "secret").chmod(0o600)
    (src / "cache.tmp").write_text("not sent\n")
    (src / "link").symlink_to("index.html")
    return src


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[VolumeListener]:
    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def slow_rsync(tmp_path: Path, times: int = 1000) -> str:
    """An `rsync` for the listener that takes 30 s to start its first `times`
    runs: a transfer stays under way."""
    script = tmp_path / "slow-rsync"
    count = tmp_path / "slow-rsync-runs"
    script.write_text(
        "#!/bin/sh\n"
        f"echo >> {count}\n"
        f'[ "$(wc -l < {count})" -le {times} ] && sleep 30\n'
        'exec rsync "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout:g} s")


async def exchange(port: int, header: bytes, ctx: ssl.SSLContext | None = None) -> bytes:
    """Send raw bytes to the listener; the first line it answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(header)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


# -- what the listener accepts -------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["rsync", "--server", BUNDLE, "--delete", "--stats", "-@-1", *PARTIAL, ".", "."],
        ["rsync", "--server", "-logDtprce.iLsfxCIvu", "--delete", "--inplace", ".", "."],
        ["rsync", "--server", BUNDLE, "--delete", ".", "x\\ y"],
        ["rsync", "--server", "-logDtpr", ".", "/anywhere"],
        ["rsync", "--server", BUNDLE, "--timeout=30", "--log-format=X", ".", "."],
    ],
)
def test_receiving_server_command_lines_of_rsync_a_delete_are_allowed(argv: list[str]) -> None:
    assert check_server_argv(argv) == argv[2:-2]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["rsync", "--server", "--sender", BUNDLE, ".", "."], "--sender"),
        (["rsync", "--server", BUNDLE, ".", "--sender", "."], "--sender"),
        (["rsync", "--server", "-slogDtpre.iLsfxCIvu"], "not an rsync server"),
        (["rsync", "--server", "-slogDtpre.iLsfxCIvu", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--delete-excluded", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--partial-dir=/etc", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--partial-dir", "/etc", ".", "."], "must be"),
        (["rsync", "--server", BUNDLE, "--partial-dir", ".", "."], "must be"),
        (["rsync", "--server", BUNDLE, ".ninefold-partial", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--partial", ".", "."], "truncated file"),
        (["rsync", "--server", BUNDLE, "-@3", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--timeout=x", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--log-format=%f", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--log-file=/tmp/x", ".", "."], "not allowed"),
        (["rsync", "--server", BUNDLE, "--remove-source-files", ".", "."], "not allowed"),
        (["rsync", "--server", "-logDtpre.iLsfxCIvu", "-v", ".", "."], "not allowed"),
        (["rsync", "--server", "-vlogDtpre.iLsfxCIvu", ".", "."], "not allowed"),
        (["rsync", "--server", "--delete", ".", "."], "one bundle"),
        (["rsync", "--server", BUNDLE, BUNDLE, ".", "."], "one bundle"),
        (["rsync", "--server", BUNDLE, "x", "."], "expected `. <path>`"),
        (["sh", "-c", "rm -rf /", ".", "."], "not an rsync server"),
        (["rsync", "--daemon", BUNDLE, ".", "."], "not an rsync server"),
        ("rsync --server -logDtpre.iLsfxCIvu . .", "list of strings"),
        (["rsync", "--server", 3, ".", "."], "list of strings"),
    ],
)
def test_anything_else_is_refused(argv: object, why: str) -> None:
    with pytest.raises(Refused, match=why):
        check_server_argv(argv)


def test_pipe_command_quotes_what_rsync_would_split(tmp_path: Path) -> None:
    spaced = tmp_path / "my tls"
    command = pipe_command(8445, "a b/c@1", spaced)
    assert command.startswith(f"{sys.executable} -m ninefold.volumes.pipe --port 8445")
    assert "'a b/c@1'" in command and f"'{spaced}'" in command
    assert pipe_command(1, "it's", None).endswith('--volume "it\'s"')


async def test_a_bad_header_is_answered_with_an_error_and_logged(
    tmp_path: Path, listener: VolumeListener, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused before any process starts: the unit tier's guard would fail the test."""
    caplog.set_level(logging.WARNING, "ninefold.volumes")
    sender = {"volume": VOLUME, "argv": ["rsync", "--server", "--sender", BUNDLE, ".", "."]}
    answer = await exchange(listener.port, json.dumps(sender).encode() + b"\n")
    assert answer.startswith(b"error: --sender: a peer may only push")
    assert "refused: --sender" in caplog.text and "from 127.0.0.1:" in caplog.text
    assert (await exchange(listener.port, b"hello\n")).startswith(b"error: the header is not JSON")
    option = {"volume": VOLUME, "argv": ["rsync", "--server", BUNDLE, "--temp-dir=/", ".", "."]}
    answer = await exchange(listener.port, json.dumps(option).encode() + b"\n")
    assert answer == b"error: option '--temp-dir=/' is not allowed\n"
    assert listener.refused == 3 and listener.received == 0
    assert not (tmp_path / "dst").exists()


# -- pushing -------------------------------------------------------------------------------
@pytest.mark.process
async def test_push_sends_files_directories_modes_and_deletes_but_not_excluded(
    tmp_path: Path, source: Path, listener: VolumeListener
) -> None:
    dst = tmp_path / "dst"
    (dst / "gone" / "deep").mkdir(parents=True)
    (dst / "stale.html").write_text("old\n")
    (dst / "gone" / "deep" / "x").write_text("x\n")
    (dst / "local.tmp").write_text("excluded here: neither sent nor deleted\n")
    result = await send(source, listener, exclude=("*.tmp",))
    assert result.ok, result.error
    assert result.error == "" and result.files_transferred == 4 and result.bytes_sent > 0
    assert (dst / "index.html").read_text() == "<h1>hello</h1>\n"
    assert (dst / "sub" / "deeper" / "run.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert mode(dst / "sub" / "deeper" / "run.sh") == 0o750
    assert mode(dst / "sub" / "secret") == 0o600
    assert os.readlink(dst / "link") == "index.html"
    assert not (dst / "stale.html").exists() and not (dst / "gone").exists()
    assert not (dst / "cache.tmp").exists()
    assert (dst / "local.tmp").exists()
    assert listener.received == 1 and listener.transfers == []

    (source / "index.html").unlink()
    (source / "sub" / "new.html").write_text("new\n")
    (source / "sub" / "secret").chmod(0o640)
    result = await send(source, listener, exclude=("*.tmp",))
    assert result.ok, result.error
    assert not (dst / "index.html").exists() and (dst / "sub" / "new.html").exists()
    assert mode(dst / "sub" / "secret") == 0o640


@pytest.mark.process
async def test_a_second_push_sends_only_the_delta(
    tmp_path: Path, source: Path, listener: VolumeListener
) -> None:
    big = source / "big.bin"
    big.write_bytes(os.urandom(2_000_000))
    second_start = 1_700_000_000 * 10**9
    os.utime(big, ns=(second_start, second_start + 100_000_000))
    first = await send(source, listener)
    assert first.ok and first.bytes_sent > 2_000_000
    data = bytearray(big.read_bytes())
    data[1_000_000:1_000_010] = b"0123456789"
    big.write_bytes(bytes(data))
    # the same size, the same second: rsync's default quick check would skip it
    os.utime(big, ns=(second_start, second_start + 200_000_000))
    second = await send(source, listener)
    assert second.ok and second.files_transferred == 1
    assert second.bytes_sent < 50_000, second
    assert (tmp_path / "dst" / "big.bin").read_bytes() == bytes(data)
    third = await send(source, listener)
    assert third.ok and third.files_transferred == 0 and third.bytes_sent < 5_000


@pytest.mark.process
async def test_a_checksum_push_repairs_what_size_and_mtime_cannot_see(
    tmp_path: Path, source: Path, listener: VolumeListener
) -> None:
    assert (await send(source, listener)).ok
    copy = tmp_path / "dst" / "sub" / "page.html"
    stamp = copy.stat().st_mtime_ns
    copy.write_text("PAGE\n")  # diverged behind rsync's back: same size, same mtime
    os.utime(copy, ns=(stamp, stamp))
    quick = await send(source, listener)
    assert quick.ok and quick.files_transferred == 0 and copy.read_text() == "PAGE\n"
    verify = await send(source, listener, checksum=True)
    assert verify.ok and verify.files_transferred == 1 and copy.read_text() == "page\n"


@pytest.mark.process
async def test_a_push_names_the_files_it_sent_when_asked(
    tmp_path: Path, source: Path, listener: VolumeListener
) -> None:
    assert (await send(source, listener)).ok
    (source / "sub" / "page.html").write_text("changed\n")
    (source / "new name with spaces").write_text("x\n")
    result = await push(
        source, "127.0.0.1", listener.port, VOLUME, tls_dir=None, timeout=30.0, list_sent=True
    )
    assert result.ok
    assert sorted(result.sent_files) == ["new name with spaces", "sub/page.html"]


@pytest.mark.process
async def test_a_first_copy_reports_its_progress_in_bytes(
    tmp_path: Path, listener: VolumeListener
) -> None:
    big = tmp_path / "src"
    big.mkdir()
    for i in range(20):
        (big / f"f{i:02d}").write_bytes(os.urandom(200_000))
    seen: list[int] = []
    result = await push(
        big, "127.0.0.1", listener.port, VOLUME, tls_dir=None, timeout=30.0,
        progress=seen.append,
    )  # fmt: skip
    assert result.ok and result.files_transferred == 20
    assert seen and seen == sorted(seen)
    assert seen[-1] == 20 * 200_000


@pytest.mark.process
async def test_an_unknown_volume_is_refused_with_a_clear_error(
    tmp_path: Path, source: Path, listener: VolumeListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ninefold.volumes")
    result = await send(source, listener, "web/docroot@6")
    assert not result.ok
    assert result.error == "error: volume 'web/docroot@6' is not accepted on this node"
    assert "from 127.0.0.1:" in caplog.text
    assert not (tmp_path / "dst").exists()


@pytest.mark.process
def test_the_pipe_prints_a_refusal_and_exits_12(tmp_path: Path) -> None:
    async def refuse() -> subprocess.CompletedProcess[bytes]:
        server = VolumeListener("127.0.0.1", 0, lambda _: None)
        await server.start()
        try:
            command = [sys.executable, "-m", "ninefold.volumes.pipe", "--port", str(server.port)]
            command += ["--volume", "x/y@1", "127.0.0.1", "rsync", "--server", BUNDLE, ".", "."]
            return await asyncio.to_thread(
                subprocess.run, command, input=b"", capture_output=True, timeout=20
            )
        finally:
            await server.stop()

    done = asyncio.run(refuse())
    assert done.returncode == 12
    assert done.stderr == b"error: volume 'x/y@1' is not accepted on this node\n"


@pytest.mark.process
async def test_nothing_listening_fails_the_push(source: Path, tmp_path: Path) -> None:
    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"))
    await server.start()
    await server.stop()  # its port is free now
    result = await send(source, server, timeout=20)
    assert not result.ok
    assert result.error.startswith(f"error: cannot connect to 127.0.0.1:{server.port}")


@pytest.mark.process
async def test_pushes_run_at_once(tmp_path: Path, source: Path) -> None:
    targets = {f"svc/v{i}@1": tmp_path / f"dst{i}" for i in range(4)}
    server = VolumeListener("127.0.0.1", 0, targets.get)
    await server.start()
    try:
        results = await asyncio.gather(*(send(source, server, v) for v in targets))
    finally:
        await server.stop()
    assert all(r.ok for r in results), results
    for target in targets.values():
        assert (target / "sub" / "page.html").read_text() == "page\n"


# -- mutual TLS ----------------------------------------------------------------------------
@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, NodeTlsFiles]:
    ca = create_ca("shop")
    made = {
        name: issue_node_files(ca, NodeSpec(name=name, address="127.0.0.1"), tmp_path / name)
        for name in ("n1", "n2")
    }
    stranger = create_ca("shop")  # same name, another key
    made["stranger"] = issue_node_files(
        stranger, NodeSpec(name="n3", address="127.0.0.1"), tmp_path / "stranger"
    )
    return made


@pytest.mark.process
async def test_with_tls_a_node_certificate_pushes_and_strangers_are_refused(
    tmp_path: Path,
    source: Path,
    nodes: dict[str, NodeTlsFiles],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "ninefold.volumes")
    dst = tmp_path / "dst"
    server = VolumeListener("127.0.0.1", 0, resolver(dst), tls=nodes["n1"])
    await server.start()
    try:
        result = await send(source, server, tls_dir=nodes["n2"].directory)
        assert result.ok, result.error
        assert (dst / "sub" / "page.html").read_text() == "page\n"

        (source / "index.html").write_text("changed\n")
        plain = await send(source, server, tls_dir=None, timeout=20)
        assert not plain.ok
        assert "handshake" in caplog.text and "from 127.0.0.1:" in caplog.text
        stranger = await send(source, server, tls_dir=nodes["stranger"].directory, timeout=20)
        assert not stranger.ok and stranger.error.startswith("error: TLS with 127.0.0.1:")
        assert (dst / "index.html").read_text() == "<h1>hello</h1>\n"  # unchanged

        ca, n3 = nodes["n2"].ca, nodes["stranger"]
        assert await asyncio.to_thread(tls_refused, "127.0.0.1", server.port, ca)
        assert await asyncio.to_thread(tls_refused, "127.0.0.1", server.port, ca, n3.cert, n3.key)
        header = {"volume": VOLUME, "argv": ["rsync", "--server", BUNDLE, ".", "."]}
        raw = json.dumps(header).encode() + b"\n"
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            answer = await exchange(server.port, raw)
            if not answer:
                raise ConnectionResetError("closed without an answer")
        assert server.received == 1 and server.refused >= 4
    finally:
        await server.stop()


# -- ending transfers ----------------------------------------------------------------------
@pytest.mark.process
async def test_a_listener_stopped_mid_transfer_fails_the_push_without_a_hang(
    tmp_path: Path, source: Path
) -> None:
    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"), rsync=slow_rsync(tmp_path))
    await server.start()
    pushing = asyncio.create_task(send(source, server, timeout=60))
    await until(lambda: (tmp_path / "slow-rsync-runs").exists())  # its rsync started
    async with asyncio.timeout(10):
        await server.stop()
        result = await pushing
    assert not result.ok and result.seconds < 10
    said = ("connection unexpectedly closed", "connection lost", "without an answer")
    assert any(s in result.error for s in said), result.error
    assert server.transfers == []


@pytest.mark.process
async def test_abort_ends_the_matching_transfers(tmp_path: Path, source: Path) -> None:
    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"), rsync=slow_rsync(tmp_path))
    await server.start()
    try:
        pushing = asyncio.create_task(send(source, server, timeout=60))
        await until(lambda: server.transfers == [VOLUME])
        assert server.abort(lambda v: v.endswith("@6")) == 0
        assert server.abort(lambda v: v.endswith("@7"), "fenced") == 1
        async with asyncio.timeout(10):
            result = await pushing
        assert not result.ok
        await until(lambda: server.transfers == [])
    finally:
        await server.stop()


@pytest.mark.process
async def test_a_push_past_its_timeout_is_stopped(tmp_path: Path, source: Path) -> None:
    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"), rsync=slow_rsync(tmp_path))
    server.peer_gone_grace = 0.5  # this rsync does not read: it would not see the end
    await server.start()
    try:
        async with asyncio.timeout(10):
            result = await send(source, server, timeout=1.0)
        assert not result.ok and result.error == "transfer timed out after 1 s"
        assert 1.0 <= result.seconds < 5
        await until(lambda: server.transfers == [])  # the pipe died with rsync
    finally:
        await server.stop()


@pytest.mark.process
async def test_a_newer_transfer_into_a_directory_ends_the_older(
    tmp_path: Path, source: Path
) -> None:
    slow = slow_rsync(tmp_path, times=1)
    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"), rsync=slow)
    await server.start()
    try:
        older = asyncio.create_task(send(source, server, timeout=60))
        await until(lambda: server.transfers == [VOLUME])
        async with asyncio.timeout(20):
            newer = await send(source, server)
            assert newer.ok, newer.error
            assert not (await older).ok
        assert (tmp_path / "dst" / "sub" / "page.html").read_text() == "page\n"
    finally:
        await server.stop()


@pytest.mark.process
async def test_an_interrupted_transfer_never_leaves_a_truncated_file(
    tmp_path: Path, source: Path, listener: VolumeListener
) -> None:
    """Cut off mid-file, the standby keeps its old file (rsync's --partial would
    put the part received in its place); the next push resumes from the part."""
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "big.bin").write_bytes(b"the standby's good copy\n")
    data = os.urandom(1 << 20) * 96
    (source / "big.bin").write_bytes(data)
    cut = await send(source, listener, timeout=0.3)
    await until(lambda: listener.transfers == [])
    assert (dst / "big.bin").read_bytes() in (b"the standby's good copy\n", data), cut
    whole = await send(source, listener)
    assert whole.ok and (dst / "big.bin").read_bytes() == data
    assert not (dst / ".ninefold-partial").exists()


async def test_a_peer_that_is_not_a_node_is_refused_before_anything_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ninefold.volumes")
    seen: list[str] = []

    def allow(address: str) -> bool:
        seen.append(address)
        return address == "10.0.0.2"

    server = VolumeListener("127.0.0.1", 0, resolver(tmp_path / "dst"), allow_peer=allow)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(10):
            assert await reader.read() == b""
        writer.close()
    finally:
        await server.stop()
    assert seen == ["127.0.0.1"] and server.refused == 1
    assert "refused: not a node of the cluster" in caplog.text
