"""`ninefold logs` against a real local cluster started with `ninefold up
--log-format json` and a `logging.syslog` pointing at Debian's rsyslog: the
agents' logs of all three nodes, merged and filtered; an instance's log with
--since and --grep; the agents' records and the instances' output arriving
at rsyslog with each node's name as hostname."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ninefold.logs.formats import iso_time
from tests.cluster.harness import free_base_port, until
from tests.cluster.test_cli import ADDRESSES, Cli, fails, healthy_web, spec_yaml, web_instances
from tests.helpers import etcd_or_skip
from tests.unit.test_logs_rsyslog import RSYSLOGD, Rsyslog

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    if not os.access(RSYSLOGD, os.X_OK):
        pytest.skip("rsyslogd is not installed")
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"), tls=False)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, rsyslog: Rsyslog) -> Iterator[Cli]:
    etcd_or_skip()
    root = tmp_path_factory.mktemp("logs")
    base = free_base_port(ADDRESSES, span=4)
    spec = root / "ninefold.yaml"
    text = spec_yaml(base).replace("cluster: clitest", "cluster: logtest")
    text += f"logging:\n  syslog: {{address: '127.0.0.1:{rsyslog.port}', app_name: nf-logtest}}\n"
    spec.write_text(text)
    c = Cli(spec, root / "data", base)
    result = c.run("up", "--wait", "90", "--log-format", "json", timeout=120)
    assert result.returncode == 0, f"{result.stderr}\n{c.agent_logs()}"
    try:
        yield c
    finally:
        c.run("down", timeout=60)
        for pid in c.local().running().values():
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                proc.kill()


def agent_log(c: Cli, node: str) -> Path:
    return c.data_root / "local" / "logtest" / node / "agent.log"


def test_agents_write_json_lines(cli: Cli) -> None:
    lines = agent_log(cli, "n2").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, lines[:5]
    up = [r for r in records if r["message"].startswith("agent n2 up")]
    assert up and up[0]["node"] == "n2" and up[0]["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", up[0]["time"])
    assert up[0]["logger"] == "ninefold.agent"


def test_logs_agent_grep_reads_every_node(cli: Cli) -> None:
    out = cli.ok("logs", "--agent", "--grep", r"agent n\d up", "-n", "5")
    lines = out.splitlines()
    for node in ("n1", "n2", "n3"):
        assert any(line.startswith(f"{node} | ") and f"agent {node} up" in line for line in lines)
    assert all(re.search(r"agent n\d up", line) for line in lines), out
    times = [json.loads(line.split(" | ", 1)[1])["time"] for line in lines]
    assert times == sorted(times)  # merged by time
    only = cli.ok("logs", "--agent", "--node", "n3", "--grep", "up", "--since", "1h")
    assert only.strip() and all(line.startswith("n3 | ") for line in only.splitlines())


def test_logs_of_a_service_with_since_and_grep(cli: Cli) -> None:
    until("2 healthy web instances", lambda: healthy_web(cli, 2), 60)
    # http.server prints each health check's request, without a time stamp of ours
    checks = cli.ok("logs", "web", "--since", "10m", "--grep", "GET / HTTP", "-n", "3")
    lines = checks.splitlines()
    assert len(lines) == 6, checks  # 3 of each instance
    assert {line.split(" | ")[0].strip() for line in lines} == set(web_instances(cli))
    assert all("GET / HTTP" in line for line in lines)
    later = time.time() + 3600
    assert cli.ok("logs", "web", "--since", iso_time(later)) == ""
    assert cli.ok("logs", "web", "--grep", "no such line anywhere") == ""


def test_logs_errors_are_one_line(cli: Cli) -> None:
    assert "--since" in fails(cli.run("logs", "--agent", "--since", "yesterday"), 2)
    assert "regular expression" in fails(cli.run("logs", "--agent", "--grep", "("), 2)
    assert "SERVICE" in fails(cli.run("logs"), 2)
    assert "no node named n9" in fails(cli.run("logs", "--agent", "--node", "n9"), 1)


def test_rsyslog_receives_every_node(cli: Cli, rsyslog: Rsyslog) -> None:
    def hosts() -> set[str]:
        return {f[0] for f in rsyslog.received() if len(f) == 6 and f[1] == "nf-logtest"}

    until("records of n1, n2, n3 at rsyslog", lambda: hosts() >= {"n1", "n2", "n3"}, 30)
    received = rsyslog.received()
    ups = [f for f in received if len(f) == 6 and re.match(r"agent n\d up", f[-1])]
    assert {f[0] for f in ups} == {"n1", "n2", "n3"}
    assert all(f[3] == "agent" for f in ups)

    def output() -> list[list[str]]:
        return [f for f in rsyslog.received() if len(f) == 6 and f[3].startswith("web-")]

    found = until("an instance's output at rsyslog", output, 30)
    assert {f[0] for f in found} <= {"n1", "n2", "n3"}
    assert any('service="web"' in f[4] for f in found)


def test_logs_follow_prints_new_agent_lines(cli: Cli) -> None:
    until("2 healthy web instances", lambda: healthy_web(cli, 2), 60)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ninefold", "logs", "--agent", "--grep", "web-\\d+ stopped", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        before = len(agent_stops(cli))
        assert "restart" in cli.ok("restart", "web")
        until("a new stop in some agent log", lambda: len(agent_stops(cli)) > before, 60)
        seen: list[str] = []

        def printed_new() -> bool:
            while not lines.empty():
                seen.append(lines.get())
            return len(seen) > before

        until("the follower to print the new stop", printed_new, 30)
        assert all(re.search(r"^n\d \| .*web-\d+ stopped", line) for line in seen), seen
    finally:
        follower.terminate()
        follower.wait(10)
    until("2 healthy web instances after the restart", lambda: healthy_web(cli, 2), 60)


def agent_stops(c: Cli) -> list[str]:
    out = []
    for node in ("n1", "n2", "n3"):
        text = agent_log(c, node).read_text(errors="replace")
        out += [line for line in text.splitlines() if re.search(r"web-\d+ stopped", line)]
    return out
