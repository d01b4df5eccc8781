"""One lab from examples/lab.yaml, and every fault the lab injects into it.

The tests share the module's lab; `whole` gives each one a healed network
with every node up. The last test removes the lab and checks nothing is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ninefold.lab import Lab, LabUnsupported, UnknownName, netns
from tests.helpers import wait_for
from tests.lab.conftest import assert_gone, lab_namespaces

NODES = ["n1", "n2", "n3"]
DETECT = 30.0
"""Seconds for the cluster to notice a node lost or back (lease TTL 2 s)."""


def node_state(lab: Lab, via: str, node: str) -> str | None:
    status = lab.cluster_status(via)
    if status is None:
        return None
    return next((n["state"] for n in status["nodes"] if n["name"] == node), None)


def health_answers(lab: Lab, where: str, node: str) -> bool:
    """Whether `node`'s API answers /v1/health (any status) from `where`."""
    try:
        lab.http_get(where, lab.api_url(node) + "/v1/health", timeout=1.0)
    except OSError:
        return False
    return True


def counter_answers(lab: Lab, address: str) -> bool:
    try:
        status, body = lab.http_get("client", f"http://{address}:8080/counter/", timeout=2)
    except OSError:
        return False
    return status == 200 and body.startswith(b"counter-")


def cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NINEFOLD_LAB=lab.id, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "ninefold", "lab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- topology ----------------------------------------------------------------------


def test_topology(whole: Lab) -> None:
    lab = whole
    assert lab.id.startswith("nf") and len(lab.id) == 6
    assert lab.nodes == NODES
    assert lab.zones == {"a": ["n1"], "b": ["n2"], "c": ["n3"]}
    assert lab.spec.cluster == "lab"
    names = {lab.namespace(n) for n in [*NODES, "client", "router"]}
    assert names == {f"{lab.id}-{n}" for n in [*NODES, "client", "router"]}
    assert sorted(lab_namespaces(lab.id)) == sorted(names)
    for node, address in zip(NODES, ["10.99.0.11", "10.99.0.12", "10.99.0.13"], strict=True):
        assert lab.address(node) == address
        # its own address, and perhaps examples/lab.yaml's gateway VIP
        assert lab.addresses(node) - {"10.99.0.10"} == {address}
        assert lab.holders(address) == [node]
        assert lab.mac(node).count(":") == 5
        assert lab.agent_state(node) == "running"
        status, body = lab.http_get("client", lab.api_url(node) + "/v1/health")
        assert status == 200, body
        assert json.loads(body)["node"] == node
    assert lab.address("client") == "10.99.0.254"
    # the client has learnt the nodes' MACs by ARP, through the bridges
    assert lab.client_neighbor("10.99.0.11") == lab.mac("n1")
    assert lab.client_neighbor("10.99.0.99") is None
    # one bridge per zone and the core bridge, all in the router namespace
    links = netns.ip_json(lab.namespace("router"), "-d", "link", "show", "type", "bridge")
    assert len(links) == len(lab.zones) + 1
    # through any node's gateway, the replicated service answers (once placed)
    wait_for(lambda: counter_answers(lab, "10.99.0.13"), 60, "the counter through n3")
    assert lab.state_dir == Path(os.environ["NINEFOLD_LAB_ROOT"]) / lab.id
    saved = json.loads((lab.state_dir / "lab.json").read_text())
    assert saved["client"]["address"] == "10.99.0.254"
    assert {n: v["address"] for n, v in saved["nodes"].items()} == {
        n: lab.address(n) for n in NODES
    }
    assert Lab.load(lab.id).nodes == NODES
    assert Lab.load().id == lab.id  # the only lab under this state root
    with pytest.raises(UnknownName, match="n9"):
        lab.kill("n9")


# --- probe ----------------------------------------------------------------------------


def probe(lab: Lab, url: str, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "ninefold.lab.probe", url, *args]
    return lab.popen("client", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_probe_lines(whole: Lab) -> None:
    lab = whole
    before = time.monotonic()
    proc = probe(lab, lab.api_url("n1") + "/v1/health", "--count", "3")
    out, errors = proc.communicate(timeout=30)
    after = time.monotonic()
    assert proc.returncode == 0, errors
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert set(line) == {"t", "ok", "status", "ms", "error", "body"}
        assert line["ok"] is True and line["status"] == 200 and line["error"] is None
        assert before <= line["t"] <= after  # one monotonic clock in every namespace
        assert 0 < line["ms"] < 5000
        assert '"node":"n1"' in line["body"].replace(" ", "")
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)

    proc = probe(lab, "http://10.99.0.11:9/", "--count", "1")
    out, _ = proc.communicate(timeout=30)
    [line] = [json.loads(line) for line in out.splitlines()]
    assert line["ok"] is False and line["status"] is None and line["body"] == ""
    assert "ConnectionRefused" in line["error"]


