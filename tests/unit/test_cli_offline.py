"""The CLI and its API client without a cluster: bad specs, usage errors, an
unreachable cluster, `init`, and how API answers become exceptions and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ninefold.cli.console import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from ninefold.cli.inspect import new_lines
from ninefold.cli.main import app
from ninefold.client import (
    ApiError,
    ClusterClient,
    Conflict,
    Invalid,
    NotFound,
    StoreUnavailable,
    Unreachable,
)
from ninefold.local import LocalCluster, NotLocal
from ninefold.spec import load_spec, parse_spec
from tests.helpers import free_ports

runner = CliRunner()


def spec_text(ports: list[int], address: str = "127.0.0.{i}") -> str:
    """Three nodes whose API listens on `ports` (one each)."""
    lines = ["cluster: offline", "store: {mode: external, endpoints: ['127.0.0.1:2379']}"]
    lines.append("nodes:")
    for i, port in enumerate(ports, 1):
        addr = address.format(i=i)
        ports_yaml = f"{{api: {port}, gateway_http: {18080 + i}}}"
        lines.append(f"  - {{name: n{i}, address: {addr}, ports: {ports_yaml}}}")
    lines.append("services:")
    lines.append("  web: {command: [sleep, '1000']}")
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


# --- the command line ------------------------------------------------------------------


def test_bad_spec_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: x\nnodes:\n  - {name: n1, address: 127.0.0.1, colour: red}\n")
    result = runner.invoke(app, ["status", "--spec", str(bad)])
    assert result.exit_code == EXIT_USAGE
    assert one_line(result.stderr).startswith(f"{bad}:3 nodes[0].colour: unknown key")
    assert result.stdout == ""


def test_missing_default_spec_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NINEFOLD_SPEC", raising=False)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == EXIT_USAGE
    assert "ninefold.yaml: file not found" in one_line(result.stderr)
    assert "ninefold init" in result.stderr


def test_unknown_command_and_bad_option_are_usage_errors() -> None:
    assert runner.invoke(app, ["frobnicate"]).exit_code == EXIT_USAGE
    assert runner.invoke(app, ["scale", "web", "0"]).exit_code == EXIT_USAGE
    assert runner.invoke(app, ["status", "-o", "yaml"]).exit_code == EXIT_USAGE


@pytest.mark.process
def test_unreachable_cluster_exits_3_in_one_line(tmp_path: Path) -> None:
    """Through the real binary: no agent listens on the spec's API ports."""
    ports = free_ports(3)
    path = tmp_path / "c.yaml"
    path.write_text(spec_text(ports, address="127.0.0.1"))
    env = dict(os.environ, NINEFOLD_SPEC=str(path), COLUMNS="200")
    for args in (["status"], ["scale", "web", "2"], ["kv", "get", "k"], ["logs", "web"]):
        result = subprocess.run(
            [sys.executable, "-m", "ninefold", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert result.returncode == EXIT_UNREACHABLE, (args, result.stderr)
        line = one_line(result.stderr)
        assert "cluster offline unreachable" in line
        assert all(f"127.0.0.1:{p}" in line for p in ports)
        assert "Traceback" not in result.stderr


def test_init_writes_a_valid_spec_and_keeps_an_existing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NINEFOLD_CONFIG_ROOT", str(tmp_path / "config"))  # the CA goes there
    path = tmp_path / "ninefold.yaml"
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == 0, result.output
    spec = load_spec(path)
    assert [n.address for n in spec.nodes] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    web = spec.services["web"]
    assert web.replicas >= 2 and web.route is not None and web.check is not None
    assert "#" in path.read_text()  # commented

    path.write_text("mine\n")
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == EXIT_FAILED
    assert "--force" in one_line(result.stderr)
    assert path.read_text() == "mine\n"
    assert runner.invoke(app, ["init", str(path), "--force"]).exit_code == 0
    load_spec(path)


def test_init_with_one_node_for_others_to_join(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    result = runner.invoke(app, ["init", str(path), "--node", "db1=10.0.0.5", "--no-tls"])
    assert result.exit_code == 0, result.output
    spec = load_spec(path)
    assert [(n.name, n.address, n.store) for n in spec.nodes] == [("db1", "10.0.0.5", True)]
    assert spec.services["web"].replicas == 1  # two would need two nodes
    assert "ninefold token create --join" in path.read_text()

    for bad in ("db1", "=10.0.0.5", "db1="):
        result = runner.invoke(app, ["init", str(tmp_path / "x.yaml"), "--node", bad, "--no-tls"])
        assert result.exit_code == EXIT_USAGE, bad
        assert "NAME=ADDRESS" in one_line(result.stderr)
    result = runner.invoke(app, ["init", str(tmp_path / "x.yaml"), "--node", "db1=10.0.0.300"])
    assert result.exit_code == EXIT_USAGE
    assert "x.yaml" in one_line(result.stderr) and not (tmp_path / "x.yaml").exists()


def test_up_refuses_non_loopback_nodes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(spec_text([7070, 7070, 7070], address="10.9.8.{i}"))
    with pytest.raises(NotLocal, match=r"n1 has address 10\.9\.8\.1"):
        LocalCluster(path, tmp_path / "root").up(wait=0)
    result = runner.invoke(app, ["up", "--spec", str(path)], env={"NINEFOLD_DATA_ROOT": "x"})
    assert result.exit_code == EXIT_USAGE
    assert "not a loopback address" in one_line(result.stderr)
    assert not (tmp_path / "root").exists()


def test_down_with_nothing_running(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(spec_text([7070, 7070, 7070]))
    result = runner.invoke(
        app, ["down", "--spec", str(path)], env={"NINEFOLD_DATA_ROOT": str(tmp_path)}
    )
    assert result.exit_code == 0
    assert "no agent of cluster offline is running" in result.stdout


# --- the client: API answers -> typed errors -> exit codes ----------------------------------


def error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


def client_with(handler: Any) -> ClusterClient:
    spec = parse_spec(spec_text([7001, 7002, 7003]))
    return ClusterClient(spec, transport=httpx.MockTransport(handler))


def test_client_tries_the_next_node_and_remembers_it() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.url.host}:{request.url.port}")
        if request.url.port == 7001:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"node": "n2", "store": "ok", "version": "0"})

    client = client_with(handler)
    assert client.health()["node"] == "n2"
    assert client.health()["node"] == "n2"
    assert asked == ["127.0.0.1:7001", "127.0.0.2:7002", "127.0.0.2:7002"]
    assert client.url == "http://127.0.0.2:7002"


def test_client_unreachable_names_every_address() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Unreachable) as caught:
        client_with(handler).status()
    assert "127.0.0.1:7001, 127.0.0.2:7002, 127.0.0.3:7003" in caught.value.message


