"""The core control plane on a real 3-node cluster (agents + embedded etcd).

Every test kills agents with SIGKILL, as a machine dying would, and watches
what a user would see: `ninefold status`, `ninefold events`, processes."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

PY = sys.executable
HTTP = f'[{PY}, -m, http.server, "{{port}}", --bind, "{{address}}"]'

WEB = f"""
services:
  web:
    command: {HTTP}
    replicas: 2
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
"""


def queue(promotions: Path) -> str:
    return f"""
  queue:
    mode: active-passive
    replicas: 2
    command: {HTTP}
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
    on_promote: [sh, -c, "echo {{node}} $NINEFOLD_FENCING_TOKEN >> {promotions}"]
"""


Factory = Callable[..., LocalCluster]


def healthy(cluster: LocalCluster, service: str, count: int) -> Callable[[], dict[str, str]]:
    def probe() -> dict[str, str]:
        serving = cluster.serving(service)
        return serving if len(serving) == count else {}

    return probe


def test_replica_moves_off_a_killed_node(local_cluster: Factory) -> None:
    c = local_cluster(WEB)
    c.start_all()
    placed = until("2 healthy web instances", healthy(c, "web", 2), 60)
    assert len(set(placed.values())) == 2, "two replicas on one node"
    spare = (set(c.addresses) - set(placed.values())).pop()
    victim = sorted(placed.values())[0]

    c.kill(victim)

    moved = until(
        f"web healthy on {spare}",
        lambda: (s := healthy(c, "web", 2)()) and spare in s.values() and s,
        30,
    )
    assert victim not in moved.values()
    status = c.status()
    assert {n["name"]: n["state"] for n in status["nodes"]}[victim] == "down"
    table = c.cli("status")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.count(spare) and "web-" in line)
    assert "running" in row and "healthy" in row
    kinds = [(e["kind"], e["subject"]) for e in c.events()]
    assert ("node-lost", victim) in kinds
    assert any(k == "moved" for k, _ in kinds)


def test_a_new_leader_takes_over_and_keeps_reconciling(local_cluster: Factory) -> None:
    c = local_cluster(WEB)
    c.start_all()
    until("2 healthy web instances", healthy(c, "web", 2), 60)
    leader = until("a leader", c.leader, 30)

    c.kill(leader)

    new_leader = until("another leader", lambda: (n := c.leader()) and n != leader and n, 30)
    # It keeps reconciling: web stays at 2 on the survivors, and a new
    # service applied now gets placed and started.
    until("web back at 2 on the survivors", healthy(c, "web", 2), 30)
    extra = WEB + (
        f"  extra:\n    command: {HTTP}\n    check: {{http: /, interval: 200ms, rise: 1}}\n"
    )
    new_spec = c.write_spec(extra, c.root / "more.yaml")
    applied = c.cli("apply", "--yes", str(new_spec))
    assert applied.returncode == 0, applied.stderr
    until("the new service running", healthy(c, "extra", 1), 30)
    elections = [e for e in c.events() if e["kind"] == "leader"]
    assert elections[-1]["subject"] == new_leader
    assert elections[-1]["data"]["token"] > elections[0]["data"]["token"]


def test_active_passive_fails_over_with_a_greater_token(
    local_cluster: Factory, tmp_path: Path
) -> None:
    promotions = tmp_path / "promotions"
    c = local_cluster(WEB.replace("replicas: 2", "replicas: 1") + queue(promotions))
    c.start_all()

    def active() -> tuple[str, int] | None:
        svc = next(s for s in c.status()["services"] if s["name"] == "queue")
        return (svc["active"], svc["fencing_token"]) if svc["active"] else None

    first, token = until("an active queue", active, 60)
    until("the standby healthy too", healthy(c, "queue", 2), 30)
    old_node = first.split("/")[0]
    assert promotions.read_text().split() == [old_node, str(token)]

    c.kill(old_node)

    def new_active() -> tuple[str, int] | None:
        current = active()
        return current if current and current[0] != first else None

    second, new_token = until("the standby promoted", new_active, 30)
    new_node = second.split("/")[0]
    assert new_node != old_node
    assert new_token > token
    lines = until("on_promote ran", lambda: promotions.read_text().splitlines()[1:], 10)
    assert lines == [f"{new_node} {new_token}"]
    instances = c.status()["instances"]
    assert sum(1 for i in instances if i["role"] == "active") == 1
    failovers = [e for e in c.events() if e["kind"] == "failover"]
    assert failovers and failovers[-1]["data"] == {
        "old_active": first,
        "new_active": second,
        "token": new_token,
    }


def test_crashing_process_restarts_with_backoff_then_moves(local_cluster: Factory) -> None:
    c = local_cluster(
        f"""
