"""The gateway on a real 3-node cluster, both engines: clients go through n1's
gateway to a service whose instances run on n2 and n3 (placement by label),
while the test kills, restarts and scales them."""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

APPS = Path(__file__).parent / "apps"
PY = sys.executable

ENGINES = [
    "builtin",
    pytest.param(
        "haproxy",
        marks=pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy binary"),
    ),
]


def web(replicas: int = 2, extra: str = "") -> str:
    return f"""
  web:
    command: [{PY}, {APPS / "whoami.py"}, "{{address}}", "{{port}}"]
    replicas: {replicas}
    route: {{http: /web}}
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
    placement: {{constraints: {{role: backend}}{extra}}}
    balance: {{drain_timeout: 5s}}
"""


ECHO = f"""
  echo:
    command: [{PY}, {APPS / "tcp_echo.py"}, "{{address}}", "{{port}}"]
    replicas: 2
    route: {{tcp: @TCPPORT@}}
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
    placement: {{constraints: {{role: backend}}}}
"""


def cluster_yaml(engine: str, services: str) -> str:
    return f"gateway: {{engine: {engine}}}\nservices:{services}"


Factory = Callable[..., LocalCluster]


def start(local_cluster: Factory, engine: str, services: str) -> LocalCluster:
    c = local_cluster(
        cluster_yaml(engine, services),
        labels={"n2": {"role": "backend"}, "n3": {"role": "backend"}},
    )
    c.start_all()
    return c


def gateway_url(c: LocalCluster) -> str:
    return f"http://{c.addresses['n1']}:{c.base + 3}"


def serving(c: LocalCluster, service: str, count: int) -> Callable[[], dict[str, str]]:
    def probe() -> dict[str, str]:
        s = c.serving(service)
        return s if len(s) == count else {}

    return probe


def routed(c: LocalCluster, count: int) -> Callable[[], set[str]]:
    """The set of instances answering through the gateway, once it has `count`."""

    def probe() -> set[str]:
        seen = set()
        with httpx.Client(timeout=2) as client:
            for _ in range(4 * count):
                r = client.get(gateway_url(c) + "/web/")
                if r.status_code == 200:
                    seen.add(r.text.split()[0])
        return seen if len(seen) == count else set()

    return probe


@dataclass
class LoadLoop:
    """A client sending sequential GETs through one gateway, counting failures."""

    url: str
    limit: int
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    answered_by: Counter[str] = field(default_factory=Counter)
    longest_gap: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        last_ok = time.monotonic()
        with httpx.Client(timeout=5) as client:
            while self.sent < self.limit and not self.stop.is_set():
                self.sent += 1
                try:
                    r = client.get(self.url)
                    ok = r.status_code == 200
                    detail = f"{r.status_code} {r.text[:80]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                now = time.monotonic()
                if ok:
                    self.answered_by[r.text.split()[0]] += 1
                    self.longest_gap = max(self.longest_gap, now - last_ok)
                    last_ok = now
                else:
                    self.failures.append(f"#{self.sent}: {detail}")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread


@pytest.mark.parametrize("engine", ENGINES)
def test_requests_split_evenly_over_two_replicas(local_cluster: Factory, engine: str) -> None:
    c = start(local_cluster, engine, web())
    until("both replicas routed", routed(c, 2), 60)
    counts: Counter[str] = Counter()
    with httpx.Client(timeout=5) as client:
        for _ in range(1000):
            r = client.get(gateway_url(c) + "/web/hello")
            assert r.status_code == 200, r.text
            counts[r.text.split()[0]] += 1
    assert sorted(counts) == ["web-0", "web-1"]
    assert all(490 <= n <= 510 for n in counts.values()), counts


@pytest.mark.parametrize("engine", ENGINES)
def test_no_request_fails_when_a_backend_node_is_killed(
    local_cluster: Factory, engine: str
) -> None:
    c = start(local_cluster, engine, web())
    placed = until("both replicas routed", routed(c, 2), 60)
    assert placed == {"web-0", "web-1"}
    victim = c.serving("web")["web-0"]
    load = LoadLoop(gateway_url(c) + "/web/", 10_000)
    thread = load.start()
    until("5000 requests sent", lambda: load.sent >= 5000, 60, 0.01)
    c.kill(victim)
    thread.join(timeout=120)
    assert load.sent == 10_000
    assert load.failures == [], load.failures[:5]
    assert load.answered_by["web-1"] >= 5000


