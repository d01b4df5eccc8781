"""decide/alerts.py: a rule fires after its `for:` and not before, resolves,
repeats at its interval, a silence holds back its notices and expires, an
ack stops repeats until the alert resolves or the ack expires, a failure
healed before `for:` still notifies when the rule asks; every shipped rule
fires on its facts; the spec's alerts: keys are checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from ninefold.decide.alerts import (
    Ack,
    AlertState,
    BackupFact,
    CertFact,
    DiskFact,
    Evaluation,
    EventFact,
    Facts,
    InstanceFact,
    Silence,
    StoreFact,
    VolumeFact,
    alert_id,
    ends_at_for_receiver,
    evaluate,
    render,
)
from ninefold.spec import parse_spec
from ninefold.spec.alerts import DEFAULT_RULES, AlertsSpec, Rule
from ninefold.spec.errors import SpecError

T0 = 1_000_000.0
DOWN = Facts(nodes={"n1": True, "n2": False})
UP = Facts(nodes={"n1": True, "n2": True})


def rules(**rule: object) -> list[Rule]:
    """The node-down rule only, with `rule`'s keys changed."""
    spec = AlertsSpec.model_validate({"defaults": False, "rules": {"node-down": {
        "when": "node_down", "for": 10, "text": "node {node} is down", "repeat": 60,
        "severity": "critical", **rule,
    }}})  # fmt: skip
    return spec.effective_rules()


