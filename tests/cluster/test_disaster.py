"""Disaster recovery: a 3-node TLS cluster with tokens is backed up (spec,
KV, tokens, CA and its key in a separate repository, a replicated volume),
then every node's processes and data directories, and the CA's directory,
are destroyed. `ninefold restore cluster --from local --start` rebuilds it
into other data directories on other addresses (127.0.0.21-23): the service runs with its data, the
old API token works, the old CA signed the new nodes' certificates, and the
KV keys are there. The time from the restore command to the service serving
is printed (RTO)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ninefold.security.certs import load_cert
from ninefold.security.files import NodeTlsFiles
from tests.cluster.harness import LocalCluster, free_base_port, until
from tests.cluster.test_mtls import TlsCluster

pytestmark = pytest.mark.cluster


def spec(shared: Path) -> str:
    return f"""
services:
  notes:
    command: [python3, -m, http.server, "{{port}}", --bind, "{{address}}",
              --directory, "{{volume.data}}"]
    replicas: 2
    volumes:
      data:
        replicate: continuous
        backup: {{repository: local, every: 1h, keep: {{last: 5}}}}
backups:
  repositories:
    local: {{url: "{shared / "repo"}", password_file: "{shared / "pw"}"}}
    vault: {{url: "{shared / "vault"}", password_file: "{shared / "vault-pw"}"}}
  cluster: {{repository: local, every: 1h, keep: {{last: 5}}, ca_key: vault}}
"""


def make(root: Path, services: str, first_address: int = 1) -> LocalCluster:
    """A TLS cluster of 3 nodes on 127.0.0.<first_address>... (new machines
    get other addresses)."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(root, services)
    cluster.__class__ = TlsCluster
    cluster.addresses = {f"n{i + 1}": f"127.0.0.{first_address + i}" for i in range(3)}
    cluster.base = free_base_port(list(cluster.addresses.values()), span=8)
    cluster.tcp_port, cluster.mesh_port = cluster.base + 5, cluster.base + 6
    cluster.volume_port = cluster.base + 7
    cluster.write_spec(services)
    return cluster


def test_a_destroyed_cluster_is_restored_from_its_backup_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ninefold.security.ca import create_ca, write_ca
    from ninefold.security.certs import issue_node_files
    from ninefold.spec import load_spec

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "pw").write_text("repository password\n")
    (shared / "vault-pw").write_text("another password for the CA key\n")
    services = spec(shared)
    old = make(tmp_path / "old", services)
    new: LocalCluster | None = None
    agents: list[int] = []  # started by `restore cluster --start`
    try:
        ca = create_ca(old.name)
        write_ca(ca, old.root / "ca" / "ca.key", old.root / "ca" / "ca.crt")
        old_ca = x509.load_pem_x509_certificate((old.root / "ca" / "ca.crt").read_bytes())
        for node in load_spec(old.spec_path).nodes:
            issue_node_files(ca, node, old.data_dir(node.name))
        old.start_all()
        until("notes served twice", lambda: len(old.serving("notes")) == 2, 90)
        made = old.cli("token", "bootstrap")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        monkeypatch.setenv("NINEFOLD_TOKEN", token)
        source = next(i["node"] for i in old.status()["instances"] if i["instance"] == "notes-0")
        volume = old.data_dir(source) / "volumes" / "notes" / "data"
        for i in range(20):
            (volume / f"note-{i}").write_text(f"note {i}\n")
        assert old.cli("kv", "put", "app/config", "kept").returncode == 0
        backed = old.cli("backup", "run", "--wait", "120", timeout=130)
        assert backed.returncode == 0, backed.stdout + backed.stderr

        # the disaster: every process, every data directory, the CA's directory
        old.stop_all()
        shutil.rmtree(old.root / "data")
        shutil.rmtree(old.root / "ca")

        new = make(tmp_path / "new", services, first_address=21)
        started = time.monotonic()
        restored = new.cli(
            "restore", "cluster", "--from", "local", "--ca-key-from", "vault", "--start",
            "--data-root", str(new.root / "data"), "--spec", str(new.spec_path), timeout=180,
        )  # fmt: skip
        agents += [int(pid) for pid in re.findall(r"\(pid (\d+),", restored.stdout)]
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "restored from snapshot" in restored.stdout and len(agents) == 3, restored.stdout
        restore_s = time.monotonic() - started
        until("notes served twice after the restore", lambda: len(new.serving("notes")) == 2, 120)
        rto = time.monotonic() - started
        print(f"RTO: {rto:.1f}s from `restore cluster` to the service serving "
              f"(restore {restore_s:.1f}s)")  # fmt: skip

        # the data, the token (the CLI uses it), the KV, the CA
        for instance in new.status()["instances"]:
            copy = new.data_dir(instance["node"]) / "volumes" / "notes" / "data"
            assert sorted(p.name for p in copy.iterdir()) == sorted(f"note-{i}" for i in range(20))
            assert (copy / "note-7").read_text() == "note 7\n"
        got = new.cli("kv", "get", "app/config", "-o", "json")
        assert got.returncode == 0 and json.loads(got.stdout)["value"] == "kept", got
        for node in load_spec(new.spec_path).nodes:
            cert = load_cert(NodeTlsFiles.of_data_dir(new.data_dir(node.name)).cert)
            cert.verify_directly_issued_by(old_ca)
        assert (new.root / "ca" / "ca.crt").read_bytes() == old_ca.public_bytes(Encoding.PEM)

        again = new.cli(
            "restore", "cluster", "--from", "local", "--data-root", str(tmp_path / "elsewhere"),
            "--spec", str(new.spec_path),
        )  # fmt: skip
        assert again.returncode == 1 and "a cluster answers" in again.stderr, again.stderr
    finally:
        old.stop_all()
        if new is not None:
            new.stop_all()
        stop(agents)


def stop(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        for child in proc.children(recursive=True):
            child.kill()
        proc.kill()
