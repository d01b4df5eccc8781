"""agent/alerts.py and the alerts API on a MemoryStore, with a real lease
keeper and leader loop: a node without a record fires node-down after its
`for:` to a command channel, and resolves when it registers; every notice
and send is an event; a silence made through the API holds the next
firing; an ack stops repeats; the stored states keep a second evaluator
(a new leader) from sending again; a node writes its facts under its
lease. Errors a caller can make are one line each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ninefold.agent.alerts import AlertEvaluator, NodeFacts, NodeFactsReporter
from ninefold.agent.journal import EventJournal
from ninefold.agent.leader import LeaderLoop
from ninefold.agent.membership import LeaseKeeper
from ninefold.api import create_app
from ninefold.spec import ClusterSpec, dump_spec, parse_spec
from ninefold.state.keys import EVENTS, SPEC_KEY, alert_facts_key, node_key
from ninefold.state.records import Event, NodeRecord
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually

pytestmark = pytest.mark.process  # the command channel starts a program

WRITER = "import sys; print(sys.stdin.read(), file=open(sys.argv[1], 'a'))"


def spec_text(out: Path) -> str:
    return f"""
cluster: t
nodes:
  - {{name: n1, address: 127.0.0.1, store: true}}
  - {{name: n2, address: 127.0.0.2}}
alerts:
  defaults: false
  rules:
    node-down: {{when: node_down, for: 300ms, repeat: 1s, text: "node {{node}} is down"}}
    switched: {{when: {{failover: {{within: 1m}}}}, text: "{{service}}: {{reason}}"}}
  channels:
    log: {{command: [{sys.executable}, -c, "{WRITER}", "{out}"]}}
