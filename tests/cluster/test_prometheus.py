"""A real Prometheus (Debian's `prometheus`) scraping every agent of a real
3-node cluster: every target up without a scrape error, `promtool check
metrics` silent on each agent's text, the agent's series (lease, store member,
leader, checks, volume copies) queryable, and a killed node seen in `up` and
in the instance series; and the store member's own status, from a real etcd."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ninefold.agent.store_status import StoreMemberStatus
from ninefold.store.base import StoreError
from ninefold.store.etcd import EtcdStore
from tests.cluster.harness import LocalCluster, until
from tests.helpers import EtcdServer

pytestmark = pytest.mark.cluster

Factory = Callable[..., LocalCluster]

PY = sys.executable
SERVICES = f"""
services:
  web:
    command: [{PY}, -m, http.server, "{{port}}", --bind, "{{address}}"]
    replicas: 2
    route: {{http: /web}}
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
  files:
    command: [{PY}, -m, http.server, "{{port}}", --bind, "{{address}}",
              --directory, "{{volume.data}}"]
    replicas: 2
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
    volumes:
      data: {{replicate: continuous}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url, self.process = url, process

    def get(self, path: str, **params: str) -> Any:
        resp = httpx.get(f"{self.url}{path}", params=params, timeout=5)
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def values(self, expr: str) -> dict[str, float]:
        """node label (or the target, for `up`) -> value of each series."""
        out = {}
        for series in self.query(expr):
            labels = series["metric"]
            out[labels.get("node") or labels.get("instance", "")] = float(series["value"][1])
        return out

    def targets(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/targets", state="active")["activeTargets"])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> Prometheus:
        listed = ", ".join(f'"{t}"' for t in targets)
        config = tmp_path / "prometheus.yml"
        # honor_labels: the instance series carry `instance` (ninefold's
        # instance name), which Prometheus would otherwise rename.
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ninefold\n"
            "    honor_labels: true\n"
            f"    static_configs: [{{targets: [{listed}]}}]\n"
        )
        port = _free_port()
        log = (tmp_path / "prometheus.log").open("ab")
        process = subprocess.Popen(
            [
                binary, f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

        until("prometheus ready", ready, 30)
        return Prometheus(url, process)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if any(p.returncode not in (0, -15) for p in started):
        print((tmp_path / "prometheus.log").read_text(errors="replace")[-4000:])


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says of `text` ("" when it passes silently)."""
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    said = (result.stdout + result.stderr).decode().strip()
    return said or ("" if result.returncode == 0 else f"exit {result.returncode}")


def test_prometheus_scrapes_every_agent_and_sees_a_node_die(
    local_cluster: Factory, prometheus_for: Callable[[list[str]], Prometheus]
) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    c = local_cluster(SERVICES)
    c.start_all()

    def running(service: str) -> dict[str, str]:
        serving = c.serving(service)
        return serving if len(serving) == 2 else {}

    web = until("2 healthy web instances", lambda: running("web"), 60)
    until("2 healthy files instances", lambda: running("files"), 60)
    targets = {node: f"{address}:{c.base + 2}" for node, address in c.addresses.items()}
    prom = prometheus_for(list(targets.values()))

    def all_up() -> list[dict[str, Any]]:
        found = prom.targets()
        ok = len(found) == 3 and all(t["health"] == "up" and t["lastScrape"] for t in found)
        return found if ok else []

    until("prometheus to scrape all three agents", all_up, 30)
    # a few scrapes later: still every one up, none with an error
    until("3 scrapes of each", lambda: len(prom.values("count_over_time(up[10s]) >= 3")) == 3, 30)
    for target in prom.targets():
        assert target["health"] == "up" and target["lastError"] == "", target
    assert prom.values("up") == dict.fromkeys(targets.values(), 1.0)

    # promtool on each agent's text: no error and no warning
    for node, address in targets.items():
        text = httpx.get(f"http://{address}/metrics", timeout=5).text
        assert promtool_problems(text) == "", (node, promtool_problems(text))

    # the agent's series, through Prometheus
    nodes = set(c.addresses)
    assert set(prom.values("ninefold_lease_valid == 1")) == nodes
    assert set(prom.values("ninefold_lease_renewal_duration_seconds_count > 0")) == nodes
    assert set(prom.values("ninefold_lease_renewal_failures_total")) == nodes
    until("one cluster leader", lambda: prom.values("sum(ninefold_cluster_leader)") == {"": 1.0})
    until(
        "one raft leader among the store members",
        lambda: (
            set(prom.values("ninefold_store_member_up == 1")) == nodes
            and prom.values("sum(ninefold_store_member_leader)") == {"": 1.0}
        ),
        20,
    )
    assert set(prom.values("ninefold_store_db_size_bytes > 0")) == nodes
    placed = prom.values('sum(ninefold_leader_actions_total{kind="placed"})')
    assert placed[""] >= 4, placed  # 2 web + 2 files, by whoever led
    checks = prom.values('ninefold_instance_check_duration_seconds_count{service="web"} > 0')
    assert set(checks) == set(web.values()), checks
    until(
        "the files volume's copy in the source node's series",
        lambda: prom.query('ninefold_volume_last_transfer_ok{service="files",volume="data"} == 1'),
        30,
    )

    # kill a node running a web instance: `up` goes 0, its series go stale,
    # and its web instance runs elsewhere
    instance, victim = sorted(web.items())[0]
    c.kill(victim)
    until(
        f"up 0 for {victim}",
        lambda: prom.values(f'up{{instance="{targets[victim]}"}}') == {targets[victim]: 0.0},
        30,
    )
    until(
        f"{victim}'s instance series gone",
        lambda: not prom.query(f'ninefold_instance_state{{node="{victim}"}}'),
        30,
    )

    def moved() -> str | None:
        where = prom.values(
            f'ninefold_instance_state{{instance="{instance}",state="running"}} == 1'
        )
        others = set(where) - {victim}
        return others.pop() if others else None

    elsewhere = until(f"{instance} running on another node", moved, 60)
    assert elsewhere != victim
    survivors = nodes - {victim}
    assert set(prom.values("ninefold_lease_valid == 1")) == survivors
    until(
        "the survivors' store members to say so",
        lambda: (
            set(prom.values("ninefold_store_member_up == 1")) == survivors
            and prom.values("sum(ninefold_store_member_leader)") == {"": 1.0}
        ),
        30,
    )
    for target in prom.targets():
        if target["labels"]["instance"] != targets[victim]:
            assert target["health"] == "up" and target["lastError"] == "", target


def test_the_store_member_says_if_it_leads_and_how_big_it_is(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_server.endpoint], "/t/")
        sampler = StoreMemberStatus(store, every=0.1)
        try:
            await store.put("k", b"v" * 1000)
            status = await sampler.sample()
            assert status is not None and status.leader and status.has_leader, status
            assert status.db_size >= status.db_size_in_use > 0 and not status.learner
            etcd_server.kill()
            assert await sampler.sample() is None  # no stale "leader" once it is gone
            with pytest.raises(StoreError):
                await store.member_status(0.5)
        finally:
            await store.close()

    asyncio.run(scenario())
