"""`ninefold node quarantine` on a 3-node cluster with mutual TLS (Hydra's
S5 for a node in no pool): the node's certificate is refused by every other
node's API and etcd ports from then on, while theirs still pass; its
instances move away; its store member is removed (quorum allows it); the
store keeps working; a second quarantine, an unknown node and a missing
--yes are refused with one line."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ninefold.security.ca import create_ca, write_ca
from ninefold.security.certs import issue_node_files, load_cert
from ninefold.security.files import NodeTlsFiles
from ninefold.security.revocation import revoked_serials
from ninefold.spec import load_spec
from ninefold.store.etcd import TlsFiles
from tests.cluster.harness import LocalCluster, until
from tests.cluster.test_mtls import SERVICES, TlsCluster, store_refuses
from tests.tls_probes import tls_refused


async def test_a_quarantined_node_is_refused_everywhere_and_loses_its_work(
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
    files = {n.name: NodeTlsFiles.of_data_dir(cluster.data_dir(n.name)) for n in spec.nodes}
    cluster.start_all()
    until("every node up", lambda: all(n["state"] == "up" for n in cluster.status()["nodes"]), 60)
    until("web served twice", lambda: len(cluster.serving("web")) == 2, 60)
    name = max(cluster.serving("web").values())  # a node with work to lose
    others = [n for n in spec.nodes if n.name != name]

    refused = cluster.cli("node", "quarantine", name)  # no terminal to ask on
    assert refused.returncode == 2 and "pass --yes" in refused.stderr

    victim = files[name]
    serial = load_cert(victim.cert).serial_number
    result = cluster.cli("node", "quarantine", name, "--yes", "--reason", "drill")
    assert result.returncode == 0, result.stderr
    assert f"{serial:x}" in result.stdout and "power it off yourself" in result.stdout

    def revokes(crl: Path) -> Callable[[], bool]:
        return lambda: crl.is_file() and serial in revoked_serials(crl.read_bytes())

    for other in others:
        until(f"{other.name} to hold the revocation list", revokes(files[other.name].crl), 20)
    good = files[others[0].name]
    for node in others:
        for kind in ("api", "store_client", "store_peer"):
            host, port = node.address, getattr(node.ports, kind)
            where = f"{node.name} {kind}"
            until(
                f"{where} to refuse {name}'s certificate",
                partial(tls_refused, host, port, good.ca, victim.cert, victim.key),
                10,
            )
            assert not tls_refused(host, port, good.ca, good.cert, good.key), where
    endpoint = next(e for e in spec.store_endpoints() if others[0].address in e)
    assert await store_refuses(endpoint, TlsFiles(victim.ca, victim.cert, victim.key))
    assert not await store_refuses(endpoint, TlsFiles(good.ca, good.cert, good.key))

    def removed() -> bool:
        return any(
            e["kind"] == "store-member-removed" and e["subject"] == name for e in cluster.events()
        )

    until(f"{name}'s store member removed", removed, 60)
    until(f"web served off {name}", lambda: (
        len(cluster.serving("web")) == 2 and name not in cluster.serving("web").values()
    ), 60)  # fmt: skip
    put = cluster.cli("kv", "put", "after/quarantine", "yes")
    assert put.returncode == 0, put.stderr
    events = cluster.events()
    assert any(e["kind"] == "node-quarantined" and e["subject"] == name for e in events)

    undrained = cluster.cli("undrain", name)
    assert undrained.returncode == 1 and "quarantined" in undrained.stderr, undrained.stderr
    again = cluster.cli("node", "quarantine", name, "--yes")
    assert again.returncode == 1 and "quarantined already" in again.stderr, again.stderr
    unknown = cluster.cli("node", "quarantine", "n9", "--yes")
    assert unknown.returncode == 2 and "no node named 'n9'" in unknown.stderr, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
