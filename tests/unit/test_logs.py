"""Logs: the agent's line formats, RFC 5424 messages, reading and filtering
log files, the `logging:` spec, the forwarder against an in-process receiver,
and the API's log endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ninefold.api import create_app
from ninefold.logs.formats import (
    JsonFormatter,
    TextFormatter,
    iso_time,
    octet_counted,
    rfc5424,
    severity,
)
from ninefold.logs.reading import LogLine, line_time, merge, parse_since, parse_time, read_log
from ninefold.logs.setup import configure_agent_logging
from ninefold.logs.syslog import OutputTap, SyslogForwarder, SyslogHandler
from ninefold.spec import SpecError, parse_spec
from ninefold.spec.logging import SyslogSpec
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually
from tests.unit.test_api import cluster_spec, seed

T0 = 1_796_300_000.123  # 2026-12-03T...Z


def record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("ninefold.agent", level, __file__, 1, message, (), None)
    made.created = T0
    for key, value in extra.items():
        setattr(made, key, value)
    return made


# --- formats ---------------------------------------------------------------------


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.123Z", iso_time(T0))
    assert parse_time(iso_time(T0)) == pytest.approx(T0, abs=0.001)


def test_json_lines_carry_the_fields_and_extras() -> None:
    line = JsonFormatter("n1").format(record("up %s", service="web", took=1.5))
    doc = json.loads(line)
    assert doc == {
        "time": iso_time(T0),
        "level": "info",
        "logger": "ninefold.agent",
        "node": "n1",
        "message": "up %s",
        "service": "web",
        "took": 1.5,
    }


def test_json_line_holds_a_traceback_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("failed", logging.ERROR)
        made.exc_info = sys.exc_info()
    line = JsonFormatter("n1").format(made)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "error" and "RuntimeError: boom" in doc["exception"]


def test_text_lines_start_with_the_time_and_keep_the_level_between_spaces() -> None:
    line = TextFormatter("n2").format(record("hello", logging.WARNING))
    assert line == f"{iso_time(T0)} n2 ninefold.agent WARNING hello"
    assert line_time(line) == pytest.approx(T0, abs=0.001)


def test_rfc5424_message() -> None:
    message = rfc5424(
        facility=3,
        severity=severity(logging.ERROR),
        when=T0,
        hostname="n1",
        app_name="ninefold",
        procid="42",
        msgid="agent",
        data={"node": "n1", "logger": 'a"b]'},
        message="it failed",
    )
    assert message.decode() == (
        f'<27>1 {iso_time(T0)} n1 ninefold 42 agent [ninefold@32473 node="n1" logger="a\\"b\\]"]'
        " it failed"
    )
    assert octet_counted(b"abc") == b"3 abc"
    bare = rfc5424(
        facility=16, severity=6, when=T0, hostname="a b", app_name="x",
        procid=None, msgid=None, data={}, message="m",
    )  # fmt: skip
    assert bare.decode().startswith(f"<134>1 {iso_time(T0)} a_b x - - - m")


# --- reading ---------------------------------------------------------------------


def stamp(t: float) -> str:
    return iso_time(t)


def test_line_times() -> None:
    assert line_time("[ninefold 2026-12-03T10:00:00+0000] pid 3 started") == parse_time(
        "2026-12-03T10:00:00Z"
    )
    assert line_time('{"time": "2026-12-03T10:00:00.5Z", "message": "x"}') == parse_time(
        "2026-12-03T10:00:00.500Z"
    )
    assert line_time("--- 2026-12-03 10:00:00 ninefold up: starting agent n1") is not None
    assert line_time("Traceback (most recent call last):") is None
    assert line_time("{not json") is None


def write_log(path: Path, base: float) -> None:
    path.write_text(
        "\n".join(
            [
                "no time yet",
                f"{stamp(base)} n1 ninefold.agent INFO one",
                f"{stamp(base + 10)} n1 ninefold.agent ERROR two",
                "Traceback (most recent call last):",
                "  boom",
                f"{stamp(base + 20)} n1 ninefold.agent INFO three",
                "plain output",
            ]
        )
        + "\n"
    )
    os.utime(path, (base + 30, base + 30))


def test_read_log_tail_since_and_grep(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    write_log(path, T0)
    every = read_log(path, lines=None)
    assert [line.text.split()[-1] for line in every] == [
        "yet", "one", "two", "last):", "boom", "three", "output",
    ]  # fmt: skip
    assert every[0].time is None
    assert every[3].time == pytest.approx(T0 + 10, abs=0.001)
    assert [line.text for line in read_log(path, lines=2)] == [every[5].text, "plain output"]
    # since: lines without a time count as written up to the next line with one
    since = [line.text.split()[-1] for line in read_log(path, lines=None, since=T0 + 15)]
    assert since == ["last):", "boom", "three", "output"]
    errors = read_log(path, lines=None, grep=re.compile("ERROR|boom"))
    assert [line.text.split()[-1] for line in errors] == ["two", "boom"]
    assert read_log(path, lines=None, since=T0 + 31) == [] or all(
        line.text == "plain output" for line in read_log(path, lines=None, since=T0 + 31)
    )
    assert read_log(tmp_path / "missing.log") == []


def test_read_log_continues_into_rotated_copies(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    (tmp_path / "agent.log.1").write_text(f"{stamp(T0)} n1 x INFO old\n")
    path.write_text(f"{stamp(T0 + 5)} n1 x INFO new\n")
    assert [line.text[-3:] for line in read_log(path, lines=5, backups=3)] == ["old", "new"]
    assert [line.text[-3:] for line in read_log(path, lines=5, backups=0)] == ["new"]


def test_read_log_of_a_big_file_reads_blocks_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"{stamp(T0 + i)} n1 x INFO line {i}\n" for i in range(20000)))
    last = read_log(path, lines=3)
    assert [line.text.split()[-1] for line in last] == ["19997", "19998", "19999"]
    assert len(read_log(path, lines=None, since=T0 + 19990)) == 10


def test_parse_since() -> None:
    assert parse_since("10m", 1000.0) == 400.0
    assert parse_since("1d", 100000.0) == 100000.0 - 86400
    assert parse_since("2026-12-03T10:00:00Z", 0) == parse_time("2026-12-03T10:00:00Z")
    for bad in ("yesterday", "10 parsecs", ""):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, 0)


def test_merge_orders_by_time_and_keeps_untimed_lines_after_theirs() -> None:
    a = [LogLine("a1", 1.0), LogLine("a-trace", None), LogLine("a3", 3.0)]
    b = [LogLine("b2", 2.0), LogLine("b4", 4.0)]
    assert [line.text for _, line in merge({"a": a, "b": b})] == ["a1", "a-trace", "b2", "a3", "b4"]


# --- spec ------------------------------------------------------------------------

SPEC = """
cluster: c
nodes: [{name: n1, address: 127.0.0.1, store: true}]
logging:
  syslog: %s
