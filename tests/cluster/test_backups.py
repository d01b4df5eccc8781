"""Backups with restic on a real 3-node cluster, to a local repository:
`backup run --wait` backs up a replicated volume on the node holding its
source copy and the cluster itself (etcd snapshot, CA, spec); a second run
after a change sends only the change; a target on a 2 s schedule keeps the
snapshots its keep rule says; `backup check` passes; a wrongly keyed
repository and an unknown target are one line each."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

Factory = Callable[..., LocalCluster]

TICKER = (
    "import pathlib, sys, time; pathlib.Path(sys.argv[1], 't').write_text(str(time.time())); "
    "time.sleep(1e9)"
)


def spec(tmp_path: Path) -> str:
    (tmp_path / "pw").write_text("correct horse\n")
    (tmp_path / "wrong").write_text("battery staple\n")
    repo, often = tmp_path / "repo", tmp_path / "often"
    return f"""
services:
  files:
    command: [python3, -m, http.server, "{{port}}", --bind, "{{address}}",
              --directory, "{{volume.data}}"]
    replicas: 2
    volumes:
      data:
        replicate: continuous
        backup: {{repository: local, every: 1h, keep: {{last: 10}}}}
  ticker:
    command: [python3, -c, "{TICKER}", "{{volume.state}}"]
    volumes:
      state:
        backup: {{repository: often, every: 2s, keep: {{last: 2}}}}
backups:
  repositories:
    local: {{url: "{repo}", password_file: "{tmp_path / "pw"}"}}
    often: {{url: "{often}", password_file: "{tmp_path / "pw"}"}}
    wrongly-keyed: {{url: "{repo}", password_file: "{tmp_path / "wrong"}"}}
  cluster: {{repository: local, every: 1h, keep: {{last: 3}}}}
