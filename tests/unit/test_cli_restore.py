"""`ninefold restore` without a cluster: the usage errors of both kinds of
restore are one line and exit 2, a dry run of a cluster restore says where
each node would go, something listening on a node's API port stops a
cluster restore, and a repository without a cluster snapshot is one line
(exit 1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ninefold.cli.main import app
from tests.helpers import free_ports

runner = CliRunner()


def spec(tmp_path: Path, ports: list[int]) -> Path:
    (tmp_path / "pw").write_text("pw\n")
    nodes = "\n".join(
        f"  - {{name: n{i}, address: 127.0.0.1, store: true, ports: {{api: {port}, "
        f"store_client: {port + 1}, store_peer: {port + 2}, gateway_http: {port + 3}}}}}"
        for i, port in enumerate(ports, 1)
    )
    path = tmp_path / "spec.yaml"
    path.write_text(f"""\
cluster: gone
nodes:
{nodes}
services:
  web:
    command: [sleep, "1000"]
    volumes: {{data: {{backup: {{repository: local, every: 1h, keep: {{last: 2}}}}}}}}
backups:
  repositories:
    local: {{url: "{tmp_path / "repo"}", password_file: "{tmp_path / "pw"}"}}
""")
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    return spec(tmp_path, [p * 10 for p in (3011, 3012, 3013)])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["restore", "cluster"], "--from REPOSITORY"),
        (["restore", "cluster", "--from", "nowhere"], "no repository named 'nowhere'"),
        (["restore", "cluster", "--from", "local", "--node", "n9"], "no node named 'n9'"),
        (["restore", "web/data"], "--snapshot ID"),
        (["restore", "web", "--snapshot", "latest"], "SERVICE/VOLUME"),
        (["restore", "web/data", "--snapshot", "latest"], "--to-service or --target"),
    ],
)
def test_usage_errors_are_one_line(spec_path: Path, args: list[str], said: str) -> None:
    code, _, err = run(*args, "--spec", str(spec_path))
    assert code == 2 and said in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_dry_run_says_where_each_node_goes(spec_path: Path, tmp_path: Path) -> None:
    code, out, err = run(
        "restore", "cluster", "--from", "local", "--dry-run", "--spec", str(spec_path),
        "--data-root", str(tmp_path / "data"), "--node", "n2",
    )  # fmt: skip
    assert code == 0, err
    assert f"would restore n2 into {tmp_path / 'data' / 'n2'}" in out and "n1" not in out


def test_something_on_an_api_port_stops_a_cluster_restore(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    path = spec(tmp_path, [port, port + 10, port + 20])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        code, _, err = run("restore", "cluster", "--from", "local", "--spec", str(path))
    assert code == 1 and "a cluster answers at n1" in err and "--force" in err, err


@pytest.mark.process
def test_a_repository_without_a_cluster_snapshot_is_one_line(
    spec_path: Path, tmp_path: Path
) -> None:
    import subprocess

    subprocess.run(["restic", "init", "-r", str(tmp_path / "repo"), "--password-file",
                    str(tmp_path / "pw")], check=True, capture_output=True)  # fmt: skip
    code, _, err = run(
        "restore", "cluster", "--from", "local", "--spec", str(spec_path),
        "--data-root", str(tmp_path / "data"),
    )  # fmt: skip
    assert code == 1 and "no cluster snapshot 'latest' of gone in local" in err, err
    assert len(err.strip().splitlines()) == 1