services:
  crashy:
    command: [{PY}, -c, "import sys; sys.exit(3)"]
    restart: {{backoff: 100ms, backoff_max: 1s, limit: 3, window: 1m}}
"""
    )
    c.start_all()

    def moved() -> list[dict] | None:
        events = c.events()
        return events if any(e["kind"] == "moved" for e in events) else None

    events = until("crashy moved after its restart limit", moved, 60)
    move = next(e for e in events if e["kind"] == "moved")
    first_node = move["data"]["from_node"]
    assert move["reason"] == f"restart limit reached on {first_node}"
    # The restarts on the first node came before the move, with growing delays.
    restarts = [
        e
        for e in events
        if e["kind"] == "restarted" and e["node"] == first_node and e["time"] <= move["time"]
    ]
    delays = [float(re.search(r"in ([\d.]+)s", e["reason"]).group(1)) for e in restarts]
    assert len(delays) == 3
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert any(e["kind"] == "failed" and e["node"] == first_node for e in events)


def test_service_processes_die_with_their_agent_and_leave_nothing(
    local_cluster: Factory, tmp_path: Path
) -> None:
    c = local_cluster(WEB + queue(tmp_path / "promotions"))
    c.start_all()
    until("web and queue healthy", lambda: healthy(c, "web", 2)() and healthy(c, "queue", 2)(), 60)
    victim = next(iter(healthy(c, "queue", 2)().values()))

    children = c.kill(victim)

    assert len(children) >= 2  # its etcd member and at least one service

    def gone() -> bool:
        return all(not _alive(pid) for pid in children)

    until("every process of the killed agent gone", gone, timeout=1.0, interval=0.05)

    c.start(victim)
    until(f"{victim} up again", lambda: _node_state(c, victim) == "up", 30)
    log = until(
        "the leftover check in the log",
        lambda: (t := c.log_path(victim).read_text()).count("leftovers: none") and t,
        10,
    )
    assert "stopped leftovers" not in log


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _node_state(c: LocalCluster, node: str) -> str:
    return {n["name"]: n["state"] for n in c.status()["nodes"]}[node]


def test_switchover_hands_the_active_to_a_standby_and_it_stays(
    local_cluster: Factory, tmp_path: Path
) -> None:
    import httpx

    promotions = tmp_path / "promotions"
    c = local_cluster(WEB.replace("replicas: 2", "replicas: 1") + queue(promotions))
    c.start_all()
    until("the queue healthy", lambda: healthy(c, "queue", 2)(), 60)

    def active() -> tuple[str, int] | None:
        svc = next(s for s in c.status()["services"] if s["name"] == "queue")
        return (svc["active"], svc["fencing_token"]) if svc["active"] else None

    first, token = until("an active queue", active, 30)
    api = f"http://{c.addresses['n1']}:{c.base + 2}"
    answer = until(
        "the API",
        lambda: httpx.post(f"{api}/v1/services/queue/switchover", json={}, timeout=5),
        30,
    )
    assert answer.status_code == 202, answer.text
    second, new_token = until(
        "another active", lambda: (a := active()) and a[0] != first and a, 15, 0.05
    )
    assert new_token > token
    # It stays there: the old active is a standby again and does not take back.
    until("the old active back as a healthy standby", healthy(c, "queue", 2), 30)
    assert active() == (second, new_token)
    roles = {i["instance"]: i["role"] for i in c.status()["instances"] if i["service"] == "queue"}
    assert sorted(roles.values()) == ["active", "standby"]
    handover = [e for e in c.events() if e["kind"] == "switchover"]
    assert [(e["data"]["old_active"], e["data"]["new_active"]) for e in handover] == [
        (first, second)
    ]