@pytest.mark.parametrize("engine", ENGINES)
def test_rolling_restart_loses_nothing(local_cluster: Factory, engine: str) -> None:
    c = start(local_cluster, engine, web())
    until("both replicas routed", routed(c, 2), 60)
    before = {i["instance"]: i for i in c.status()["instances"] if i["service"] == "web"}
    load = LoadLoop(gateway_url(c) + "/web/", 10_000)
    thread = load.start()
    until("1000 requests sent", lambda: load.sent >= 1000, 60, 0.01)
    result = c.cli("restart", "web")
    assert result.returncode == 0, result.stderr

    def restarted() -> bool:
        now = {i["instance"]: i for i in c.status()["instances"] if i["service"] == "web"}
        return (
            all(
                now.get(name, {}).get("ports") and _pid(c, name) != _pid_of(before[name])
                for name in before
            )
            and len(serving(c, "web", 2)()) == 2
        )

    until("both instances restarted and serving", restarted, 90, 0.5)
    load.stop.set()
    thread.join(timeout=30)
    assert load.failures == [], load.failures[:5]
    rolling = [e for e in c.events() if e["kind"] == "rolling"]
    assert len(rolling) == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_scale_up_and_down_under_load_loses_nothing(local_cluster: Factory, engine: str) -> None:
    c = start(local_cluster, engine, web(extra=", allow_colocate: true"))
    until("both replicas routed", routed(c, 2), 60)
    load = LoadLoop(gateway_url(c) + "/web/", 50_000)
    thread = load.start()
    until("500 requests sent", lambda: load.sent >= 500, 60, 0.01)
    assert c.cli("scale", "web", "4").returncode == 0
    until("4 routed", lambda: len(load.answered_by) == 4, 60, 0.1)
    mark = load.sent
    assert c.cli("scale", "web", "2").returncode == 0
    until("back to 2", lambda: len(serving(c, "web", 2)()) == 2, 60)
    until("500 more requests", lambda: load.sent >= mark + 500, 60, 0.01)
    load.stop.set()
    thread.join(timeout=30)
    assert load.failures == [], load.failures[:5]


@pytest.mark.parametrize("engine", ENGINES)
def test_tcp_failover_loses_only_the_killed_instances_connections(
    local_cluster: Factory, engine: str
) -> None:
    c = start(local_cluster, engine, ECHO)
    tcp_port = c.tcp_port
    until("both echo instances serving", serving(c, "echo", 2), 60)
    address = (c.addresses["n1"], tcp_port)

    def talk(sock: socket.socket) -> str:
        sock.sendall(b"ping\n")
        return sock.makefile("rb").readline().decode().split(" ")[0]

    conns: dict[str, list[socket.socket]] = {"echo-0": [], "echo-1": []}

    def both_reached() -> bool:
        sock = socket.create_connection(address, timeout=2)
        conns[talk(sock)].append(sock)
        return all(conns.values())

    until("connections to both instances", both_reached, 30)
    victim_node = c.serving("echo")["echo-0"]
    c.kill(victim_node)

    survivor = conns["echo-1"][0]
    assert talk(survivor) == "echo-1"  # untouched by the failover
    for sock in conns["echo-0"]:
        assert _closed(sock, talk), "a connection to the killed instance still answers"

    def new_connection_works() -> bool:
        with socket.create_connection(address, timeout=2) as sock:
            return talk(sock) in ("echo-0", "echo-1")

    until("new connections served", new_connection_works, 30)
    assert talk(survivor) == "echo-1"


def _closed(sock: socket.socket, talk: Callable[[socket.socket], str]) -> bool:
    """The connection is gone: it errors, or the gateway closed it (EOF)."""
    try:
        return talk(sock) == ""
    except OSError:
        return True


def _pid(c: LocalCluster, instance: str) -> int | None:
    for i in c.status()["instances"]:
        if i["instance"] == instance:
            return _pid_of(i)
    return None


def _pid_of(status: dict) -> int | None:
    return status.get("pid")