class Run:
    """Evaluations one after the other, each from the last one's states."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = rules
        self.states: dict[str, AlertState] = {}
        self.silences: list[Silence] = []
        self.acks: dict[str, Ack] = {}

    def at(self, now: float, facts: Facts) -> Evaluation:
        result = evaluate(self.rules, facts, self.states, self.silences, self.acks, now)
        self.states = result.states
        for ident in result.done_acks:
            self.acks.pop(ident, None)
        self.silences = [s for s in self.silences if s.id not in result.done_silences]
        return result

    def kinds(self, now: float, facts: Facts) -> list[str]:
        return [n.kind for n in self.at(now, facts).notices]

    def only(self) -> AlertState:
        assert len(self.states) == 1, self.states
        return next(iter(self.states.values()))


def test_fires_after_its_for_and_not_before() -> None:
    run = Run(rules())
    assert run.kinds(T0, DOWN) == []
    assert run.only().state == "pending"
    assert run.kinds(T0 + 9.9, DOWN) == []
    assert run.only().state == "pending"
    result = run.at(T0 + 10.0, DOWN)
    assert [n.kind for n in result.notices] == ["firing"]
    notice = result.notices[0]
    assert notice.text == "node n2 is down"
    assert notice.labels == {"alertname": "node-down", "severity": "critical", "node": "n2"}
    assert notice.starts_at == T0 and notice.status == "firing" and notice.ends_at is None
    assert run.only().state == "firing" and run.only().fired_at == T0 + 10.0
    assert run.kinds(T0 + 11.0, DOWN) == []  # once


def test_resolves_and_is_forgotten_later() -> None:
    run = Run(rules())
    run.at(T0, DOWN)
    run.at(T0 + 10, DOWN)
    result = run.at(T0 + 20, UP)
    assert [n.kind for n in result.notices] == ["resolved"]
    assert result.notices[0].status == "resolved" and result.notices[0].ends_at == T0 + 20
    assert run.only().state == "resolved"
    assert run.kinds(T0 + 30, UP) == []
    ident = run.only().id
    assert run.at(T0 + 20 + 900, UP).dropped == [ident]
    assert run.states == {}


def test_a_new_failure_after_resolved_is_a_new_firing() -> None:
    run = Run(rules(**{"for": 0}))
    assert run.kinds(T0, DOWN) == ["firing"]
    assert run.kinds(T0 + 1, UP) == ["resolved"]
    assert run.kinds(T0 + 2, DOWN) == ["firing"]


def test_repeats_at_its_interval() -> None:
    run = Run(rules(**{"for": 0, "repeat": 60}))
    assert run.kinds(T0, DOWN) == ["firing"]
    assert run.kinds(T0 + 59, DOWN) == []
    assert run.kinds(T0 + 60, DOWN) == ["repeat"]
    assert run.kinds(T0 + 61, DOWN) == []
    assert run.kinds(T0 + 120, DOWN) == ["repeat"]
    assert run.only().notices == 3


def test_repeat_defaults_to_the_alerts_repeat() -> None:
    spec = AlertsSpec.model_validate({"repeat": "30m"})
    assert {r.repeat for r in spec.effective_rules()} == {1800.0}


def test_a_silence_holds_and_expires() -> None:
    run = Run(rules(**{"for": 0}))
    run.silences = [Silence(id="s1", matchers={"node": "n2"}, starts_at=T0, ends_at=T0 + 100)]
    assert run.kinds(T0, DOWN) == []
    assert run.only().state == "firing" and run.only().silenced_by == ["s1"]
    assert run.kinds(T0 + 99, DOWN) == []
    result = run.at(T0 + 100, DOWN)  # the silence is over: notified now
    assert [n.kind for n in result.notices] == ["firing"]
    assert result.done_silences == ["s1"] and run.silences == []


def test_a_silence_matches_every_matcher_with_wildcards() -> None:
    s = Silence(id="s", matchers={"alertname": "node-*", "node": "n2"}, starts_at=0, ends_at=9)
    assert s.matches({"alertname": "node-down", "node": "n2"})
    assert not s.matches({"alertname": "node-down", "node": "n1"})
    assert not s.matches({"alertname": "disk-full", "node": "n2"})


def test_a_silenced_alert_resolves_without_a_notice() -> None:
    run = Run(rules(**{"for": 0}))
    run.silences = [
        Silence(id="s1", matchers={"alertname": "node-down"}, starts_at=0, ends_at=T0 * 2)
    ]
    run.at(T0, DOWN)
    assert run.kinds(T0 + 1, UP) == []
    assert run.only().state == "resolved"


def test_an_ack_stops_repeats_until_it_expires() -> None:
    run = Run(rules(**{"for": 0, "repeat": 60}))
    run.at(T0, DOWN)
    ident = run.only().id
    run.acks = {ident: Ack(alert=ident, until=T0 + 200, at=T0 + 1)}
    assert run.kinds(T0 + 60, DOWN) == []
    assert run.kinds(T0 + 120, DOWN) == []
    assert run.only().acked_until == T0 + 200
    result = run.at(T0 + 200, DOWN)  # expired: repeats again
    assert [n.kind for n in result.notices] == ["repeat"]
    assert result.done_acks == [ident]


def test_an_ack_ends_when_the_alert_resolves() -> None:
    run = Run(rules(**{"for": 0, "repeat": 60}))
    run.at(T0, DOWN)
    ident = run.only().id
    run.acks = {ident: Ack(alert=ident, until=T0 + 10_000, at=T0)}
    result = run.at(T0 + 5, UP)
    assert [n.kind for n in result.notices] == ["resolved"]
    assert result.done_acks == [ident] and run.acks == {}
    assert run.kinds(T0 + 6, DOWN) == ["firing"]
    assert run.kinds(T0 + 66, DOWN) == ["repeat"]  # the old ack does not hold the new one


def test_a_healed_failure_notifies_when_the_rule_asks() -> None:
    run = Run(rules(notify_healed=True))
    run.at(T0, DOWN)
    result = run.at(T0 + 3, UP)  # back before for: 10s
    assert [n.kind for n in result.notices] == ["healed"]
    notice = result.notices[0]
    assert notice.status == "resolved" and (notice.starts_at, notice.ends_at) == (T0, T0 + 3)
    assert run.only().healed and run.only().fired_at is None


def test_a_healed_failure_is_quiet_by_default() -> None:
    run = Run(rules())
    run.at(T0, DOWN)
    assert run.kinds(T0 + 3, UP) == []
    assert run.only().healed


def test_a_new_leader_does_not_send_again() -> None:
    """The states are what the store keeps: evaluating from them sends nothing new."""
    run = Run(rules(**{"for": 0}))
    assert run.kinds(T0, DOWN) == ["firing"]
    again = evaluate(run.rules, DOWN, dict(run.states), [], {}, T0 + 1)
    assert again.notices == []


def test_a_rule_taken_out_resolves_its_alerts() -> None:
    run = Run(rules(**{"for": 0}))
    run.at(T0, DOWN)
    run.rules = []
    assert run.kinds(T0 + 1, DOWN) == ["resolved"]


def test_ids_are_stable_and_labels_carry_the_cluster() -> None:
    result = evaluate(rules(**{"for": 0}), DOWN, {}, [], {}, T0, base_labels={"cluster": "c"})
    notice = result.notices[0]
    assert notice.labels["cluster"] == "c"
    assert notice.alert == alert_id(notice.labels)


def test_ends_at_keeps_a_firing_alert_active_past_the_next_repeat() -> None:
    result = evaluate(rules(**{"for": 0, "repeat": 60}), DOWN, {}, [], {}, T0)
    assert ends_at_for_receiver(result.notices[0]) == T0 + 90


def test_render_leaves_unknown_placeholders() -> None:
    assert render("{node} {nope}", {"node": "n1"}) == "n1 {nope}"
    assert render("{node", {"node": "n1"}) == "{node"


# --- the shipped rules ------------------------------------------------------------


def fired(
    facts: Facts, now: float = T0, spec: Mapping[str, object] | None = None
) -> dict[str, list[str]]:
    """Rule -> texts of the alerts firing at once (every `for:` set to 0)."""
    zero = {name: {"for": 0} for name in DEFAULT_RULES}
    alerts = AlertsSpec.model_validate({"rules": {**zero, **(spec or {})}})
    result = evaluate(alerts.effective_rules(), facts, {}, [], {}, now)
    out: dict[str, list[str]] = {}
    for n in result.notices:
        out.setdefault(n.rule, []).append(n.text)
    return out


def test_every_shipped_rule_fires_on_its_facts() -> None:
    facts = Facts(
        nodes={"n1": True, "n2": False},
        instances=[
            InstanceFact("web", "web-0", "n1", "running", "unhealthy"),
            InstanceFact("web", "web-1", "n3", "running", "healthy",
                         restart_times=(T0 - 10, T0 - 20, T0 - 30)),
            InstanceFact("db", "db-0", "n3", "backoff", "starting"),
        ],
        events=[EventFact("failover", "db", T0 - 5, "n3", "n1/db-0 -> n3/db-0")],
        volumes=[VolumeFact("db", "data", "n1", 45.0), VolumeFact("db", "data", "n3", 1.0)],
        backups=[
            BackupFact("volume/db/data/r", 3600, T0 - 7200, True),
            BackupFact("cluster/r", 3600, T0 - 600, True),
            BackupFact("check/r", 3600, None, True),
        ],
        disks=[DiskFact("n1", "/var/lib/ninefold", 0.95), DiskFact("n3", "/d", 0.5)],
        store=StoreFact(members=3, alive=2),
        certs=[CertFact("n1", T0 + 86400), CertFact("n3", T0 + 365 * 86400)],
    )  # fmt: skip
    got = fired(facts)
    assert got == {
        "node-down": ["node n2 is down"],
        "instance-unhealthy": ["web-0 of web on n1 is unhealthy", "db-0 of db on n3 is backoff"],
        "failover": ["db failed over: n1/db-0 -> n3/db-0"],
        "restart-loop": ["web-1 of web on n3 restarted 3 times"],
        "volume-lag": ["copy of db/data on n1 is 45s behind"],
        "backup-age": [
            "last good backup of volume/db/data/r is 7200s old",
            "last good backup of check/r is nevers old",
        ],
        "disk-full": ["disk of /var/lib/ninefold on n1 is 95.0% full"],
        "store-quorum": ["store has 2 of 3 members: quorum at risk"],
        "cert-expiry": ["certificate of n1 expires 1970-01-13T13:46:40Z"],
    }


def test_nothing_fires_on_a_healthy_cluster() -> None:
    facts = Facts(
        nodes={"n1": True},
        instances=[InstanceFact("web", "web-0", "n1", "running", "healthy", (T0 - 3600,))],
        events=[EventFact("failover", "db", T0 - 3600)],
        volumes=[VolumeFact("db", "data", "n1", 0.0)],
        backups=[
            BackupFact("cluster/r", 3600, T0 - 60, True),
            BackupFact("check/r", 60, None, False),
        ],
        disks=[DiskFact("n1", "/", 0.2)],
        store=StoreFact(members=5, alive=5),
        certs=[CertFact("n1", T0 + 365 * 86400)],
    )
    assert fired(facts) == {}


def test_a_failover_alert_resolves_after_its_window() -> None:
    run = Run(AlertsSpec.model_validate({"defaults": False, "rules": {
        "fo": {"when": {"failover": {"within": "1m"}}, "text": "{service}: {reason}"},
    }}).effective_rules())  # fmt: skip
    facts = Facts(events=[EventFact("failover", "db", T0, "n3", "n1 -> n3")])
    assert run.kinds(T0 + 1, facts) == ["firing"]
    assert run.only().active_since == T0
    assert run.kinds(T0 + 61, facts) == ["resolved"]


def test_disabled_and_changed_defaults() -> None:
    spec = AlertsSpec.model_validate(
        {"rules": {"disk-full": {"enabled": False}, "node-down": {"severity": "info"}}}
    )
    by_name = {r.name: r for r in spec.effective_rules()}
    assert "disk-full" not in by_name
    assert by_name["node-down"].severity == "info" and by_name["node-down"].for_ == 10
    assert AlertsSpec.model_validate({"defaults": False}).effective_rules() == []


# --- the spec ----------------------------------------------------------------------

SPEC = """
cluster: c
nodes: [{name: n1, address: 127.0.0.1, store: true}]
alerts:
{alerts}
"""


def problems(alerts: str) -> list[str]:
    try:
        parse_spec(SPEC.replace("{alerts}", alerts))
    except SpecError as exc:
        return [str(i) for i in exc.issues]
    return []


def test_a_full_alerts_spec_is_valid_and_round_trips() -> None:
    text = """
  repeat: 1h
  rules:
    node-down: {for: 30s, channels: [ops]}
    big-lag:
      when: {volume_lag: {over: 5s}}
      for: 1m
      severity: critical
      labels: {team: storage}
      text: "{service}/{volume} on {node}: {value}s ({team})"
      notify_healed: true
  channels:
    ops: {webhook: {url: "http://127.0.0.1:9093/api/v2/alerts", retries: 3}}
    mail:
      email: {host: smtp.example.com, port: 587, from: a@example.com, to: [b@example.com],
              starttls: true, username: a, password_env: SMTP_PASSWORD}
    pager: {command: [/usr/local/bin/page, --now]}
