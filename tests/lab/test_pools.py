"""Machines that heal, in the lab: a pool of 2 machines made by the lab
provider (namespaces booted with the bootstrap script: join with a one-use
token, then the agent), a 2-replica service on them behind the gateway. Every
process of one pool machine is SIGKILLed: the leader fences it (power-off
through the provider), forgets it, and makes a replacement in the least-used
zone, which joins and serves. The client's requests through the gateway never
fail, and the store keeps its 3 voting members (the pool has none)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ninefold.lab import Lab
from ninefold.security.ca import create_ca, write_ca
from ninefold.security.certs import issue_node_files
from ninefold.spec import load_spec
from tests.lab.conftest import UP_TIMEOUT, assert_gone

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def spec_text(ca: Path) -> str:
    return f"""\
cluster: pools
nodes:
  - {{name: n1, address: 10.97.0.11, zone: a, store: true}}
  - {{name: n2, address: 10.97.0.12, zone: b, store: true}}
  - {{name: n3, address: 10.97.0.13, zone: c, store: true}}
security:
  tls: {{ca: "{ca}"}}
pools:
  web:
    provider: lab
    count: 2
    zones: [a, b]
    replace_after: 3s
    budget: {{replacements: 10, window: 10m}}  # this module makes 4 machines or more
services:
  counter:
    command: [python3, {EXAMPLES}/services/counter.py, "{{address}}", "{{port}}"]
    replicas: 2
    placement: {{constraints: {{pool: web}}}}
    route: {{http: /counter}}
    check: {{http: /healthz, interval: 200ms, fall: 2, rise: 1}}
"""


@pytest.fixture(scope="module")
def pool_lab(lab_root: Path, links_before: set[str], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Lab]:  # fmt: skip
    root = tmp_path_factory.mktemp("pools")
    ca = create_ca("pools")
    write_ca(ca, root / "ca.key", root / "ca.crt")
    spec_path = root / "pools.yaml"
    spec_path.write_text(spec_text(root / "ca.crt"))
    spec = load_spec(spec_path)
    lab = Lab.up(spec_path, progress=print, wait=0, agents=False)
    try:
        for node in ("n1", "n2", "n3"):
            issue_node_files(ca, spec.node(node), lab.data_dir(node))
            lab.start(node)
        lab.wait_up(UP_TIMEOUT, print, nodes=["n1", "n2", "n3"])
        yield lab
    finally:
        lab.down()
        assert_gone(lab.id, lab.state_dir, links_before)


def status(lab: Lab) -> dict[str, Any]:
    for via in ("n1", "n2", "n3"):
        answer = lab.cluster_status(via)
        if answer is not None:
            return answer
    return {}


def events(lab: Lab) -> list[dict[str, Any]]:
    for via in ("n1", "n2", "n3"):
        try:
            code, body = lab.http_get("client", lab.api_url(via) + "/v1/events?limit=1000")
        except OSError:
            continue
        if code == 200:
            data = json.loads(body)
            return list(data if isinstance(data, list) else data.get("events", []))
    return []


def serving(lab: Lab) -> dict[str, str]:
    """counter instance -> node, for the running, healthy ones."""
    return {
        i["instance"]: i["node"]
        for i in status(lab).get("instances", [])
        if i["service"] == "counter" and i["state"] == "running" and i["health"] == "healthy"
    }


def until(what: str, check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(0.2)


class Traffic:
    """GETs /counter through n1's gateway from the client, every 20 ms."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.ok, self.failed = lab, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url = "http://10.97.0.11:8080/counter"
        while not self._stop.is_set():
            try:
                code, _ = self.lab.http_get("client", url, timeout=2.0)
            except OSError as exc:
                self.failed.append(repr(exc))
            else:
                if code == 200:
                    self.ok += 1
                else:
                    self.failed.append(str(code))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def voting_members(lab: Lab) -> list[str]:
    tls = lab.data_dir("n1") / "tls"
    result = lab.run("n1", [
        "etcdctl", "--endpoints", "https://10.97.0.11:2379", "--cacert", str(tls / "ca.crt"),
        "--cert", str(tls / "node.crt"), "--key", str(tls / "node.key"),
        "member", "list", "-w", "json",
    ], capture_output=True, text=True, timeout=10)  # fmt: skip
    assert result.returncode == 0, result.stderr
    members = json.loads(result.stdout)["members"]
    return sorted(m["name"] for m in members if not m.get("isLearner"))


