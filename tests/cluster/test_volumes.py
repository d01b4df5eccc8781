"""Replicated volumes on a real 3-node cluster: the active's data follows a
failover. A writer service writes numbered files into its volume, fsyncs each,
and logs it outside the volume once written: the log is the judge of what was
acknowledged."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

Factory = Callable[..., LocalCluster]

WRITER = r"""
import os, sys, time, pathlib
volume, log, me = pathlib.Path(sys.argv[1]), open(sys.argv[2], "a"), sys.argv[3]
n = 0
while True:  # a cold standby: this runs only on the active
    name = volume / f"w-{me}-{n:06d}"
    with open(name, "w") as f:
        f.write(f"{time.time()}\n")
        f.flush(); os.fsync(f.fileno())
    log.write(f"{name.name} {time.time()}\n"); log.flush()
    n += 1
    time.sleep(0.05)
"""


def spec(tmp_path: Path) -> str:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    logs = tmp_path / "acks"
    logs.mkdir(exist_ok=True)
    return f"""
services:
  db:
    mode: active-passive
    replicas: 3
    standby: cold
    command:
      [{sys.executable}, {script}, "{{volume.data}}", "{logs}/{{instance}}.log", "{{instance}}"]
    volumes: {{data: {{replicate: continuous}}}}