"""


def test_spec_logging_syslog() -> None:
    spec = parse_spec(SPEC % "{address: 'logs.example.com:6514', tls: true, facility: local3}")
    syslog = spec.logging.syslog
    assert syslog is not None
    assert (syslog.host, syslog.port, syslog.tls, syslog.app_name) == (
        "logs.example.com", 6514, True, "ninefold",
    )  # fmt: skip
    assert parse_spec(SPEC % "{address: '[::1]:514'}").logging.syslog.host == "::1"  # type: ignore[union-attr]
    assert (
        parse_spec(
            "cluster: c\nnodes: [{name: n1, address: 127.0.0.1, store: true}]\n"
        ).logging.syslog
        is None
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{address: nowhere}", "is not host:port"),
        ("{address: 'h:70000'}", "out of range"),
        ("{address: 'h:514', facility: local9}", "is not a facility"),
        ("{address: 'h:514', app_name: 'two words'}", "APP-NAME"),
        ("{address: 'h:514', ca: /etc/ca.pem}", "logging.syslog.ca: needs tls: true"),
        ("{address: 'h:514', port: 5}", "port"),
    ],
)
def test_spec_logging_problems(value: str, says: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC % value, "c.yaml")
    text = str(info.value)
    assert says in text and "c.yaml:5" in text, text


# --- forwarding --------------------------------------------------------------------


class Receiver:
    """A syslog receiver over TCP with octet-counting framing, in this process."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                length = int((await reader.readuntil(b" "))[:-1])
                self.messages.append((await reader.readexactly(length)).decode())
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def test_forwarder_sends_records_with_octet_counting(receiver: Receiver) -> None:
    spec = SyslogSpec(address=f"127.0.0.1:{receiver.port}", app_name="nf", facility="local0")
    forwarder = SyslogForwarder(spec, "n1")
    forwarder.start()
    logger = logging.getLogger("test.logs.forward")
    logger.propagate = False
    handler = SyslogHandler(forwarder, "n1")
    logger.addHandler(handler)
    try:
        logger.warning("multi\nline %d", 7)
        await asyncio.to_thread(logger.error, "from a thread")
        await eventually(lambda: len(receiver.messages) >= 2, 10, "2 messages")
    finally:
        logger.removeHandler(handler)
        await forwarder.stop()
    first = receiver.messages[0]
    assert re.match(r"<132>1 \S+Z n1 nf \d+ agent \[ninefold@32473 node=\"n1\"", first), first
    assert first.endswith(" multi\nline 7")
    assert receiver.messages[1].startswith("<131>1 ")
    assert forwarder.stats.dropped == 0 and forwarder.stats.sent == 2


