"""alerts/channels.py against real receivers on loopback: the email reaches
an aiosmtpd server (with a login, the password from a file); the webhook
reaches Debian's prometheus-alertmanager, whose `GET /api/v2/alerts` then
lists the alert (and marks it resolved after the resolved notice); a
webhook that fails is retried with a backoff; a command gets the notice on
its standard input; a failure is one line."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from ninefold.alerts.channels import ChannelError, send
from ninefold.decide.alerts import Notice
from ninefold.spec.alerts import ChannelSpec
from tests.helpers import free_port, wait_for, wait_for_port

pytestmark = pytest.mark.process

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def notice(kind: str = "firing", **changes: Any) -> Notice:
    now = time.time()
    data: dict[str, Any] = {
        "alert": "0123456789abcdef",
        "kind": kind,
        "status": "resolved" if kind in ("resolved", "healed") else "firing",
        "rule": "node-down",
        "labels": {"alertname": "node-down", "severity": "critical", "node": "n2", "cluster": "t"},
        "severity": "critical",
        "text": "node n2 is down",
        "value": "down",
        "starts_at": now - 12,
        "ends_at": now if kind in ("resolved", "healed") else None,
        "channels": ["x"],
        "repeat": 3600.0,
        "at": now,
    }
    data.update(changes)
    return Notice.model_validate(data)


async def no_sleep(_: float) -> None:
    return None


# --- email --------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
    ok = isinstance(auth, LoginPassword) and (auth.login, auth.password) == (b"ops", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=authenticator,
        auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_email_reaches_an_smtp_server_with_a_login(
    smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = smtp
    (tmp_path / "pw").write_text("s3cret\n")
    channel = ChannelSpec.model_validate({"email": {
        "host": "127.0.0.1", "port": port, "from": "ninefold@example.com",
        "to": ["ops@example.com", "oncall@example.com"],
        "username": "ops", "password_file": str(tmp_path / "pw"),
    }})  # fmt: skip
    assert await send(channel, notice(), "http://127.0.0.1:7000/ui/") == 1
    assert len(inbox.messages) == 1
    sender, to, raw = inbox.messages[0]
    assert sender == "ninefold@example.com"
    assert to == ["ops@example.com", "oncall@example.com"]
    message = message_from_bytes(raw)
    assert message["Subject"] == "[FIRING:critical] node-down: node n2 is down"
    assert message["X-Ninefold-Alert"] == "0123456789abcdef"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"node=n2" in body and b"http://127.0.0.1:7000/ui/" in body


async def test_a_wrong_smtp_password_is_one_line(smtp: tuple[Inbox, int], tmp_path: Path) -> None:
    _, port = smtp
    (tmp_path / "pw").write_text("wrong\n")
    channel = ChannelSpec.model_validate({"email": {
        "host": "127.0.0.1", "port": port, "from": "a@example.com", "to": ["b@example.com"],
        "username": "ops", "password_file": str(tmp_path / "pw"), "retries": 1,
    }})  # fmt: skip
    with pytest.raises(ChannelError) as caught:
        await send(channel, notice(), sleep=no_sleep)
    assert "\n" not in str(caught.value) and "(after 2 tries)" in str(caught.value)
    assert "535" in str(caught.value) or "auth" in str(caught.value).lower()


async def test_a_missing_password_variable_says_so() -> None:
    channel = ChannelSpec.model_validate({"email": {
        "host": "127.0.0.1", "port": 1, "from": "a@example.com", "to": ["b@example.com"],
        "username": "ops", "password_env": "NINEFOLD_TEST_NO_SUCH_VAR", "retries": 0,
    }})  # fmt: skip
    with pytest.raises(ChannelError, match="NINEFOLD_TEST_NO_SUCH_VAR is not set"):
        await send(channel, notice())


# --- webhook ------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` POSTs, then 200; keeps the bodies."""

    failures = 0
    bodies: list[Any] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append(body)
        status = 503 if len(type(self).bodies) <= type(self).failures else 200
        self.send_response(status)
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"nope" if status == 503 else b"okay")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[type[Receiver], int]]:
    handler = type("Handler", (Receiver,), {"failures": 2, "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_a_webhook_is_retried_with_a_backoff(
    receiver: tuple[type[Receiver], int],
) -> None:
    handler, port = receiver
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    channel = ChannelSpec.model_validate({"webhook": {"url": f"http://127.0.0.1:{port}/hook"}})
    assert await send(channel, notice(), sleep=sleep) == 3
    assert slept == [1.0, 2.0]
    body = handler.bodies[-1]
    assert isinstance(body, list) and body[0]["labels"]["node"] == "n2"
    assert set(body[0]) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


async def test_a_webhook_that_keeps_failing_is_one_line(
    receiver: tuple[type[Receiver], int],
) -> None:
    handler, port = receiver
    handler.failures = 100
    channel = ChannelSpec.model_validate(
        {"webhook": {"url": f"http://127.0.0.1:{port}/hook", "retries": 2}}
    )
    with pytest.raises(ChannelError) as caught:
        await send(channel, notice(), sleep=no_sleep)
    assert str(caught.value) == f"POST http://127.0.0.1:{port}/hook: 503 nope (after 3 tries)"
    closed = ChannelSpec.model_validate(
        {"webhook": {"url": f"http://127.0.0.1:{free_port()}/hook", "retries": 0}}
    )
    with pytest.raises(ChannelError, match=r"^POST http://127\.0\.0\.1:"):
        await send(closed, notice(), sleep=no_sleep)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if not Path(ALERTMANAGER).exists():
        pytest.skip(f"{ALERTMANAGER} is not installed (apt-get install prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text("route: {receiver: none, group_wait: 1s}\nreceivers: [{name: none}]\n")
    port = free_port()
    process = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "alertmanager.log").open("w"),
    )
    try:
        wait_for_port("127.0.0.1", port, 20)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 20, "alertmanager ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _alerts(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"{url}/api/v2/alerts")
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()
    return alerts


