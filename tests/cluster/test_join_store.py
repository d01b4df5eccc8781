"""A 3-node cluster built the way an operator would: `ninefold init --node` on
the first machine, then `ninefold join --store` on two more. All three end up
voting store members (the store keeps its quorum when the first machine
dies), and every port the nodes listen on refuses plain text and strangers,
found by scanning the processes' sockets rather than by reading the spec."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from ninefold.security.ca import create_ca, load_ca
from ninefold.security.certs import issue_node_files
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import dump_spec, load_spec
from ninefold.store.etcd import EtcdStore, StoreMember, TlsFiles
from tests.cluster.harness import LocalCluster, until
from tests.cluster.test_join import join_command, new_join_token
from tests.tls_probes import plain_refused, tls_refused

PUBLIC = ("gateway_http", "gateway_https")
"""The gateway's own ports: the clients' way in, TLS for anyone (no client
certificate) and plain HTTP only for a redirect to it."""


def cli_on(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ninefold", *args],
        capture_output=True, text=True, timeout=30,
        env=dict(os.environ, NINEFOLD_SPEC=str(spec), COLUMNS="200"),
    )  # fmt: skip


def status_on(spec: Path) -> dict[str, Any]:
    result = cli_on(spec, "status", "-o", "json")
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return json.loads(result.stdout)


def members(files: NodeTlsFiles, endpoints: list[str]) -> list[StoreMember]:
    async def ask() -> list[StoreMember]:
        store = EtcdStore(endpoints, "/", tls=TlsFiles(files.ca, files.cert, files.key))
        try:
            return await store.members()
        finally:
            await store.close()

    return asyncio.run(ask())


def listeners(pids: list[int]) -> dict[tuple[str, int], str]:
    """(address, port) -> process name, for every TCP socket listening in the
    given processes and all their descendants."""
    found: dict[tuple[str, int], str] = {}
    for pid in pids:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        found[(conn.laddr.ip, conn.laddr.port)] = proc.name()
            except psutil.NoSuchProcess:
                continue
    return found


def init_one_node(cluster: LocalCluster) -> Path:
    """`ninefold init --node n1=127.0.0.1`, then the test's free ports in place
    of the defaults (the one edit: tests cannot count on 7070 being free)."""
    key = cluster.root / "ca" / "ca.key"
    made = cluster.cli(
        "init", str(cluster.spec_path), "--force", "--cluster", cluster.name,
        "--node", "n1=127.0.0.1", "--ca-key", str(key),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    spec = load_spec(cluster.spec_path)
    data: dict[str, Any] = spec.model_dump(mode="json")
    data["nodes"][0]["ports"].update(
        store_client=cluster.base,
        store_peer=cluster.base + 1,
        api=cluster.base + 2,
        gateway_http=cluster.base + 3,
    )
    data["gateway"]["tls"] = {"port": cluster.base + 4, "redirect_http": True}
    cluster.spec_path.write_text(dump_spec(type(spec).model_validate(data)))
    return key


def test_init_and_two_joins_make_a_three_member_store(
    local_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    joined_agents: list[Path],
) -> None:
    cluster = local_cluster("services: {}\n", nodes=1)
    key = init_one_node(cluster)
    issued = cluster.cli(
        "cert", "issue", "n1", "--data-dir", str(cluster.data_dir("n1")), "--ca-key", str(key)
    )
    assert issued.returncode == 0, issued.stderr
    cluster.start("n1")
    until("n1 up", lambda: cluster.status()["nodes"][0]["state"] == "up", 60)

    token, ca_hash = new_join_token(cluster, "--uses", "2", "--ttl", "10m")
    for node in ("n2", "n3"):
        joined_agents.append(cluster.data_dir(node))
        done = subprocess.run(
            [*join_command(cluster, token, ca_hash, node), "--store"],
            capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"store member {node} votes" in done.stdout, done.stdout

    files = NodeTlsFiles.of_data_dir(cluster.data_dir("n3"))
    n3_spec = cluster.data_dir("n3") / "spec.yaml"
    spec = load_spec(n3_spec)
    assert [n.name for n in spec.store_nodes()] == ["n1", "n2", "n3"]
    listed = members(files, spec.store_endpoints())
    assert sorted((m.name, m.learner) for m in listed) == [
        ("n1", False),
        ("n2", False),
        ("n3", False),
    ]

    # n1's agent started knowing only its own member; it takes the new ones
    # (its own still first).
    def n1_endpoints() -> list[str] | None:
        marker = "store endpoints now: "
        lines = cluster.log_path("n1").read_text().splitlines()
        said = [line.split(marker, 1)[1] for line in lines if marker in line]
        return said[-1].split(", ") if said else None

    def n1_uses_all() -> bool:
        now = n1_endpoints()
        return bool(now) and now[0] == endpoints[0] and sorted(now) == sorted(endpoints)

    endpoints = spec.store_endpoints()
    until("n1's agent to use all three members", n1_uses_all, 30)

    def three_up() -> bool:
        nodes = status_on(n3_spec)["nodes"]
        return sorted(n["name"] for n in nodes if n["state"] == "up") == ["n1", "n2", "n3"]

    until("n1, n2 and n3 up", three_up, 60)
    scaled = cli_on(n3_spec, "scale", "web", "3")
    assert scaled.returncode == 0, scaled.stderr
    until("web on all three nodes", lambda: len(cluster.serving("web")) == 3, 60)

    # Scan what the three nodes' processes listen on.
    pids = [cluster.procs["n1"].pid]
    pids += [int((cluster.data_dir(n) / "agent.pid").read_text()) for n in ("n2", "n3")]
    found = listeners(pids)
    instance_ports = {port for i in status_on(n3_spec)["instances"] for port in i["ports"].values()}
    ca = load_ca(cluster.root / "ca" / "ca.crt", key)
    other_ca = issue_node_files(create_ca("other"), spec.nodes[0], tmp_path / "stranger")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = issue_node_files(
        ca, spec.nodes[0], tmp_path / "expired", dt.timedelta(days=1), now=past
    )
    ca_file = cluster.root / "ca" / "ca.crt"
    kinds = {
        (node.address, port): kind
        for node in spec.nodes
        for kind, port in [*node.ports.model_dump().items(), ("gateway_https", cluster.base + 4)]
    }
    own = 0
    for (host, port), process in sorted(found.items()):
        where = f"{process} {host}:{port}"
        if port in instance_ports:
            continue  # a service's instance: the service's own business
        kind = kinds.get((host, port))
        assert kind is not None, f"{where} listens on a port the spec does not name"
        if kind == "gateway_http":
            assert _only_redirects(host, port), f"{where} served plain HTTP"
            continue
        assert plain_refused(host, port), f"{where} ({kind}) answered plain text"
        if kind == "gateway_https":
            continue  # public TLS: any client may connect, no client certificate asked
        own += 1
        assert tls_refused(host, port, ca_file, other_ca.cert, other_ca.key), f"{where}: other CA"
        assert tls_refused(host, port, ca_file, expired.cert, expired.key), f"{where}: expired"
        if kind != "api":  # the API lets a client without a certificate reach its tokens
            assert tls_refused(host, port, ca_file), f"{where} took a client without a cert"
    assert own >= 9, f"expected api and both store ports on 3 nodes, scanned {own}: {found}"

    # The store has three voters: it keeps its quorum without the first machine.
    cluster.kill("n1")

    def n1_down() -> bool:
        return {n["name"]: n["state"] for n in status_on(n3_spec)["nodes"]}["n1"] != "up"

    until("n2 and n3 to see n1 down", n1_down, 60)
    wrote = cli_on(n3_spec, "kv", "put", "after/n1", "gone")
    assert wrote.returncode == 0, wrote.stderr


def _only_redirects(host: str, port: int) -> bool:
    answer = httpx.get(f"http://{host}:{port}/web/", timeout=5, follow_redirects=False)
    return answer.status_code in (301, 308) and answer.headers["location"].startswith("https://")
