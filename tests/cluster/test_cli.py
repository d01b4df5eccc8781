"""The `ninefold` command against a real local cluster it started itself.

One cluster for the module, started with `ninefold up` (agents + embedded etcd
on 127.0.0.1-3, free ports) and stopped with `ninefold down`; every command
runs through the real binary, as a user would run it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from ninefold.local import LocalCluster
from tests.cluster.harness import free_base_port, until
from tests.helpers import etcd_or_skip

pytestmark = pytest.mark.cluster

PY = sys.executable
ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def spec_yaml(base: int, replicas: int = 2) -> str:
    lines = ["cluster: clitest", "store: {mode: embedded}", "nodes:"]
    for i, address in enumerate(ADDRESSES, 1):
        lines.append(
            f"  - {{name: n{i}, address: {address}, zone: z{i}, store: true, "
            f"ports: {{store_client: {base}, store_peer: {base + 1}, api: {base + 2}, "
            f"gateway_http: {base + 3}}}}}"
        )
    lines += [
        "services:",
        "  web:",
        f'    command: [{PY}, -m, http.server, "{{port}}", --bind, "{{address}}"]',
        f"    replicas: {replicas}",
        "    route: {http: /web}",
        "    check: {http: /, interval: 200ms, rise: 1, fall: 2}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Cli:
    spec: Path
    data_root: Path
    base: int

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            NINEFOLD_SPEC=str(self.spec),
            NINEFOLD_DATA_ROOT=str(self.data_root),
            COLUMNS="200",
        )

    def run(
        self, *args: str, timeout: float = 30.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "ninefold", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            input=stdin,
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        result = self.run(*args, **kwargs)
        assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stderr}"
        return result.stdout

    def status(self) -> dict[str, Any]:
        return json.loads(self.ok("status", "-o", "json"))

    def local(self) -> LocalCluster:
        return LocalCluster(self.spec, self.data_root / "local" / "clitest")

    def agent_logs(self) -> str:
        parts = []
        for log in sorted((self.data_root / "local").glob("*/*/agent.log")):
            parts.append(f"--- {log} ---\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def fails(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a failed command printed on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    etcd_or_skip()
    root = tmp_path_factory.mktemp("cli")
    base = free_base_port(ADDRESSES, span=4)
    spec = root / "ninefold.yaml"
    spec.write_text(spec_yaml(base))
    c = Cli(spec, root / "data", base)
    result = c.run("up", "--wait", "90", timeout=120)
    assert result.returncode == 0, f"{result.stderr}\n{c.agent_logs()}"
    try:
        yield c
    finally:
        c.run("down", timeout=60)
        local = c.local()
        for pid in local.running().values():  # a failed `down` must not leak agents
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                proc.kill()


def web_instances(c: Cli) -> dict[str, dict[str, Any]]:
    return {i["instance"]: i for i in c.status()["instances"] if i["service"] == "web"}


def healthy_web(c: Cli, count: int) -> dict[str, str] | None:
    found = {
        name: i["node"]
        for name, i in web_instances(c).items()
        if i["state"] == "running" and i["health"] == "healthy"
    }
    return found if len(found) == count and len(web_instances(c)) == count else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_started_every_node_and_is_idempotent(cli: Cli) -> None:
    assert sorted(cli.local().running()) == ["n1", "n2", "n3"]
    assert {n["name"]: n["state"] for n in cli.status()["nodes"]} == {
        "n1": "up",
        "n2": "up",
        "n3": "up",
    }
    result = cli.run("up", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    for node in ("n1", "n2", "n3"):
        log = cli.data_root / "local" / "clitest" / node / "agent.log"
        assert log.exists() and (log.parent / "agent.pid").exists()


def test_status_table_and_json(cli: Cli) -> None:
    until("2 healthy web instances", lambda: healthy_web(cli, 2), 60)
    table = cli.ok("status")
    for word in ("cluster clitest", "NODE", "n1", "127.0.0.2", "SERVICE", "web", "2/2", "web-0"):
        assert word in table
    view = cli.status()
    assert view["cluster"] == "clitest"
    assert view["leader"] in ("n1", "n2", "n3")
    assert {s["name"]: (s["desired"], s["healthy"]) for s in view["services"]} == {"web": (2, 2)}


def test_scale_shows_in_status(cli: Cli) -> None:
    assert "web scaled to 3" in cli.ok("scale", "web", "3")
    placed = until("3 healthy web instances", lambda: healthy_web(cli, 3), 60)
    assert sorted(set(placed.values())) == ["n1", "n2", "n3"]
    cli.ok("scale", "web", "2")
    until("back to 2 web instances", lambda: healthy_web(cli, 2), 60)


def test_unknown_names_are_usage_errors(cli: Cli) -> None:
    for args, word in [
        (("scale", "nope", "2"), "nope"),
        (("restart", "nope"), "nope"),
        (("logs", "nope"), "nope"),
        (("drain", "n9"), "n9"),
        (("undrain", "n9"), "n9"),
        (("move", "web-99", "n1"), "web-99"),
    ]:
        assert word in fails(cli.run(*args), 2), args


def test_drain_and_undrain_show_in_status(cli: Cli) -> None:
    until("2 healthy web instances", lambda: healthy_web(cli, 2), 60)
    cli.ok("drain", "n3")

    def drained() -> bool:
        nodes = {n["name"]: n["state"] for n in cli.status()["nodes"]}
        placed = healthy_web(cli, 2)
        return nodes["n3"] == "drained" and placed is not None and "n3" not in placed.values()

    until("n3 drained and empty", drained, 60)
    assert "drained" in cli.ok("status")
    cli.ok("undrain", "n3")
    until(
        "n3 up again",
        lambda: {n["name"]: n["state"] for n in cli.status()["nodes"]}["n3"] == "up",
        30,
    )


def test_kv_put_get_ls_rm_and_cas_conflict(cli: Cli) -> None:
    written = json.loads(cli.ok("kv", "put", "app/colour", "blue", "-o", "json"))
    revision = written["revision"]
    assert cli.ok("kv", "get", "app/colour") == "blue\n"
    cli.ok("kv", "put", "app/size", "L", "--cas", "0")
    listing = json.loads(cli.ok("kv", "ls", "app/", "-o", "json"))
    assert [(i["key"], i["value"]) for i in listing] == [("app/colour", "blue"), ("app/size", "L")]
    assert "app/colour" in cli.ok("kv", "ls")

    fails(cli.run("kv", "put", "app/colour", "red", "--cas", str(revision + 1000)), 1)
    fails(cli.run("kv", "put", "app/size", "XL", "--cas", "0"), 1)  # exists already
    cli.ok("kv", "put", "app/colour", "red", "--cas", str(revision))
    assert cli.ok("kv", "get", "app/colour") == "red\n"

    cli.ok("kv", "rm", "app/colour")
    cli.ok("kv", "rm", "app/size")
    assert "app/colour" in fails(cli.run("kv", "get", "app/colour"), 1)
    fails(cli.run("kv", "rm", "app/colour"), 1)
    assert json.loads(cli.ok("kv", "ls", "app/", "-o", "json")) == []


def test_apply_shows_the_diff_and_asks(cli: Cli, tmp_path: Path) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(spec_yaml(cli.base, replicas=3))
    # On a terminal it asks; "n" applies nothing.
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"n\n")
        declined = subprocess.run(
            [PY, "-m", "ninefold", "apply", str(changed)],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=30,
            env=cli.env,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert declined.returncode == 1, declined.stderr
    assert "Apply these changes?" in declined.stderr
    assert "replicas" in declined.stdout
    assert cli.status()["services"][0]["desired"] == 2

    applied = cli.ok("apply", str(changed), "--yes")
    assert any(line.startswith("+") and "replicas: 3" in line for line in applied.splitlines())
    assert "applied" in applied
    until("3 web instances", lambda: healthy_web(cli, 3), 60)
    assert "nothing to change" in cli.ok("apply", str(changed), "--yes")

    cli.ok("apply", str(cli.spec), "--yes")
    until("back to 2 web instances", lambda: healthy_web(cli, 2), 60)


def test_apply_of_a_malformed_spec_names_file_and_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec_yaml(cli.base).replace("    replicas: 2", "    replicas: two"))
    line = fails(cli.run("apply", str(bad), "--yes"), 2)
    number = spec_yaml(cli.base).splitlines().index("    replicas: 2") + 1
    assert line.startswith(f"{bad}:{number} services.web.replicas:")


def test_events_list_and_follow(cli: Cli) -> None:
    listed = [json.loads(line) for line in cli.ok("events", "-o", "json", "-n", "500").splitlines()]
    kinds = {e["kind"] for e in listed}
    assert {"leader", "placed", "started"} <= kinds
    text = cli.ok("events", "-n", "5")
    assert len(text.splitlines()) == 5

    follower = subprocess.Popen(
        [PY, "-m", "ninefold", "events", "-f", "-n", "1", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
    )
    try:
        # Connected once it printed the newest existing event (-n 1); the
        # stream starts right after, and a restart of 2 instances rolls twice.
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["kind"], follower.stderr
        assert "restart" in cli.ok("restart", "web")
        deadline = time.monotonic() + 30
        seen: list[str] = []
        assert follower.stdout is not None
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            seen.append(event["kind"])
            if event["kind"] == "rolling":
                break
        assert "rolling" in seen, (seen, follower.stderr)
    finally:
        follower.terminate()
        follower.wait(10)
    until("2 healthy web instances after the restart", lambda: healthy_web(cli, 2), 60)


def test_logs_come_from_every_instance(cli: Cli) -> None:
    placed = until("2 healthy web instances", lambda: healthy_web(cli, 2), 60)

    def logs() -> str | None:
        result = cli.run("logs", "web", "-n", "5")
        return result.stdout if result.returncode == 0 else None

    def from_all() -> str | None:
        text = logs()
        if text and all(f"{name} | " in text for name in placed):
            return text
        return None

    text = until("log lines of every web instance", from_all, 30)
    assert "GET / HTTP/1.1" in text  # the health checks, as http.server logs them


def test_down_leaves_no_agent(cli: Cli) -> None:
    pids = cli.local().running()
    assert len(pids) == 3
    children = [
        c.pid for pid in pids.values() for c in psutil.Process(pid).children(recursive=True)
    ]
    result = cli.run("down", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert cli.local().running() == {}
    assert [p for p in [*pids.values(), *children] if alive(p)] == []
    assert "unreachable" in fails(cli.run("status"), 3)
    assert "no agent" in cli.ok("down")
