"""`ninefold join`: a TLS cluster of one node grows to three with a join token,
and every refusal (used up, expired, forged, another CA) is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ninefold.security.ca import create_ca, write_ca
from ninefold.security.certs import issue_node_files
from ninefold.spec import load_spec
from tests.cluster.harness import LocalCluster, until
from tests.cluster.test_mtls import TlsCluster
from tests.tls_probes import plain_refused, tls_refused

SERVICES = """\
services:
  web:
    command: [python3, -m, http.server, "{port}", --bind, "{address}"]
    replicas: 1
    placement: {spread: none}
"""
EXIT_USAGE, EXIT_DENIED = 2, 4


def join_command(cluster: LocalCluster, token: str, ca_hash: str, node: str) -> list[str]:
    """`ninefold join` of node nN at 127.0.0.N through n1's API."""
    number = node.removeprefix("n")
    return [
        sys.executable, "-m", "ninefold", "join", f"127.0.0.1:{cluster.base + 2}",
        "--token", token, "--ca-hash", ca_hash, "--name", node,
        "--address", f"127.0.0.{number}", "--data-dir", str(cluster.data_dir(node)),
    ]  # fmt: skip


def join(
    cluster: LocalCluster, token: str, ca_hash: str, node: str
) -> subprocess.CompletedProcess[str]:
    command = join_command(cluster, token, ca_hash, node)
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


def new_join_token(cluster: LocalCluster, *args: str) -> tuple[str, str]:
    made = cluster.cli("token", "create", "--join", *args)
    assert made.returncode == 0, made.stderr
    hint = made.stderr.split("--ca-hash ", 1)[1].split()[0]
    return made.stdout.strip(), hint


def test_a_cluster_grows_by_join_tokens(
    local_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    joined_agents: list[Path],
) -> None:
    cluster = local_cluster(SERVICES, nodes=1)
    cluster.__class__ = TlsCluster
    cluster.write_spec(SERVICES)
    ca = create_ca(cluster.name)
    key = cluster.root / "ca" / "ca.key"
    write_ca(ca, key, cluster.root / "ca" / "ca.crt")
    spec = load_spec(cluster.spec_path)
    issue_node_files(ca, spec.nodes[0], cluster.data_dir("n1"))
    monkeypatch.setenv("NINEFOLD_CA_KEY", str(key))  # n1's agent signs the joins
    cluster.start_all()
    until("n1 up", lambda: cluster.status()["nodes"][0]["state"] == "up", 60)

    token, ca_hash = new_join_token(cluster, "--uses", "2", "--ttl", "10m")
    assert ca_hash.startswith("sha256:")

    wrong = join(cluster, token, "sha256:" + "0" * 64, "n2")
    assert wrong.returncode == EXIT_USAGE, wrong.stderr
    assert "is not the one --ca-hash names" in wrong.stderr and "Traceback" not in wrong.stderr

    forged = join(cluster, token[:-3] + "abc", ca_hash, "n2")
    assert forged.returncode == EXIT_DENIED and "unknown or revoked" in forged.stderr

    # A data dir that cannot be written is found before the cluster spends a
    # use of the token (the two joins below take both uses).
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    nowhere = subprocess.run(
        [
            sys.executable, "-m", "ninefold", "join", f"127.0.0.1:{cluster.base + 2}",
            "--token", token, "--ca-hash", ca_hash, "--name", "n2",
            "--address", "127.0.0.2", "--data-dir", str(blocked / "n2"),
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert nowhere.returncode == EXIT_USAGE and "cannot write" in nowhere.stderr

    for node in ("n2", "n3"):
        joined_agents.append(cluster.data_dir(node))
        done = join(cluster, token, ca_hash, node)
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"agent {node} up" in done.stdout

    used_up = join(cluster, token, ca_hash, "n4")
    assert used_up.returncode == EXIT_DENIED and "used up" in used_up.stderr
    assert token not in used_up.stderr

    short, _ = new_join_token(cluster, "--ttl", "1s")
    listing = json.loads(cluster.cli("token", "list", "-o", "json").stdout)
    expires = max(t["expires"] for t in listing if t["id"] == short.split(".")[1])
    until("the short token to expire", lambda: time.time() > expires + 0.1, 10)
    expired = join(cluster, short, ca_hash, "n4")
    assert expired.returncode == EXIT_DENIED and "expired" in expired.stderr

    def three_up() -> bool:
        nodes = cluster.status()["nodes"]
        return sorted(n["name"] for n in nodes if n["state"] == "up") == ["n1", "n2", "n3"]

    until("n1, n2 and n3 up", three_up, 60)
    scaled = cluster.cli("scale", "web", "3")
    assert scaled.returncode == 0, scaled.stderr
    until("web on all three nodes", lambda: len(cluster.serving("web")) == 3, 60)

    # The joined nodes' APIs speak TLS with certificates of the cluster's CA only.
    other = issue_node_files(create_ca("other"), spec.nodes[0], tmp_path / "stranger")
    ca_file = cluster.root / "ca" / "ca.crt"
    for number in ("2", "3"):
        host, port = f"127.0.0.{number}", cluster.base + 2
        assert plain_refused(host, port)
        assert tls_refused(host, port, ca_file, other.cert, other.key)