def test_a_dead_pool_machine_is_fenced_and_replaced_while_the_service_serves(
    pool_lab: Lab,
) -> None:
    lab = pool_lab
    placed = until("the pool's 2 machines serving counter", lambda: len(s := serving(lab)) == 2
                   and s, 120)  # fmt: skip
    assert sorted(placed.values()) == ["web-1", "web-2"]
    machines = lab.machines()
    assert sorted(machines) == ["web-1", "web-2"]
    assert {machines["web-1"]["zone"], machines["web-2"]["zone"]} == {"a", "b"}
    assert machines["web-1"]["tags"]["ninefold-cluster"] == "pools"
    victim = "web-1"
    with Traffic(lab) as traffic:
        until("some requests", lambda: traffic.ok > 20, 30)
        killed = time.monotonic()
        lab.kill(victim)
        try:
            until("a replacement serving", lambda: "web-3" in serving(lab).values(), 120)
        except AssertionError:
            for e in events(lab)[-40:]:
                print(e["kind"], e["subject"], e.get("reason"))
            for node in ("n1", "n2", "n3"):
                print(node, lab.log_path(node).read_text()[-3000:])
            raise
        replaced_in = time.monotonic() - killed
        until("2 instances serving again", lambda: len(serving(lab)) == 2, 60)
        served = traffic.ok
    print(f"replacement serving {replaced_in:.1f}s after the kill; {served} requests, "
          f"{len(traffic.failed)} failed")  # fmt: skip
    assert traffic.failed == [], traffic.failed[:5]
    kinds = [(e["kind"], e["subject"]) for e in events(lab)]
    for want in [("machine-fenced", victim), ("machine-created", "web-3"),
                 ("machine-joined", "web-3"), ("machine-replaced", victim)]:  # fmt: skip
        assert want in kinds, (want, kinds[-30:])
    assert kinds.count(("machine-created", "web-3")) == 1
    assert not [k for k in kinds if k[0] == "machine-created" and k[1] == "web-4"]
    until("the dead machine destroyed", lambda: victim not in lab.machines(), 30)
    assert lab.machines()["web-3"]["zone"] == machines[victim]["zone"]  # the least-used zone
    nodes = {n["name"] for n in status(lab)["nodes"]}
    assert victim not in nodes and "web-3" in nodes
    assert voting_members(lab) == ["n1", "n2", "n3"]


def test_drill_s4_a_zone_cut_off_then_healed_ends_with_the_pools_count(pool_lab: Lab) -> None:
    """Hydra's S4 through `ninefold lab drill`'s code: the cut-off zone's pool
    machine is fenced and replaced on the majority's side; after the heal
    there is no duplicate and the pool holds its count."""
    from ninefold.lab.drill import run

    lab = pool_lab
    until("2 instances serving", lambda: len(serving(lab)) == 2, 60)
    report = run(lab, "S4", restore_after=True, progress=print)
    assert report.ok, report.problems
    assert report.replacements and report.serve_s is not None
    assert len(report.machines) == report.count == 2
    assert report.voters_after == ["n1", "n2", "n3"]


def test_drill_s5_a_quarantined_machine_is_refused_fenced_and_replaced(pool_lab: Lab) -> None:
    """Hydra's S5 through `ninefold lab drill`'s code: a pool machine is
    quarantined; the certificate copied off it is refused by every other
    node's API and etcd port, and the machine is fenced (power-off through
    the provider, its lease revoked), forgotten and replaced."""
    from ninefold.lab.drill import run

    lab = pool_lab
    until("2 instances serving", lambda: len(serving(lab)) == 2, 60)
    report = run(lab, "S5", restore_after=True, progress=print)
    assert report.ok, report.problems
    assert report.revoked_s is not None and len(report.refused) == 2 * len(
        [n for n in ("n1", "n2", "n3")]
    ), report.refused
    assert report.fence_s is not None and report.serve_s is not None
    assert len(report.machines) == report.count == 2
    assert report.victims[0] not in report.machines
    assert any("machine-locks-freed" in line for line in report.timeline), report.timeline


def test_drill_an_unknown_scenario_is_one_line(pool_lab: Lab) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ninefold", "lab", "drill", "S9", "--lab", pool_lab.id],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "S5 a compromised server" in result.stderr