def test_probe_stops_on_sigterm(whole: Lab) -> None:
    lab = whole
    proc = probe(lab, lab.api_url("n2") + "/v1/health", "--interval", "0.05")
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["ok"] is True
    proc.send_signal(signal.SIGTERM)  # nsenter became the probe: same pid
    assert proc.wait(timeout=10) == 0
    rest = [json.loads(line) for line in proc.stdout.read().splitlines()]
    assert all(line["ok"] for line in rest)


# --- CLI ----------------------------------------------------------------------------------


def test_cli_status_and_exec(whole: Lab) -> None:
    lab = whole
    result = cli(lab, "status")
    assert result.returncode == 0, result.stderr
    for node in NODES:
        assert lab.namespace(node) in result.stdout
        assert lab.address(node) in result.stdout
    assert "network: whole" in result.stdout
    data = json.loads(cli(lab, "status", "-o", "json").stdout)
    assert [n["agent"] for n in data["nodes"]] == ["running"] * 3
    assert cli(lab, "exec", "n1", "--", "sh", "-c", "exit 7").returncode == 7
    result = cli(lab, "exec", "client", "--", "ip", "-br", "addr", "show", "dev", "eth0")
    assert result.returncode == 0 and "10.99.0.254/24" in result.stdout


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["kill", "n9"], ["'n9'", "n1, n2, n3"]),
        (["freeze", "client"], ["'client'", "n1, n2, n3"]),
        (["isolate", "zz"], ["'zz'", "a, b, c"]),
        (["partition", "n1,n9 / n3"], ["'n9'", "n1, n2, n3"]),
        (["partition", "n1"], ["two groups"]),
        (["slow", "n1", "--delay", "soon"], ["--delay"]),
        (["status", "--lab", "nf0000"], ["nf0000"]),
        (["status", "-o", "xml"], ["--output", "'xml'"]),
    ],
)
def test_cli_usage_errors(whole: Lab, args: list[str], names: list[str]) -> None:
    result = cli(whole, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    for name in names:
        assert name in line


def test_cli_partition_and_heal(whole: Lab) -> None:
    lab = whole
    result = cli(lab, "partition", "n1,n2", "/", "n3")
    assert result.returncode == 0, result.stderr
    assert lab.fault == {"partition": [["n1", "n2"], ["n3"]]}
    lab = Lab.load(lab.id)
    assert lab.fault == {"partition": [["n1", "n2"], ["n3"]]}
    assert not lab.reaches("n3", "n1")
    assert "partitioned n1,n2 / n3" in cli(lab, "status").stdout
    assert cli(lab, "heal").returncode == 0
    assert lab.reaches("n3", "n1")


# --- network faults ------------------------------------------------------------------------


def reach_matrix(lab: Lab) -> dict[tuple[str, str], bool]:
    return {(a, b): lab.reaches(a, b) for a in [*NODES, "client"] for b in NODES if a != b}


def test_partition_and_heal(whole: Lab) -> None:
    lab = whole
    lab.partition([["n1", "n2"], ["n3"]])
    reach = reach_matrix(lab)
    cut = {("n1", "n3"), ("n2", "n3"), ("n3", "n1"), ("n3", "n2")}
    assert {pair for pair, ok in reach.items() if not ok} == cut, reach
    for node in NODES:  # the table sits in each grouped node's namespace
        tables = lab.run(node, ["nft", "list", "tables"], capture_output=True, text=True)
        assert "inet ninefold_lab" in tables.stdout
    tables = lab.run("client", ["nft", "list", "tables"], capture_output=True, text=True)
    assert "ninefold_lab" not in tables.stdout
    wait_for(lambda: node_state(lab, "n1", "n3") == "down", DETECT, "n1 to see n3 down")
    # n3 on its own has no store quorum: its API cannot say the store is ok
    wait_for(lambda: lab.health("n3", timeout=5) != 200, DETECT, "n3 to lose its store")

    lab.heal()
    assert all(reach_matrix(lab).values())
    for node in NODES:
        tables = lab.run(node, ["nft", "list", "tables"], capture_output=True, text=True)
        assert "ninefold_lab" not in tables.stdout
    assert lab.fault is None
    wait_for(lambda: node_state(lab, "n1", "n3") == "up", DETECT, "n1 to see n3 up again")


def test_partition_replaces_the_previous_one(whole: Lab) -> None:
    lab = whole
    lab.partition([["n1"], ["n2", "n3"]])
    lab.partition([["n1", "n2"], ["n3"]])
    assert lab.reaches("n1", "n2") and lab.reaches("n2", "n1")
    assert not lab.reaches("n1", "n3") and not lab.reaches("n3", "n2")
    lab.partition([["n1"], ["n3"]])  # n2 in no group: untouched
    assert lab.reaches("n2", "n1") and lab.reaches("n2", "n3") and lab.reaches("n3", "n2")
    assert not lab.reaches("n1", "n3") and not lab.reaches("n3", "n1")
    lab.heal()


def test_isolate_zone(whole: Lab) -> None:
    lab = whole
    lab.isolate("c")
    reach = reach_matrix(lab)
    cut = {("n1", "n3"), ("n2", "n3"), ("n3", "n1"), ("n3", "n2"), ("client", "n3")}
    assert {pair for pair, ok in reach.items() if not ok} == cut, reach
    # nor can n3 reach the client
    listener = lab.popen("client", [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == b"ready\n"
        assert lab.reaches("n1", "client", port=7999)
        assert not lab.reaches("n3", "client", port=7999)
    finally:
        listener.kill()
        listener.wait()
    wait_for(lambda: node_state(lab, "n1", "n3") == "down", DETECT, "n1 to see n3 down")
    lab.heal()
    assert all(reach_matrix(lab).values())
    wait_for(lambda: node_state(lab, "n1", "n3") == "up", DETECT, "n1 to see n3 up again")


LISTEN = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7999)); s.listen(16); print("ready", flush=True)
threading.Event().wait()  # until killed
"""


def test_slow(whole: Lab) -> None:
    lab = whole
    try:
        lab.slow("n1", 0.2)
    except LabUnsupported as exc:
        assert "netem is not available" in str(exc)
        result = cli(lab, "slow", "n1", "--delay", "100ms")
        assert result.returncode == 1
        assert "netem is not available" in one_error_line(result)
        pytest.skip(str(exc))
    try:
        started = time.monotonic()
        lab.http_get("client", lab.api_url("n1") + "/v1/health", timeout=5)
        assert time.monotonic() - started >= 0.2
    finally:
        lab.slow("n1", 0)


# --- processes ---------------------------------------------------------------------------------


def test_freeze_and_thaw(whole: Lab) -> None:
    lab = whole
    before = lab.processes("n2")
    assert len(before) >= 2  # agent, etcd (and maybe a counter)
    lab.freeze("n2")
    assert lab.processes("n2") == before
    assert all(netns.stopped(pid) for pid in before)
    assert lab.agent_state("n2") == "frozen"
    assert not health_answers(lab, "client", "n2")  # a hung machine answers nothing
    assert lab.reaches("client", "n2")  # ...though its kernel still accepts connections
    wait_for(lambda: node_state(lab, "n1", "n2") == "down", DETECT, "n1 to see n2 down")
    lab.thaw("n2")
    assert not any(netns.stopped(pid) for pid in lab.processes("n2"))
    assert lab.agent_state("n2") == "running"
    wait_for(lambda: health_answers(lab, "client", "n2"), DETECT, "n2 to answer again")
    lab.wait_up(60)


def test_kill_and_start(whole: Lab) -> None:
    lab = whole
    agent = lab.agent_pid("n2")
    assert agent is not None and agent in lab.processes("n2")
    lab.kill("n2")
    assert lab.processes("n2") == []
    assert lab.agent_pid("n2") is None and lab.agent_state("n2") == "stopped"
    assert not netns.alive(agent)
    wait_for(lambda: node_state(lab, "n1", "n2") == "down", DETECT, "n1 to see n2 down")
    assert lab.start("n2") != agent
    assert lab.start("n2") == lab.agent_pid("n2")  # no-op while it runs
    lab.wait_up(60, nodes=["n2"])
    wait_for(lambda: node_state(lab, "n1", "n2") == "up", DETECT, "n1 to see n2 rejoin")


def test_stop_is_graceful(whole: Lab) -> None:
    lab = whole
    lab.stop("n3", timeout=30)
    assert lab.processes("n3") == []
    assert lab.agent_state("n3") == "stopped"
    wait_for(lambda: node_state(lab, "n1", "n3") == "down", DETECT, "n1 to see n3 down")
    lab.start("n3")
    lab.wait_up(60, nodes=["n3"])


# --- the end --------------------------------------------------------------------------------------


def test_down_removes_everything(lab: Lab, links_before: set[str]) -> None:
    state: dict[str, Any] = json.loads((lab.state_dir / "lab.json").read_text())
    assert state["id"] == lab.id
    lab.down()
    assert_gone(lab.id, lab.state_dir, links_before)
    lab.down()  # twice is fine: the fixture does it again