async def test_the_webhook_reaches_alertmanager(alertmanager: str) -> None:
    channel = ChannelSpec.model_validate({"webhook": {"url": f"{alertmanager}/api/v2/alerts"}})
    firing = notice()
    await send(channel, firing, "http://127.0.0.1:7000/ui/")
    alerts = await _alerts(alertmanager)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["labels"] == firing.labels
    assert alert["annotations"]["summary"] == "node n2 is down"
    assert alert["status"]["state"] == "active"
    assert alert["generatorURL"] == "http://127.0.0.1:7000/ui/"

    await send(channel, notice("resolved", starts_at=firing.starts_at))

    async def resolved() -> bool:
        return not [a for a in await _alerts(alertmanager) if a["status"]["state"] == "active"]

    deadline = time.monotonic() + 10
    while not await resolved():  # Alertmanager lists resolved alerts no more
        assert time.monotonic() < deadline, "alertmanager still lists the alert as active"
        await asyncio.sleep(0.1)


# --- command ------------------------------------------------------------------------


async def test_a_command_gets_the_notice_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = f'cat > {out}.json; printf "%s" "$NINEFOLD_ALERT_STATUS $NINEFOLD_ALERT_RULE" > {out}'
    channel = ChannelSpec.model_validate({"command": ["sh", "-c", script]})
    await send(channel, notice("resolved"))
    said, stdin = await asyncio.to_thread(lambda: (out.read_text(), out.with_suffix(".json")))
    assert said == "resolved node-down"
    data = json.loads(await asyncio.to_thread(stdin.read_text))
    assert data["labels"]["node"] == "n2" and data["kind"] == "resolved"


async def test_a_failing_command_is_one_line() -> None:
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    channel = ChannelSpec.model_validate(
        {"command": {"argv": ["sh", "-c", "echo no route to pager; exit 3"], "retries": 0}}
    )
    with pytest.raises(ChannelError) as caught:
        await send(channel, notice())
    assert str(caught.value) == "sh exited with 3: no route to pager (after 1 tries)"
    missing = ChannelSpec.model_validate({"command": ["/nonexistent/pager"]})
    with pytest.raises(ChannelError, match="No such file"):
        await send(missing, notice(), sleep=no_sleep)
