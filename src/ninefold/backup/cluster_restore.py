"""Rebuilding a lost cluster from its backup, on new machines
(`ninefold restore cluster --from REPO`, docs/backups.md#restoring-a-cluster).

From the cluster's latest snapshot (or the one named): the store's etcd
snapshot, the CA certificate and, from the separately keyed `ca_key`
repository when asked, the CA key. The store is prepared offline: the etcd
snapshot is restored into a one-member etcd started on loopback for the
purpose, which gets the new spec (the new machines' addresses), loses what
belonged to the old machines' lives (leases' keys, locks, runs in progress),
and is snapshotted again; each store member's data directory is made from
that snapshot (`etcdctl snapshot restore`, a new cluster of the spec's store
nodes). Each node gets a certificate from the restored CA, and each backed-up
volume its latest snapshot on the nodes that held a copy. The agents then
start on a store that has the old tokens, KV, events and records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ninefold.backup.restic import Restic
from ninefold.backup.targets import CA_KEY_TARGET, TAG, repository_of
from ninefold.security.ca import CertificateAuthority, ca_key_path, load_ca
from ninefold.security.certs import issue_node_files
from ninefold.spec import ClusterSpec, dump_spec
from ninefold.state.keys import (
    BACKUP_RUNS,
    GATEWAYS,
    NODES,
    RESTORES,
    SPEC_KEY,
    STATUS,
    SWITCHOVER,
    VIP_CANDIDATES,
    last_segment,
    volume_copies,
)
from ninefold.state.records import AssignmentRecord
from ninefold.store.cluster import namespace
from ninefold.store.embedded import url
from ninefold.store.etcd import EtcdStore
from ninefold.store.etcd_binary import find_etcd
from ninefold.volumes.layout import volume_dir

Say = Callable[[str], None]

EPHEMERAL = (
    NODES, STATUS, "locks/", VIP_CANDIDATES, GATEWAYS, SWITCHOVER, BACKUP_RUNS, RESTORES,
)  # fmt: skip
"""What the old machines' lives held: gone with them (a restore in progress
named the old machines, and would hold its service for good)."""
TEMP_STORE_WAIT = 30.0


class RestoreError(Exception):
    """The restore cannot go on; the message is one line."""


@dataclass
class Restored:
    snapshot: str
    taken_at: float | None
    members: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    ca_key: bool = False


def _etcdctl() -> str:
    for name in ("etcdutl", "etcdctl"):
        found = shutil.which(name)
        if found:
            return found
    raise RestoreError(
        "restoring the store needs etcdctl (Debian's etcd-client: apt-get install etcd-client)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _snapshot_restore(db: Path, name: str, cluster: str, peer: str, initial: str, into: Path
                      ) -> None:  # fmt: skip
    """Blocking: one member's data directory from a store snapshot."""
    if into.exists():
        raise RestoreError(f"{into} exists: the store is restored only into new data directories")
    tool = _etcdctl()
    argv = [
        tool, "snapshot", "restore", str(db), "--name", name, "--data-dir", str(into),
        "--initial-cluster", initial, "--initial-cluster-token", f"ninefold-{cluster}",
        "--initial-advertise-peer-urls", peer,
    ]  # fmt: skip
    env = {**os.environ, "ETCDCTL_API": "3"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RestoreError(f"{Path(tool).name} snapshot restore failed: {tail[0]}")


async def restore_cluster(
    spec: ClusterSpec,
    spec_path: Path,
    repository: str,
    data_dirs: dict[str, Path],
    snapshot: str = "latest",
    ca_key_from: str | None = None,
    say: Say = lambda _: None,
) -> Restored:
    """Restore the cluster `spec` describes (its new machines) into `data_dirs`
    (node -> data directory on this machine) from `repository`."""
    if repository not in spec.backups.repositories:
        known = ", ".join(sorted(spec.backups.repositories)) or "none"
        raise RestoreError(
            f"no repository named {repository!r} in the spec (repositories: {known})"
        )
    for name in data_dirs:
        spec.node(name)  # KeyError for a node not in the spec: the caller checked
    restic = Restic(repository_of(spec.backups.repositories[repository]))
    tags = [TAG, f"cluster={spec.cluster}", f"target=cluster/{repository}"]
    found = await restic.snapshots(tags=tags)
    chosen = [s for s in found if snapshot == "latest" or s.id.startswith(snapshot)]
    if not chosen:
        raise RestoreError(
            f"no cluster snapshot {snapshot!r} of {spec.cluster} in {repository}"
            + (f" (latest: {found[-1].short_id})" if found else " (it has none)")
        )
    picked = chosen[-1]
    say(f"cluster snapshot {picked.short_id} of {picked.time:%Y-%m-%d %H:%M:%S}")
    work = Path(tempfile.mkdtemp(prefix="ninefold-restore-"))
    try:
        await restic.restore(picked.id, work / "snapshot")
        files = work / "snapshot"
        try:
            meta = json.loads((files / "meta.json").read_text())
        except (OSError, ValueError):
            raise RestoreError(f"snapshot {picked.short_id} is not a cluster backup "
                               "(no readable meta.json)") from None  # fmt: skip
        if meta.get("cluster") != spec.cluster:
            raise RestoreError(f"the snapshot is of cluster {meta.get('cluster')!r}, "
                               f"not {spec.cluster!r}")  # fmt: skip
        result = Restored(picked.id, meta.get("taken_at"))
        ca = await _restore_ca(spec, spec_path, files, ca_key_from, work, result, say)
        db = await _prepare_store(spec, files / "etcd.db", work, say)
        assignments, copies = db[1], db[2]
        for name, data_dir in sorted(data_dirs.items()):
            node = spec.node(name)
            data_dir.mkdir(parents=True, exist_ok=True)
            if ca is not None:
                await asyncio.to_thread(issue_node_files, ca, node, data_dir)
                result.certificates.append(name)
            if node.store and spec.store.mode == "embedded":
                scheme = "https" if spec.security.tls is not None else "http"
                initial = ",".join(
                    f"{m.name}={url(m.address, m.ports.store_peer, scheme)}"
                    for m in spec.store_nodes()
                )
                peer = url(node.address, node.ports.store_peer, scheme)
                await asyncio.to_thread(
                    _snapshot_restore, db[0], name, spec.cluster, peer, initial, data_dir / "etcd"
                )
                result.members.append(name)
        say(f"store members restored: {', '.join(result.members) or 'none on this machine'}")
        await _restore_volumes(spec, data_dirs, assignments, copies, result, say)
        return result
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def _restore_ca(
    spec: ClusterSpec,
    spec_path: Path,
    files: Path,
    ca_key_from: str | None,
    work: Path,
    result: Restored,
    say: Say,
) -> CertificateAuthority | None:
    """The CA certificate (and key) where the spec's security.tls.ca says; the
    loaded CA when its key is there, to issue the new nodes' certificates."""
    tls = spec.security.tls
    if tls is None:
        return None
    cert = tls.ca_path(spec_path.parent)
    saved = (files / "ca.crt").read_bytes()
    if cert.exists() and cert.read_bytes() != saved:
        raise RestoreError(f"{cert} holds another CA than the backup's: move it away first")
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(saved)
    key = ca_key_path(cert)
    if ca_key_from is not None:
        if ca_key_from not in spec.backups.repositories:
            raise RestoreError(f"no repository named {ca_key_from!r} in the spec")
        vault = Restic(repository_of(spec.backups.repositories[ca_key_from]))
        tags = [TAG, f"cluster={spec.cluster}", f"target={CA_KEY_TARGET}"]
        keys = await vault.snapshots(tags=tags)
        if not keys:
            raise RestoreError(f"{ca_key_from} has no snapshot of the CA key")
        await vault.restore(keys[-1].id, work / "ca-key")
        if key.exists():
            say(f"CA key kept: {key} exists (the backup's is not written over it)")
        else:
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write((work / "ca-key" / "ca.key").read_bytes())
            result.ca_key = True
            say(f"CA key restored to {key}")
    if not key.exists():
        say(f"no CA key at {key}: node certificates are not issued (ninefold cert issue later)")
        return None
    return await asyncio.to_thread(load_ca, cert, key)


async def _prepare_store(
    spec: ClusterSpec, db: Path, work: Path, say: Say
) -> tuple[Path, list[AssignmentRecord], dict[str, list[str]]]:
    """The store snapshot with the new spec and without the old machines'
    ephemeral keys; the assignments and each volume's copy holders, read
    from it."""
    client_port, peer_port = _free_port(), _free_port()
    peer = f"http://127.0.0.1:{peer_port}"
    client = f"http://127.0.0.1:{client_port}"
    one = work / "one"
    await asyncio.to_thread(_snapshot_restore, db, "restore", spec.cluster, peer,
                            f"restore={peer}", one)  # fmt: skip
    etcd = find_etcd()
    proc = await asyncio.create_subprocess_exec(
        *[etcd.path, "--name", "restore", "--data-dir", str(one),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"restore={peer}", "--log-level", "error", "--logger", "zap"],
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    store = EtcdStore([f"127.0.0.1:{client_port}"], namespace(spec.cluster), timeout=5.0)
    try:
        deadline = time.monotonic() + TEMP_STORE_WAIT
        while True:
            try:
                await store.get(SPEC_KEY)
                break
            except Exception:
                if time.monotonic() > deadline or proc.returncode is not None:
                    raise RestoreError("the restored store did not start") from None
                await asyncio.sleep(0.2)
        for prefix in EPHEMERAL:
            await store.delete(prefix, prefix=True)
        await store.put(SPEC_KEY, dump_spec(spec).encode())
        assignments = [
            AssignmentRecord.decode(i.value) for i in (await store.list("assign/")).items
        ]
        copies: dict[str, list[str]] = {}
        for name, service in spec.services.items():
            for volume in service.volumes:
                listing = await store.list(volume_copies(name, volume))
                copies[f"{name}/{volume}"] = sorted(last_segment(i.key) for i in listing.items)
        prepared = work / "prepared.db"
        await store.snapshot(prepared)
        say("store prepared: the new spec in, the old machines' leases and locks out")
        return prepared, assignments, copies
    finally:
        await store.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _restore_volumes(
    spec: ClusterSpec,
    data_dirs: dict[str, Path],
    assignments: list[AssignmentRecord],
    copies: dict[str, list[str]],
    result: Restored,
    say: Say,
) -> None:
    """Each backed-up volume's latest snapshot into every node on this
    machine that held a copy (its copy records, or its service's instances)."""
    placed: dict[str, set[str]] = {}
    for record in assignments:
        placed.setdefault(record.service, set()).add(record.node)
    for name, service in sorted(spec.services.items()):
        for volume_name, volume in sorted(service.volumes.items()):
            if volume.backup is None:
                continue
            holders = set(copies.get(f"{name}/{volume_name}", [])) | placed.get(name, set())
            here = sorted(n for n in holders if n in data_dirs)
            if not here:
                continue
            key = f"volume/{name}/{volume_name}/{volume.backup.repository}"
            restic = Restic(repository_of(spec.backups.repositories[volume.backup.repository]))
            found = await restic.snapshots(tags=[TAG, f"cluster={spec.cluster}", f"target={key}"])
            if not found:
                say(f"{name}/{volume_name}: no snapshot in {volume.backup.repository}; left empty")
                continue
            for node in here:
                target = volume_dir(data_dirs[node], name, volume_name, volume)
                if target.exists() and any(target.iterdir()):
                    raise RestoreError(f"{target} is not empty: not restoring over it")
                target.mkdir(parents=True, exist_ok=True)
                await restic.restore(found[-1].id, target)
                result.volumes.append(f"{name}/{volume_name}@{node}")
            say(f"{name}/{volume_name}: snapshot {found[-1].short_id} on {', '.join(here)}")