"""
    assert problems(text) == []
    from ninefold.spec import dump_spec

    spec = parse_spec(SPEC.replace("{alerts}", text))
    assert parse_spec(dump_spec(spec)) == spec
    assert spec.alerts.channels["mail"].email is not None
    assert spec.alerts.channels["mail"].email.from_ == "a@example.com"


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        ("  rules: {mine: {for: 1s}}", "alerts.rules.mine: a rule that is not a default"),
        ("  rules: {node-down: {channels: [nope]}}", "node-down.channels[0]: no channel named"),
        ("  rules: {mine: {when: disk, text: '{nod}'}}", "unknown placeholder {nod}"),
        ("  rules: {mine: {when: {disk: {}, node_down: {}}}}", "needs exactly one of"),
        ("  rules: {mine: {when: cpu}}", "cpu"),
        (
            "  channels: {m: {email: {host: h, from: a, to: [b], username: u, password: hunter2}}}",
            "key 'password' refused",
        ),
        ("  channels: {m: {webhook: {url: 'ftp://x'}}}", "is not an http:// or https:// URL"),
        ("  channels: {m: {}}", "exactly one of webhook, email, command"),
    ],
)
def test_alerts_spec_problems(alerts: str, expected: str) -> None:
    found = problems(alerts)
    assert any(expected in p for p in found), found
    assert not any("hunter2" in p for p in found)