def test_client_store_unavailable_everywhere() -> None:
    asked: list[int | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.port)
        return error(503, "store_unavailable", "the store has no quorum")

    with pytest.raises(StoreUnavailable, match="no quorum"):
        client_with(handler).scale("web", 2)
    assert asked == [7001, 7002, 7003]


@pytest.mark.parametrize(
    ("status", "code", "kind", "exit_code"),
    [
        (404, "not_found", NotFound, EXIT_USAGE),
        (409, "conflict", Conflict, EXIT_FAILED),
        (422, "invalid", Invalid, EXIT_USAGE),
        (500, "internal", ApiError, EXIT_FAILED),
    ],
)
def test_client_maps_errors(status: int, code: str, kind: type, exit_code: int) -> None:
    from ninefold.cli.console import exit_code as exit_of

    def handler(request: httpx.Request) -> httpx.Response:
        return error(status, code, f"it said {code}")

    with pytest.raises(kind) as caught:
        client_with(handler).drain("n1")
    assert caught.value.message == f"it said {code}"
    assert exit_of(caught.value) == exit_code


def test_client_invalid_spec_carries_issues_and_cli_prints_them(tmp_path: Path) -> None:
    issues = ["<spec>:4 services.web.replicas: must be at least 1, got 0"]
    client = client_with(lambda request: error(422, "invalid", "invalid spec", issues=issues))
    with pytest.raises(Invalid) as caught:
        client.put_spec("cluster: x", dry_run=True)
    assert caught.value.issues == issues


def test_client_request_paths_and_bodies() -> None:
    seen: list[tuple[str, str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, request.url.query.decode(), body))
        return httpx.Response(200, json={"ok": True})

    client = client_with(handler)
    client.kv_put("app/config", "v", cas=0)
    client.kv_delete("app/config", cas=7)
    client.kv_list("app/")
    client.switchover("queue")
    client.switchover("queue", "n2")
    client.move("web-1", "n3")
    client.put_spec("cluster: x\n", dry_run=True)
    assert seen == [
        ("PUT", "/v1/kv/app/config", "cas=0", {"value": "v"}),
        ("DELETE", "/v1/kv/app/config", "cas=7", None),
        ("GET", "/v1/kv", "prefix=app%2F", None),
        ("POST", "/v1/services/queue/switchover", "", {}),
        ("POST", "/v1/services/queue/switchover", "", {"to": "n2"}),
        ("POST", "/v1/instances/web-1/move", "", {"node": "n3"}),
        ("PUT", "/v1/spec", "dry_run=true", {"yaml": "cluster: x\n"}),
    ]


def test_a_route_the_agent_lacks_is_not_an_unknown_name() -> None:
    client = client_with(lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(ApiError) as caught:
        client.services()
    assert not isinstance(caught.value, NotFound)
    assert "does not serve GET /v1/services" in caught.value.message


def test_events_stream_parses_server_sent_events() -> None:
    body = (
        ": ping\n\n"
        'data: {"time": 1.0, "kind": "placed", "subject": "web-0"}\n\n'
        'data: {"time": 2.0, "kind": "started", "subject": "web-0"}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    stream = client_with(handler).stream_events()
    assert [next(stream)["kind"], next(stream)["kind"]] == ["placed", "started"]


# --- logs -f: which lines are new --------------------------------------------------------


def test_new_lines_after_a_tail() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert new_lines(["b"], ["x", "a", "b", "c", "d"]) == ["c", "d"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d"]) == ["d"]  # the window slid
    assert new_lines(["old"], ["new1", "new2"]) == ["new1", "new2"]  # rotated