"""


@dataclass
class Rig:
    store: MemoryStore
    spec: ClusterSpec
    out: Path
    keeper: LeaseKeeper
    leader: LeaderLoop
    client: httpx.AsyncClient
    evaluator: AlertEvaluator | None = None

    async def evaluated_after(self, seconds: float) -> None:
        """Wait until the evaluator has completed a step `seconds` from now."""
        mark = time.monotonic() + seconds
        evaluator = self.evaluator
        assert evaluator is not None
        await eventually(lambda: evaluator.evaluated_at >= mark, seconds + 10, "an evaluation")

    def notices(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    async def kinds(self) -> list[str]:
        return [n["kind"] for n in await asyncio.to_thread(self.notices)]

    async def events(self) -> list[Event]:
        return [Event.decode(i.value) for i in (await self.store.list(EVENTS)).items]

    async def register(self, node: str) -> None:
        record = NodeRecord(name=node, address="127.0.0.2", zone="z", region="r", api_port=1, pid=1)
        await self.store.put(node_key(node), record.encode(), self.keeper.lease)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    out = tmp_path / "notices"
    spec = parse_spec(spec_text(out))
    store = MemoryStore()
    await store.put(SPEC_KEY, dump_spec(spec).encode())
    keeper = LeaseKeeper(store, ttl=5.0, interval=0.5, fence_after=3.0)
    journal = EventJournal(store, "n1")
    leader = LeaderLoop(store, "n1", keeper, journal, spec)
    await keeper.start()
    tasks = [asyncio.create_task(leader.run())]
    rig = Rig(store, spec, out, keeper, leader, None)  # type: ignore[arg-type]
    await rig.register("n1")
    leader.poke()
    await eventually(lambda: _true(leader.is_leader), 10, "n1 to lead")
    rig.evaluator = AlertEvaluator(store, journal, leader, every=0.05)
    tasks.append(asyncio.create_task(rig.evaluator.run()))
    transport = httpx.ASGITransport(app=create_app(store, spec, "n1"))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        rig.client = client
        try:
            yield rig
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await keeper.stop()


async def _true(value: bool) -> bool:
    return value


async def test_node_down_fires_resolves_and_is_journaled(rig: Rig) -> None:
    await eventually(lambda: _has(rig, ["firing"]), 10, "a firing notice")
    [notice] = await asyncio.to_thread(rig.notices)
    assert notice["text"] == "node n2 is down"
    assert notice["labels"] == {
        "cluster": "t", "alertname": "node-down", "severity": "warning", "node": "n2",
    }  # fmt: skip
    assert notice["at"] - notice["starts_at"] >= 0.3  # its for:
    alerts = (await rig.client.get("/v1/alerts")).json()
    assert [(a["rule"], a["state"], a["labels"]["node"]) for a in alerts] == [
        ("node-down", "firing", "n2")
    ]
    await rig.register("n2")
    await eventually(lambda: _last_is(rig, "resolved"), 10, "a resolved notice")
    sent = await rig.kinds()
    assert sent[0] == "firing" and set(sent[1:-1]) <= {"repeat"}  # repeat: 1s
    assert (await rig.client.get("/v1/alerts")).json() == []
    resolved = (await rig.client.get("/v1/alerts", params={"resolved": "true"})).json()
    assert [a["state"] for a in resolved] == ["resolved"]

    async def journaled() -> list[tuple[str, str]]:
        kinds = [(e.kind, e.reason) for e in await rig.events() if e.kind.startswith("alert-")]
        return kinds if sum(1 for k, _ in kinds if k == "alert-sent") == len(sent) else []

    kinds = await eventually(journaled, 10, "an alert-sent event per notice")
    assert ("alert-firing", "node n2 is down") in kinds
    assert ("alert-resolved", "node n2 is down") in kinds
    assert ("alert-sent", "firing to log") in kinds


async def _has(rig: Rig, kinds: list[str]) -> bool:
    return await rig.kinds() == kinds


async def _sent(rig: Rig, kind: str) -> bool:
    return kind in await rig.kinds()


async def _last_is(rig: Rig, kind: str) -> bool:
    kinds = await rig.kinds()
    return bool(kinds) and kinds[-1] == kind


async def test_a_new_leader_does_not_send_again(rig: Rig) -> None:
    await eventually(lambda: _sent(rig, "firing"), 10, "a firing notice")
    before = await rig.kinds()
    second = AlertEvaluator(rig.store, EventJournal(rig.store, "n1"), rig.leader)
    await second.step()
    await asyncio.sleep(0)  # a send would have started now
    assert len(await rig.kinds()) <= len(before) + 1  # at most the first's own repeat


async def test_an_ack_stops_repeats(rig: Rig) -> None:
    await eventually(lambda: _has(rig, ["firing", "repeat"]), 10, "a repeat after 1s")
    [alert] = (await rig.client.get("/v1/alerts")).json()
    answer = await rig.client.post(
        f"/v1/alerts/{alert['id'][:6]}/ack", json={"expires": "1h", "comment": "on it"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["alert"] == alert["id"]
    count = len(await rig.kinds())
    await eventually(
        lambda: _acked(rig), 10, "the alert to show its ack"
    )  # the evaluator took it in
    await rig.evaluated_after(1.5)  # longer than repeat: 1s; no repeat may come
    assert len(await rig.kinds()) in (count, count + 1)  # one may have been on its way
    settled = len(await rig.kinds())
    await rig.evaluated_after(1.2)
    assert len(await rig.kinds()) == settled


async def _acked(rig: Rig) -> bool:
    alerts = (await rig.client.get("/v1/alerts")).json()
    return bool(alerts and alerts[0]["acked_until"])


async def test_a_silence_holds_and_can_be_lifted(rig: Rig) -> None:
    answer = await rig.client.post(
        "/v1/silences",
        json={"matchers": {"alertname": "node-*"}, "expires": "1h", "comment": "maintenance"},
    )
    assert answer.status_code == 201, answer.text
    silence = answer.json()
    listed = (await rig.client.get("/v1/silences")).json()
    assert [s["id"] for s in listed] == [silence["id"]]

    async def silenced() -> bool:
        alerts = (await rig.client.get("/v1/alerts")).json()
        return bool(alerts and alerts[0]["state"] == "firing" and alerts[0]["silenced_by"])

    await eventually(silenced, 10, "the alert to fire, silenced")
    assert await rig.kinds() == []
    gone = await rig.client.delete(f"/v1/silences/{silence['id']}")
    assert gone.status_code == 200
    await eventually(lambda: _sent(rig, "firing"), 10, "the firing notice once lifted")
    assert (await rig.client.get("/v1/silences")).json() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/v1/alerts/ffffffff/ack", {}, 404, "no alert 'ffffffff'"),
        ("POST", "/v1/silences", {"matchers": {}, "expires": "1h"}, 422, "matchers"),
        ("POST", "/v1/silences", {"matchers": {"a": "b"}, "expires": "soon"}, 422, "soon"),
        ("POST", "/v1/silences", {"matchers": {"a-b": "c"}, "expires": "1h"}, 422, "label"),
        ("DELETE", "/v1/silences/nope", None, 404, "no silence 'nope'"),
    ],
)
async def test_caller_errors_are_one_line(
    rig: Rig, method: str, path: str, body: Any, status: int, says: str
) -> None:
    answer = await rig.client.request(method, path, json=body)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]["message"]
    assert says in message and "\n" not in message


async def test_acking_an_alert_that_is_not_firing_is_a_conflict(rig: Rig) -> None:
    await eventually(lambda: _sent(rig, "firing"), 10, "a firing notice")
    await rig.register("n2")

    async def resolved() -> list[Any]:
        alerts: list[Any] = (await rig.client.get("/v1/alerts?resolved=true")).json()
        return [a for a in alerts if a["state"] == "resolved"]

    [alert] = await eventually(resolved, 10, "the alert resolved")
    answer = await rig.client.post(f"/v1/alerts/{alert['id']}/ack", json={})
    assert answer.status_code == 409
    assert (
        answer.json()["error"]["message"]
        == f"alert {alert['id']} (node-down) is resolved, not firing"
    )


async def test_a_failover_in_the_journal_fires_its_rule(rig: Rig) -> None:
    await rig.register("n2")
    await EventJournal(rig.store, "n2").record("failover", "db", "n1/db-0 -> n2/db-1")

    async def switched() -> list[dict[str, Any]]:
        return [n for n in await asyncio.to_thread(rig.notices) if n["rule"] == "switched"]

    [notice] = await eventually(switched, 10, "the failover's notice")
    assert notice["text"] == "db: n1/db-0 -> n2/db-1"
    assert notice["labels"]["service"] == "db" and notice["labels"]["kind"] == "failover"


async def test_a_node_writes_its_facts_under_its_lease(rig: Rig, tmp_path: Path) -> None:
    cert = Path(__file__).parent / "no-such.crt"
    reporter = NodeFactsReporter(rig.store, rig.keeper, "n1", tmp_path, cert)
    await reporter.step()
    item = await rig.store.get(alert_facts_key("n1"))
    assert item is not None and item.lease == rig.keeper.lease
    facts = NodeFacts.decode(item.value)
    assert 0 < facts.disk_ratio < 1 and facts.path == str(tmp_path)
    assert facts.cert_not_after is None