async def test_forwarder_drops_and_counts_while_away_then_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver()
    await receiver.start()
    port = receiver.port
    await receiver.stop()  # nobody listens there now
    spec = SyslogSpec(address=f"127.0.0.1:{port}", queue=10)
    forwarder = SyslogForwarder(spec, "n1")
    forwarder.start()
    try:
        started = time.monotonic()
        for i in range(25):
            message = forwarder.message(
                f"m{i}", severity=6, when=time.time(), procid=None, msgid=None, data={}
            )
            forwarder.submit(message)
        assert time.monotonic() - started < 0.5  # never waits for the receiver
        assert forwarder.stats.dropped == 15 and forwarder.pending() == 10
        await receiver.start(port)
        await eventually(lambda: len(receiver.messages) >= 10, 15, "10 messages")
    finally:
        await forwarder.stop()
        await receiver.stop()
    texts = [m.rsplit(" ", 1)[-1] for m in receiver.messages]
    assert texts[:10] == [f"m{i}" for i in range(10)]
    assert "dropped 15 messages" in caplog.text


async def test_forwarder_reconnects_after_the_receiver_restarts(receiver: Receiver) -> None:
    forwarder = SyslogForwarder(SyslogSpec(address=f"127.0.0.1:{receiver.port}"), "n1")
    forwarder.start()

    def send(text: str) -> None:
        forwarder.submit(
            forwarder.message(text, severity=6, when=time.time(), procid=None, msgid=None, data={})
        )

    try:
        send("before")
        await eventually(lambda: len(receiver.messages) == 1, 10, "1 message")
        await receiver.stop()  # closes the connection
        await eventually(lambda: not forwarder.stats.connected, 10, "a disconnect")
        await receiver.start(receiver.port)
        send("after")
        await eventually(
            lambda: any(m.endswith(" after") for m in receiver.messages), 15, "the later message"
        )
    finally:
        await forwarder.stop()
    assert forwarder.stats.connects == 2