"""


def targets(c: LocalCluster) -> dict[str, dict[str, Any]]:
    result = c.cli("backup", "list", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {t["target"]: t for t in json.loads(result.stdout)["targets"]}


def source_dir(c: LocalCluster) -> Path:
    node = next(i["node"] for i in c.status()["instances"] if i["instance"] == "files-0")
    return c.data_dir(node) / "volumes" / "files" / "data"


def test_backups_run_incrementally_keep_their_policy_and_check(
    local_cluster: Factory, tmp_path: Path
) -> None:
    c = local_cluster(spec(tmp_path))
    c.start_all()
    until("files served twice", lambda: len(c.serving("files")) == 2, 60)
    data = source_dir(c)
    for i in range(50):
        (data / f"f{i:02d}").write_bytes(os.urandom(20_000))
    assert c.cli("kv", "put", "before/backup", "one").returncode == 0

    dry = c.cli("backup", "run", "files", "--dry-run")
    assert dry.returncode == 0 and "would ask for: volume/files/data/local" in dry.stdout, dry
    first = c.cli("backup", "run", "files/data", "--wait", "90")
    assert first.returncode == 0, first.stderr
    assert "volume/files/data/local: done" in first.stdout, first.stdout
    one = targets(c)["volume/files/data/local"]["last"]
    # a target that never ran is due at once: a first run may have gone before the files
    assert one["ok"] and one["files_new"] + one["files_unmodified"] == 50, one
    assert one["total_bytes"] >= 1_000_000, one

    original = (data / "f07").read_bytes()
    (data / "f07").write_bytes(os.urandom(20_000))
    second = c.cli("backup", "run", "files/data", "--wait", "90")
    assert second.returncode == 0, second.stderr
    two = targets(c)["volume/files/data/local"]["last"]
    assert two["files_changed"] == 1 and two["files_unmodified"] == 49, two
    assert two["data_added"] < 100_000, two
    assert two["snapshot_id"] != one["snapshot_id"]

    ran = two["node"]
    scraped = httpx.get(f"http://{c.addresses[ran]}:{c.base + 2}/metrics", timeout=5).text
    sample = f'ninefold_backup_last_run_ok{{kind="volume",node="{ran}",repository="local",'
    assert sample + 'target="volume/files/data/local"} 1.0' in scraped, scraped[-2000:]
    # the node's own series in the same scrape: the machine and its instances
    assert f'ninefold_node_memory_total_bytes{{node="{ran}"}}' in scraped
    healthy = f'ninefold_instance_healthy{{instance="files-0",node="{ran}",service="files"}} 1.0'
    assert healthy in scraped, scraped[:3000]

    whole = c.cli("backup", "run", "cluster", "--wait", "90")
    assert whole.returncode == 0, whole.stderr
    cluster = targets(c)["cluster/local"]["last"]
    files = cluster["files_new"] + cluster["files_changed"] + cluster["files_unmodified"]
    assert cluster["ok"] and files == 3, cluster  # etcd.db, spec.yaml, meta.json

    listed = c.cli("backup", "snapshots", "local", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    kinds = [s["target"] for s in json.loads(listed.stdout)]
    assert kinds.count("volume/files/data/local") >= 2 and kinds.count("cluster/local") >= 1

    # the 2 s schedule: after 4 runs, the keep rule (last: 2) leaves 2
    def often_runs() -> int:
        return sum(
            1 for e in c.events()
            if e["kind"] == "backup-done" and e["subject"] == "volume/ticker/state/often"
        )  # fmt: skip

    until("4 scheduled runs of ticker/state", lambda: often_runs() >= 4, 90)

    def often_snapshots() -> int:
        kept = c.cli("backup", "snapshots", "often", "-o", "json")
        assert kept.returncode == 0, kept.stderr
        return len(json.loads(kept.stdout))

    # a listing takes no lock: during a run's prune it may still show the
    # snapshots being removed; once the run ends, the keep rule holds
    assert often_snapshots() >= 2
    until("2 snapshots kept of ticker/state", lambda: often_snapshots() == 2, 30)
    assert targets(c)["volume/ticker/state/often"]["last"]["kept"] == 2

    checked = c.cli("backup", "check", "local", "--wait", "90", timeout=100)
    assert checked.returncode == 0, checked.stderr
    assert "check/local: done" in checked.stdout

    wrong = c.cli("backup", "check", "wrongly-keyed", "--wait", "90", timeout=100)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "password" in wrong.stdout and "battery" not in wrong.stdout + wrong.stderr
    # restore the first snapshot: into a directory here, then into the service
    here = tmp_path / "restored"
    local = c.cli("restore", "files/data", "--snapshot", one["snapshot_id"], "--target", str(here))
    assert local.returncode == 0, local.stderr
    assert (here / "f07").read_bytes() == original and len(list(here.iterdir())) == 50
    dry = c.cli("restore", "files/data", "--snapshot", one["snapshot_id"], "--to-service",
                "--dry-run")  # fmt: skip
    assert dry.returncode == 0 and "would stop every instance of files" in dry.stdout, dry
    restored = c.cli("restore", "files/data", "--snapshot", one["snapshot_id"], "--to-service",
                     "--yes", "--wait", "90", timeout=100)  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    copies = [c.data_dir(n) / "volumes" / "files" / "data" / "f07" for n in ("n1", "n2", "n3")]
    held = [p for p in copies if p.exists()]
    assert len(held) == 2 and all(p.read_bytes() == original for p in held), held
    until("files served twice again", lambda: len(c.serving("files")) == 2, 60)
    kinds = [e["kind"] for e in c.events() if e["subject"] == "files/data"]
    assert "restore-done" in kinds and kinds.count("restored") == 2, kinds
    uncancellable = c.cli("restore", "files/data", "--cancel")
    assert uncancellable.returncode == 2 and "no restore of 'files' holds it" in (
        uncancellable.stderr
    ), uncancellable.stderr
    nowhere = c.cli("restore", "files/data", "--snapshot", "deadbeef", "--to-service", "--yes")
    assert nowhere.returncode == 2 and "no snapshot 'deadbeef'" in nowhere.stderr, nowhere
    neither = c.cli("restore", "files/data", "--snapshot", "latest")
    assert neither.returncode == 2 and "--to-service or --target" in neither.stderr

    unknown = c.cli("backup", "run", "nosuch")
    assert unknown.returncode == 2 and "no backup target 'nosuch'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
