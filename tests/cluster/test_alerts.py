"""Alerts on a real 3-node cluster: killing a node's agent fires node-down
to a real SMTP server (aiosmtpd, in the test) after the rule's `for:`, not
before, and `ninefold alerts list` shows it; the node back, a resolved
notice follows; each send is an event. `ninefold alerts silence`,
`silences` and `unsilence` work through the CLI; a bad matcher is one line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.cluster.harness import LocalCluster, until
from tests.helpers import free_port

pytestmark = pytest.mark.cluster

Factory = Callable[..., LocalCluster]
FOR = 3.0


class Inbox:
    def __init__(self) -> None:
        self.mail: list[tuple[float, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        subject = message_from_bytes(envelope.content)["Subject"] or ""
        self.mail.append((time.time(), " ".join(subject.split())))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [s for _, s in self.mail]

    def first(self, subject: str) -> float | None:
        return next((t for t, s in self.mail if s == subject), None)


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    box, port = Inbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def spec(port: int) -> str:
    return f"""
alerts:
  rules:
    node-down: {{for: {FOR}s}}
    disk-full: {{enabled: false}}
  channels:
    mail:
      email: {{host: 127.0.0.1, port: {port}, from: ninefold@test.example,
               to: [ops@test.example]}}
"""


def alerts(c: LocalCluster, *args: str) -> list[dict[str, Any]]:
    result = c.cli("alerts", "list", "-o", "json", *args)
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def test_node_down_reaches_smtp_after_its_for_and_resolves(
    local_cluster: Factory, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    c = local_cluster(spec(port))
    c.start_all()
    leader = until("a leader", c.leader, 60)
    victim = next(n for n in c.addresses if n != leader)
    firing = f"[FIRING:critical] node-down: node {victim} is down"
    resolved = f"[RESOLVED:critical] node-down: node {victim} is down"

    killed = time.time()
    c.kill(victim)
    until(f"{firing!r} in the inbox", lambda: box.first(firing), 60)
    sent = box.first(firing)
    assert sent is not None and sent - killed >= FOR, "fired before its for:"
    [alert] = [a for a in alerts(c) if a["rule"] == "node-down"]
    assert alert["state"] == "firing" and alert["labels"]["node"] == victim
    assert alert["labels"]["cluster"] == "test"
    table = c.cli("alerts", "list")
    assert table.returncode == 0 and f"node {victim} is down" in table.stdout

    c.start(victim)
    until(f"{resolved!r} in the inbox", lambda: box.first(resolved), 60)
    assert box.subjects().count(firing) == 1, box.subjects()  # deduplicated
    assert not [a for a in alerts(c) if a["rule"] == "node-down"]
    assert [a for a in alerts(c, "--resolved") if a["rule"] == "node-down"]

    def journaled() -> bool:
        kinds = [(e["kind"], e.get("reason", "")) for e in c.events()]
        return ("alert-sent", "firing to mail") in kinds and (
            "alert-sent",
            "resolved to mail",
        ) in kinds

    until("alert-sent events", journaled, 30)


def test_silences_through_the_cli(local_cluster: Factory, inbox: tuple[Inbox, int]) -> None:
    _, port = inbox
    c = local_cluster(spec(port))
    c.start_all()
    until("a leader", c.leader, 60)
    made = c.cli("alerts", "silence", "alertname=node-*", "node=n2", "--for", "1h", "-o", "json")
    assert made.returncode == 0, made.stderr
    ident = json.loads(made.stdout)["id"]
    listed = c.cli("alerts", "silences", "-o", "json")
    assert [s["id"] for s in json.loads(listed.stdout)] == [ident]
    assert json.loads(listed.stdout)[0]["matchers"] == {"alertname": "node-*", "node": "n2"}
    assert c.cli("alerts", "unsilence", ident).returncode == 0
    assert json.loads(c.cli("alerts", "silences", "-o", "json").stdout) == []

    bad = c.cli("alerts", "silence", "node")
    assert bad.returncode == 2
    [line] = bad.stderr.strip().splitlines()
    assert "'node' is not a matcher: write LABEL=VALUE (e.g. node=n2)" in line
    gone = c.cli("alerts", "unsilence", "nope")
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1
    unknown = c.cli("alerts", "ack", "ffffffff")
    assert unknown.returncode == 2 and "no alert 'ffffffff'" in unknown.stderr
