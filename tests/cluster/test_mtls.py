"""A 3-node cluster with mutual TLS: it works, every API and etcd port refuses
plain text, a certificate from another CA, an expired one (and, on etcd's
ports, none), and certificates rotate under load without a failed request."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from ninefold.client import ApiError, ClusterClient
from ninefold.security.ca import create_ca, write_ca
from ninefold.security.certs import issue_node_files, load_cert
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import load_spec
from ninefold.store.base import StoreError
from ninefold.store.etcd import EtcdStore, TlsFiles
from tests.cluster.harness import LocalCluster, until
from tests.tls_probes import plain_refused, served_cert, tls_refused

SERVICES = """\
services:
  web:
    command: [python3, -m, http.server, "{port}", --bind, "{address}"]
    replicas: 2
    route: {http: /web}
    check: {http: /, interval: 500ms, fall: 3, rise: 2}
"""


class TlsCluster(LocalCluster):
    """The harness's cluster with `security.tls` and a CA in root/ca."""

    def spec_text(self, services_yaml: str) -> str:
        ca = self.root / "ca" / "ca.crt"
        tls = f'security:\n  tls: {{ca: "{ca}"}}\ngateway:\n  tls: {{port: {self.base + 4}}}\n'
        return super().spec_text(services_yaml) + tls


def serves(host: str, port: int, files: NodeTlsFiles, der: bytes) -> Callable[[], bool]:
    return lambda: served_cert(host, port, files.ca, files.cert, files.key) == der


async def store_refuses(endpoint: str, tls: TlsFiles | None) -> bool:
    store = EtcdStore([endpoint], "/probe/", timeout=2.0, tls=tls)
    try:
        await store.get("x")
    except StoreError:
        return True
    finally:
        await store.close()
    return False


async def test_tls_cluster_refuses_strangers_and_rotates(
    local_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = local_cluster(SERVICES)
    cluster.__class__ = TlsCluster
    cluster.write_spec(SERVICES)
    ca = create_ca(cluster.name)
    write_ca(ca, tmp_path / "ca" / "ca.key", tmp_path / "ca" / "ca.crt")
    spec = load_spec(cluster.spec_path)
    for node in spec.nodes:
        issue_node_files(ca, node, cluster.data_dir(node.name))
    # Strangers: a CA of their own, and an expired certificate from the right one.
    other = issue_node_files(create_ca("other"), spec.nodes[0], tmp_path / "stranger")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = issue_node_files(
        ca, spec.nodes[0], tmp_path / "expired", dt.timedelta(days=1), now=past
    )
    good = NodeTlsFiles.of_data_dir(cluster.data_dir("n1"))
    ca_file = tmp_path / "ca" / "ca.crt"

    cluster.start_all()
    until("every node up", lambda: all(n["state"] == "up" for n in cluster.status()["nodes"]), 60)
    until("web served twice", lambda: len(cluster.serving("web")) == 2, 60)
    result = cluster.cli("status")
    assert result.returncode == 0 and "web" in result.stdout, result.stderr

    # Scan every port of every node the spec names.
    ports: list[tuple[str, str, int]] = []
    for node in spec.nodes:
        for kind in ("api", "store_client", "store_peer"):
            ports.append((kind, node.address, getattr(node.ports, kind)))
    assert len(ports) == 9
    for kind, host, port in ports:
        where = f"{kind} {host}:{port}"
        assert plain_refused(host, port), f"{where} answered plain text"
        assert tls_refused(host, port, ca_file, other.cert, other.key), f"{where}: other CA"
        assert tls_refused(host, port, ca_file, expired.cert, expired.key), f"{where}: expired"
        if kind != "api":  # the API lets a client without a certificate reach its tokens
            assert tls_refused(host, port, ca_file), f"{where} took a client without a cert"
        assert not tls_refused(host, port, ca_file, good.cert, good.key), f"{where}: good cert"

    # The gateways terminate TLS with their node's certificate from the cluster CA.
    for node in spec.nodes:
        https = ssl.create_default_context(cafile=str(ca_file))
        url = f"https://{node.address}:{cluster.base + 4}/web/"
        async with httpx.AsyncClient(verify=https, timeout=5) as client:
            assert (await client.get(url)).status_code == 200
        assert plain_refused(node.address, cluster.base + 4)

    # etcd's gRPC client port through the real store client.
    endpoint = spec.store_endpoints()[0]
    assert await store_refuses(endpoint, None)
    assert await store_refuses(endpoint, TlsFiles(ca_file, other.cert, other.key))
    assert await store_refuses(endpoint, TlsFiles(ca_file))
    assert not await store_refuses(endpoint, TlsFiles(good.ca, good.cert, good.key))

    # Rotation under load: a request loop through the CLI's client must not fail.
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        with ClusterClient(load_spec(cluster.spec_path), timeout=5.0) as client:
            while not done.is_set():
                try:
                    client.status()
                    count[0] += 1
                except ApiError as exc:
                    failures.append(exc.message)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        until("some requests", lambda: count[0] > 5, 20)
        old: dict[str, Any] = {}
        for node in spec.nodes:
            old[node.name] = load_cert(NodeTlsFiles.of_data_dir(cluster.data_dir(node.name)).cert)
            result = cluster.cli(
                "cert", "issue", node.name, "--data-dir", str(cluster.data_dir(node.name)),
                "--ca-key", str(tmp_path / "ca" / "ca.key"),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        for node in spec.nodes:
            files = NodeTlsFiles.of_data_dir(cluster.data_dir(node.name))
            new = load_cert(files.cert).public_bytes(serialization.Encoding.DER)
            assert load_cert(files.cert).serial_number != old[node.name].serial_number
            for kind in ("api", "store_client", "store_peer"):
                probe = serves(node.address, getattr(node.ports, kind), files, new)
                until(f"{node.name} {kind} to serve its new certificate", probe, 20)
        before = count[0]
        until("more requests after the rotation", lambda: count[0] > before + 5, 20)
    finally:
        done.set()
        loader.join(timeout=10)
    assert not failures, failures[:3]
    # The agents' store clients use the new certificates too: a write goes through.
    result = cluster.cli("kv", "put", "after/rotation", "yes")
    assert result.returncode == 0, result.stderr