async def test_output_tap_follows_new_lines_and_rotations(tmp_path: Path) -> None:
    spec = SyslogSpec(address="127.0.0.1:9")
    forwarder = SyslogForwarder(spec, "n1")  # not started: messages stay queued
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    old = log_dir / "web-0.log"
    old.write_text("before the agent\n")
    tap = OutputTap(log_dir, forwarder, "n1")
    assert tap.poll() == []  # a file there at start: from its end
    with old.open("a") as f:
        f.write("hello\npart")
    (log_dir / "db-1.log").write_text("db line\n")
    assert sorted(tap.poll()) == [("db-1", b"db line"), ("web-0", b"hello")]
    with old.open("a") as f:
        f.write("ial\n")
    assert tap.poll() == [("web-0", b"partial")]
    os.truncate(old, 0)  # copy-and-truncate rotation
    old.write_text("after rotation\n")
    assert tap.poll() == [("web-0", b"after rotation")]
    assert tap.service("web-0") == "web" and tap.service("etcd") is None


# --- API ---------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = await seed(MemoryStore())
    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(tmp_path / "agent.log", T0)
    (logs / "web-0.log").write_text(f"[ninefold {stamp(T0)}] pid 3 started\nout 1\nout 2\n")
    app = create_app(store, cluster_spec(), "n1", None, logs)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
    await store.close()


async def test_api_agent_log(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/logs/agent", params={"lines": 2})).json()
    assert body["node"] == "n1" and body["source"] == "agent"
    assert [line["text"] for line in body["lines"]][-1] == "plain output"
    assert body["lines"][0]["time"] == stamp(T0 + 20)
    since = iso_time(T0 + 15)
    found = (await api.get("/v1/logs/agent", params={"since": since, "grep": "three"})).json()
    assert [line["text"].split()[-1] for line in found["lines"]] == ["three"]
    bad = await api.get("/v1/logs/agent", params={"grep": "("})
    assert bad.status_code == 422 and "not a regular expression" in bad.text
    bad = await api.get("/v1/logs/agent", params={"since": "whenever"})
    assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]


async def test_api_instance_log(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/logs/instances/web-0", params={"grep": "out"})).json()
    assert [line["text"] for line in body["lines"]] == ["out 1", "out 2"]
    assert body["lines"][0]["time"] == stamp(T0)
    elsewhere = await api.get("/v1/logs/instances/web-1")
    assert elsewhere.status_code == 404 and "n2" in elsewhere.text
    text = await api.get("/v1/instances/web-0/log", params={"grep": "out 2"})
    assert text.text == "out 2\n"
    assert (await api.get("/v1/instances/web-0/log", params={"grep": "["})).status_code == 422


# --- the agent's own setup ---------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_agent_writes_agent_log_unless_stderr_is_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logger: logging.Logger
) -> None:
    other = (tmp_path / "stderr.txt").open("a")
    monkeypatch.setattr(sys, "stderr", other)
    configure_agent_logging("n1", "info", "json", tmp_path / "data")
    logging.getLogger("ninefold.agent").info("hello %s", "there", extra={"service": "web"})
    for handler in root_logger.handlers:
        handler.flush()
    written = (tmp_path / "data" / "agent.log").read_text().splitlines()
    doc = json.loads(written[-1])
    assert (doc["message"], doc["node"], doc["service"]) == ("hello there", "n1", "web")
    assert json.loads((tmp_path / "stderr.txt").read_text().splitlines()[-1]) == doc
    other.close()

    same = (tmp_path / "data" / "agent.log").open("a")  # as under `ninefold up`
    monkeypatch.setattr(sys, "stderr", same)
    configure_agent_logging("n1", "info", "text", tmp_path / "data")
    assert len(root_logger.handlers) == 1
    logging.getLogger("ninefold.agent").warning("once")
    same.flush()
    last = (tmp_path / "data" / "agent.log").read_text().splitlines()
    assert last[-1].endswith("n1 ninefold.agent WARNING once") and last.count(last[-1]) == 1
    same.close()