"""


def active(c: LocalCluster) -> tuple[str, int] | None:
    svc = next(s for s in c.status()["services"] if s["name"] == "db")
    return (svc["active"], svc["fencing_token"]) if svc["active"] else None


def acked(tmp_path: Path, before: float | None = None) -> set[str]:
    names = set()
    for log in (tmp_path / "acks").glob("*.log"):
        for line in log.read_text().splitlines():
            name, _, at = line.partition(" ")
            if at and (before is None or float(at) < before):
                names.add(name)
    return names


def volume(c: LocalCluster, node: str) -> Path:
    return c.data_dir(node) / "volumes" / "db" / "data"


def files(c: LocalCluster, node: str) -> set[str]:
    return {p.name for p in volume(c, node).glob("w-*")}


def test_the_active_is_mirrored_and_a_failover_keeps_what_was_acknowledged(
    local_cluster: Factory, tmp_path: Path
) -> None:
    c = local_cluster(spec(tmp_path))
    c.start_all()
    first, token = until("an active db", lambda: active(c), 60)
    node = first.split("/")[0]
    others = [n for n in c.addresses if n != node]
    until("a few writes", lambda: len(acked(tmp_path)) > 20, 30)
    until("a first copy on both standbys", lambda: all(files(c, o) for o in others), 30)
    seeded = time.time()

    # Lag: every write acknowledged a second ago is on both standbys.
    until(
        "writes acknowledged a second after that",
        lambda: acked(tmp_path, before=time.time() - 1.0) - acked(tmp_path, before=seeded),
        10,
    )
    for _ in range(3):
        cutoff = time.time() - 1.0
        want = acked(tmp_path, before=cutoff) - acked(tmp_path, before=seeded)
        for other in others:
            missing = want - files(c, other)
            assert not missing, f"{other} lacks {len(missing)} writes older than 1 s"
        time.sleep(0.5)

    killed_at = time.time()
    c.kill(node)
    second, new_token = until(
        "another active", lambda: (a := active(c)) and a[0] != first and a, 30
    )
    assert new_token > token
    new_node = second.split("/")[0]
    # Every write acknowledged more than a second before the kill survived.
    lost = acked(tmp_path, before=killed_at - 1.0) - files(c, new_node)
    assert not lost, f"{len(lost)} acknowledged writes lost: {sorted(lost)[:5]}"


def test_a_planned_switchover_loses_no_acknowledged_write(
    local_cluster: Factory, tmp_path: Path
) -> None:
    import httpx

    c = local_cluster(spec(tmp_path))
    c.start_all()
    first, _ = until("an active db", lambda: active(c), 60)
    until("a few writes", lambda: len(acked(tmp_path)) > 20, 30)
    api = f"http://{c.addresses['n1']}:{c.base + 2}"
    answer = httpx.post(f"{api}/v1/services/db/switchover", json={}, timeout=10)
    assert answer.status_code == 202, answer.text
    second, _ = until("another active", lambda: (a := active(c)) and a[0] != first and a, 30)
    new_node = second.split("/")[0]
    # The old active stopped before the hand-over: everything it acknowledged is there.
    old = first.split("/")[1]
    mine = {n for n in acked(tmp_path) if n.startswith(f"w-{old}-")}
    lost = mine - files(c, new_node)
    assert not lost, f"{len(lost)} acknowledged writes lost in a switchover"
    handed = [e for e in c.events() if e["kind"] == "volume-handed-over"]
    assert handed, "no volume-handed-over event"


def test_with_tls_the_transfers_use_the_cluster_ca_and_refuse_strangers(
    local_cluster: Factory, tmp_path: Path
) -> None:
    from ninefold.security.ca import create_ca, write_ca
    from ninefold.security.certs import issue_node_files
    from ninefold.spec import load_spec
    from tests.cluster.test_mtls import TlsCluster
    from tests.tls_probes import plain_refused, tls_refused

    c = local_cluster(spec(tmp_path))
    c.__class__ = TlsCluster
    c.write_spec(spec(tmp_path))
    ca = create_ca(c.name)
    write_ca(ca, c.root / "ca" / "ca.key", c.root / "ca" / "ca.crt")
    nodes = load_spec(c.spec_path).nodes
    for node in nodes:
        issue_node_files(ca, node, c.data_dir(node.name))
    stranger = issue_node_files(create_ca("other"), nodes[0], tmp_path / "stranger")
    c.start_all()
    first, _ = until("an active db", lambda: active(c), 60)
    node = first.split("/")[0]
    until("a few writes", lambda: len(acked(tmp_path)) > 10, 30)
    cutoff = time.time() - 1.0
    want = acked(tmp_path, before=cutoff)
    for other in (n for n in c.addresses if n != node):
        until(f"{other}'s copy over mTLS", lambda o=other: want <= files(c, o), 10)
        address = c.addresses[other]
        assert plain_refused(address, c.volume_port), "the volume port took plain text"
        ca_file = c.root / "ca" / "ca.crt"
        assert tls_refused(address, c.volume_port, ca_file, stranger.cert, stranger.key)
        assert tls_refused(address, c.volume_port, ca_file), "took a client without a cert"


def test_a_returning_old_actives_own_changes_are_set_aside_not_lost(
    local_cluster: Factory, tmp_path: Path
) -> None:
    c = local_cluster(spec(tmp_path))
    c.start_all()
    first, _ = until("an active db", lambda: active(c), 60)
    node = first.split("/")[0]
    until("a few writes", lambda: len(acked(tmp_path)) > 10, 30)
    c.kill(node)
    # What the old active wrote that nobody received (it was cut off).
    (volume(c, node) / "only-on-the-old-active").write_text("mine")
    second, _ = until("another active", lambda: (a := active(c)) and a[0] != first and a, 30)
    new_writes = f"w-{second.split('/')[1]}-"
    c.start(node)

    def set_aside() -> list[Path]:
        return sorted(volume(c, node).parent.glob("data.set-aside-*"))

    aside = until("the old copy set aside", set_aside, 60)[0]
    assert (aside / "only-on-the-old-active").read_text() == "mine"
    until(
        "the new active's data on the old node",
        lambda: any(n.startswith(new_writes) for n in files(c, node)),
        30,
    )
    leftovers = sorted(p.name for p in volume(c, node).iterdir() if not p.name.startswith("w-"))
    assert "only-on-the-old-active" not in leftovers, (leftovers, set_aside(), c.events()[-12:])
    events = [e for e in c.events() if e["kind"] == "volume-set-aside"]
    assert events and events[-1]["data"]["path"] == str(aside)


def test_a_standby_away_for_30s_catches_up_and_a_diverged_copy_is_repaired(
    local_cluster: Factory, tmp_path: Path
) -> None:
    c = local_cluster(
        spec(tmp_path).replace("replicate: continuous", "replicate: continuous, verify: 2s")
    )
    c.start_all()
    first, _ = until("an active db", lambda: active(c), 60)
    node = first.split("/")[0]
    away, stayed = [n for n in sorted(c.addresses) if n != node]
    until("a few writes", lambda: len(acked(tmp_path)) > 20, 30)

    killed_at = time.time()
    c.kill(away)

    def latest_ack() -> float:
        return max(
            (float(line.split()[1]) for log in (tmp_path / "acks").glob("*.log")
             for line in log.read_text().splitlines() if " " in line),
            default=0.0,
        )  # fmt: skip

    until("30 s of writes with the standby away", lambda: latest_ack() >= killed_at + 30, 60)
    c.start(away)
    returned_at = time.time()
    until(
        "every write acknowledged before its return on the returned standby",
        lambda: not (acked(tmp_path, before=returned_at) - files(c, away)),
        60,
    )
    caught_up = time.time() - returned_at
    print(f"caught up {caught_up:.1f}s after a 30 s absence")

    # A copy changed behind the mirror's back (same size, same mtime) is found
    # by the periodic checksum verification, repaired, and reported.
    victim = volume(c, stayed) / sorted(files(c, stayed))[0]
    stamp = victim.stat().st_mtime_ns
    good = victim.read_bytes()
    victim.write_bytes(bytes(reversed(good)) if good != good[::-1] else good.upper() + b"")
    os.utime(victim, ns=(stamp, stamp))
    assert victim.read_bytes() != good

    def diverged() -> list[dict[str, object]]:
        return [e for e in c.events() if e["kind"] == "volume-diverged"]

    def naming_the_victim() -> list[dict[str, object]]:
        return [e for e in diverged() if victim.name in str(e["reason"])]

    event = until("a volume-diverged event naming the changed file", naming_the_victim, 30)[-1]
    assert stayed in str(event["reason"])
    # Seen once in CI (not reproduced): a diverged event for another file on a
    # standby during a peer's absence. Printed, so a recurrence leaves a trace.
    for other in diverged():
        if other is not event and victim.name not in str(other["reason"]):
            print(f"another volume-diverged event: {other['reason']}")
    until("the diverged file repaired", lambda: victim.read_bytes() == good, 30)


SITE_SERVER = r"""
import http.server, os, sys, functools
docroot, port, started = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(started, "w") as f:  # what the docroot held when the process started
    for root, _, names in os.walk(docroot):
        for name in names:
            f.write(os.path.relpath(os.path.join(root, name), docroot) + "\n")
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=docroot)
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""


