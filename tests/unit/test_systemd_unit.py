"""The systemd unit `ninefold install-service` writes, and the agent's side of
the notify protocol."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ninefold.agent.readiness import ServiceNotifier
from ninefold.cli.main import app
from ninefold.spec import parse_spec
from ninefold.systemd_unit import capabilities, render_unit

PLAIN = """
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, store: true}
  - {name: n2, address: 10.0.0.2, store: true}
services:
  web: {command: [sleep, infinity]}
"""

WITH_VIP = """
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, store: true}
gateway: {vip: 10.0.0.100/24}
services:
  web: {command: [sleep, infinity]}
"""

LOW_PORT = """
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, store: true, ports: {gateway_http: 80}}
services:
  web: {command: [sleep, infinity]}
"""

TCP_ROUTE_LOW = """
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, store: true}
services:
  db: {command: [sleep, infinity], route: {tcp: 443}}
"""


def unit_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_capabilities_are_only_what_the_spec_needs() -> None:
    for text, expected in [
        (PLAIN, []),
        (WITH_VIP, ["CAP_NET_ADMIN", "CAP_NET_RAW"]),
        (LOW_PORT, ["CAP_NET_BIND_SERVICE"]),
        (TCP_ROUTE_LOW, ["CAP_NET_BIND_SERVICE"]),
    ]:
        spec = parse_spec(text)
        assert capabilities(spec, spec.nodes[0]) == expected, text


def test_a_service_vip_needs_the_network_capabilities_too() -> None:
    spec = parse_spec(
        PLAIN.replace(
            "web: {command: [sleep, infinity]}",
            "db: {command: [sleep, infinity], mode: active-passive, vip: 10.0.0.50/24}",
        )
    )
    assert capabilities(spec, spec.nodes[1]) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]


def test_the_unit_runs_the_agent_of_this_installation(tmp_path: Path) -> None:
    spec = parse_spec(WITH_VIP)
    text = render_unit(
        spec, "n1", tmp_path / "spec.yaml", tmp_path / "data", "/opt/nf/bin/python", "ninefold"
    )
    lines = unit_lines(text)
    assert shlex.split(lines["ExecStart"]) == [
        "/opt/nf/bin/python", "-m", "ninefold", "agent",
        "--spec", str(tmp_path / "spec.yaml"), "--node", "n1",
        "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    assert lines["Type"] == "notify"
    assert lines["KillMode"] == "mixed"  # SIGTERM to the agent alone: it drains
    assert lines["KillSignal"] == "SIGTERM"
    assert lines["TimeoutStartSec"] == "infinity"  # waiting for the store is no failure
    assert lines["User"] == "ninefold"
    assert lines["CapabilityBoundingSet"] == lines["AmbientCapabilities"]
    assert lines["AmbientCapabilities"] == "CAP_NET_ADMIN CAP_NET_RAW"
    assert lines["StandardOutput"] == lines["StandardError"] == "journal"
    assert lines["WorkingDirectory"] == str(tmp_path)


def test_the_unit_wants_absolute_paths() -> None:
    with pytest.raises(ValueError, match="absolute"):
        render_unit(parse_spec(PLAIN), "n1", Path("spec.yaml"), Path("/d"), "/usr/bin/python3")


@pytest.mark.process
def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    verify = "/usr/bin/systemd-analyze"
    if not os.access(verify, os.X_OK):
        pytest.skip("systemd-analyze is not installed")
    for text in (PLAIN, WITH_VIP, LOW_PORT):
        unit = tmp_path / "ninefold-n1.service"
        (tmp_path / "spec.yaml").write_text(text)
        unit.write_text(
            render_unit(parse_spec(text), "n1", tmp_path / "spec.yaml", tmp_path, "/bin/true")
        )
        done = subprocess.run(
            [verify, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        complaints = [line for line in done.stderr.splitlines() if str(unit) in line]
        assert done.returncode == 0 and complaints == [], done.stderr


def test_install_service_writes_the_unit(tmp_path: Path) -> None:
    spec = tmp_path / "ninefold.yaml"
    spec.write_text(WITH_VIP)
    unit = tmp_path / "units" / "ninefold-n1.service"
    result = CliRunner().invoke(
        app,
        ["install-service", "--spec", str(spec), "--node", "n1", "--data-dir", "/srv/nf",
         "--output", str(unit)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {unit} (node n1, data /srv/nf, capabilities: CAP_NET_ADMIN, CAP_NET_RAW)" in (
        result.output
    )
    assert "systemctl daemon-reload && systemctl enable --now ninefold-n1.service" in result.output
    assert "--data-dir /srv/nf" in unit_lines(unit.read_text())["ExecStart"]


def test_install_service_to_stdout(tmp_path: Path) -> None:
    spec = tmp_path / "ninefold.yaml"
    spec.write_text(PLAIN)
    result = CliRunner().invoke(
        app, ["install-service", "--spec", str(spec), "--node", "n2", "-o", "-"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# Written by `ninefold install-service`")
    assert "--node n2" in unit_lines(result.output)["ExecStart"]


def test_install_service_errors_are_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "ninefold.yaml"
    spec.write_text(PLAIN)
    runner = CliRunner()
    unknown = runner.invoke(app, ["install-service", "--spec", str(spec), "--node", "n9"])
    assert unknown.exit_code == 2
    assert f"{spec}: no node named 'n9' (nodes: n1, n2)" in unknown.output
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = runner.invoke(
        app,
        ["install-service", "--spec", str(spec), "--node", "n1", "-o", str(blocked / "x.service")],
    )
    assert unwritable.exit_code == 1
    assert f"cannot write {blocked / 'x.service'}" in unwritable.output
    assert "Traceback" not in unwritable.output


def test_install_service_start_without_systemd_says_how_to_start_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ninefold.cli import service

    monkeypatch.setattr(service, "systemd_runs", lambda: False)
    spec = tmp_path / "ninefold.yaml"
    spec.write_text(PLAIN)
    result = CliRunner().invoke(
        app,
        ["install-service", "--spec", str(spec), "--node", "n1", "--start",
         "-o", str(tmp_path / "n1.service")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "systemd does not run this machine; start the agent with: " in result.output
    assert "-m ninefold agent --spec" in result.output


def test_the_notifier_speaks_sd_notify(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = ServiceNotifier(path)
        notifier.status("waiting for the store")
        notifier.ready("serving")
        notifier.stopping("draining")
        got = [sock.recv(4096).decode() for _ in range(3)]
    assert got[0] == "STATUS=waiting for the store"
    assert got[1] == f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}"
    assert got[2] == "STOPPING=1\nSTATUS=draining"


def test_the_notifier_reaches_an_abstract_socket() -> None:
    name = f"ninefold-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert ServiceNotifier("@" + name).send(ready=1)
        assert sock.recv(100) == b"READY=1"


def test_without_a_service_manager_the_notifier_does_nothing(tmp_path: Path) -> None:
    assert not ServiceNotifier("").enabled
    assert ServiceNotifier("").send(ready=1) is False
    assert not ServiceNotifier("relative/path").enabled
    # A socket that went away is a warning, never an error for the agent.
    assert ServiceNotifier(str(tmp_path / "gone.sock")).send(ready=1) is False


def test_the_agents_children_do_not_inherit_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = ServiceNotifier()
    assert notifier.address == path
    assert "NOTIFY_SOCKET" not in os.environ  # etcd would say READY=1 for the agent


@pytest.mark.process
def test_install_service_start_says_what_systemctl_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ninefold.cli import service

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text('#!/bin/sh\necho "Failed to $1: Access denied" >&2\nexit 1\n')
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(service, "systemd_runs", lambda: True)
    spec = tmp_path / "ninefold.yaml"
    spec.write_text(PLAIN)
    result = CliRunner().invoke(
        app,
        ["install-service", "--spec", str(spec), "--node", "n1", "--start",
         "-o", str(tmp_path / "n1.service")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "systemctl daemon-reload: Failed to daemon-reload: Access denied" in result.output
    assert "Traceback" not in result.output