def test_a_replicated_services_copies_follow_instance_0_and_a_new_replica_is_seeded_first(
    local_cluster: Factory, tmp_path: Path
) -> None:
    script = tmp_path / "site.py"
    script.write_text(SITE_SERVER)
    starts = tmp_path / "starts"
    starts.mkdir()
    c = local_cluster(f"""
services:
  web:
    replicas: 2
    command:
      [{sys.executable}, {script}, "{{volume.docroot}}", "{{port.main}}", "{starts}/{{instance}}"]
    volumes: {{docroot: {{replicate: continuous, exclude: ["*.tmp"]}}}}
""")  # fmt: skip
    c.start_all()
    placed = until("two web replicas", lambda: len(s := c.serving("web")) == 2 and s, 60)
    source, copy = placed["web-0"], placed["web-1"]

    def docroot(node: str) -> Path:
        return c.data_dir(node) / "volumes" / "web" / "docroot"

    (docroot(source) / "sub").mkdir()
    (docroot(source) / "index.html").write_text("<h1>seed 003</h1>\n")
    (docroot(source) / "sub" / "private.html").write_text("staff only\n")
    (docroot(source) / "sub" / "private.html").chmod(0o640)
    (docroot(source) / "upload.tmp").write_text("half\n")
    (docroot(source) / "big.bin").write_bytes(os.urandom(8_000_000))
    until("the site on web-1's node", lambda: (docroot(copy) / "big.bin").is_file()
          and (docroot(copy) / "big.bin").stat().st_size == 8_000_000, 30)  # fmt: skip
    assert (docroot(copy) / "index.html").read_text() == "<h1>seed 003</h1>\n"
    assert (docroot(copy) / "sub" / "private.html").stat().st_mode & 0o777 == 0o640
    assert not (docroot(copy) / "upload.tmp").exists()  # excluded

    (docroot(source) / "sub" / "private.html").unlink()  # deletes are mirrored
    until("the delete mirrored", lambda: not (docroot(copy) / "sub" / "private.html").exists(), 30)
    # A change made in a copy that is not the source does not spread, and is undone.
    (docroot(copy) / "index.html").write_text("defaced\n")
    home = "<h1>seed 003</h1>\n"
    until("the copy repaired", lambda: (docroot(copy) / "index.html").read_text() == home, 30)
    assert (docroot(source) / "index.html").read_text() == "<h1>seed 003</h1>\n"

    # A third replica on the node with no copy gets its first copy before it starts.
    result = c.cli("scale", "web", "3", "--wait", "90", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "web: every instance ready" in result.stderr + result.stdout
    third = next(n for n in c.addresses if n not in (source, copy))
    listing = (starts / "web-2").read_text().split()
    assert {"index.html", "big.bin"} <= set(listing), listing
    seeded = [e for e in c.events() if e["kind"] == "volume-seeded" and third in e["reason"]]
    assert seeded, "no volume-seeded event for the third node"
