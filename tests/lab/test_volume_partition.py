"""A replicated volume's active partitioned away from the majority while writing.

One lab runs an active-passive `db` on all three nodes (cold standbys) with a
VIP and `volumes: {data: {replicate: continuous}}`. Its process writes a
numbered file into the volume every 20 ms, fsyncs it, and only then logs its
name (tagged with its node and fencing token) in `acks/<node>.log`, outside
every volume: the logs are the judge of what each side acknowledged.

The active's node is cut off from the other two. It keeps writing until its
lease is at risk and ninefold freezes it; the majority elects a new active,
which writes files of its own. After the heal the majority's data stands: the
new active stays active and its files reach the old active's node, whose own
copy, with what the old active wrote that the new one never received, is set
aside whole into `data.set-aside-<date>-token<T>` (event `volume-set-aside`).
A sampler checks the VIP is never on two nodes, and the acknowledgement times
that the old active stopped writing before the new one started.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ninefold.lab import Lab
from tests.lab.conftest import UP_TIMEOUT, assert_gone, restore
from tests.lab.test_vip import HolderSampler

T = TypeVar("T")

DB_VIP = "10.99.0.20"
DEADLINE = 90.0
"""Seconds for any one step (a failover, a transfer, a set-aside): generous,
as other tests may share this 2-core machine."""

WRITER = r"""
import os, pathlib, sys, time
volume, acks, node = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
token = os.environ.get("NINEFOLD_FENCING_TOKEN", "0")
log = open(acks / f"{node}.log", "a")
n = 0
while True:  # a cold standby: this runs only on the active
    name = f"w-{node}-t{token}-{n:06d}"
    with open(volume / name, "w") as f:
        f.write(f"{node} {token} {n} {time.time()}\n")
        f.flush()
        os.fsync(f.fileno())
    log.write(f"{node} {token} {name} {time.time()}\n")
    log.flush()
    os.fsync(log.fileno())
    n += 1
    time.sleep(0.02)
"""


def spec_text(writer: Path, acks: Path) -> str:
    return f"""\
cluster: volpart
nodes:
  - {{name: n1, address: 10.99.0.11, zone: a, store: true}}
  - {{name: n2, address: 10.99.0.12, zone: b, store: true}}
  - {{name: n3, address: 10.99.0.13, zone: c, store: true}}
services:
  db:
    mode: active-passive
    replicas: 3
    standby: cold
    command: [{sys.executable}, {writer}, "{{volume.data}}", {acks}, "{{node}}"]
    volumes: {{data: {{replicate: continuous}}}}
    vip: {DB_VIP}/24
"""


@dataclass
class VolLab:
    lab: Lab
    sampler: HolderSampler
    acks: Path


@pytest.fixture(scope="module")
def vol_lab(
    lab_root: Path, links_before: set[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VolLab]:
    here = tmp_path_factory.mktemp("volpart")
    writer, acks = here / "writer.py", here / "acks"
    writer.write_text(WRITER)
    acks.mkdir()
    spec = here / "volpart.yaml"
    spec.write_text(spec_text(writer, acks))
    made = Lab.up(spec, progress=print, wait=UP_TIMEOUT)
    try:
        with HolderSampler(made, (DB_VIP,)) as sampler:
            yield VolLab(made, sampler, acks)
        assert sampler.samples > 20, sampler.errors[:3]
        assert sampler.doubles == [], f"the VIP was on two nodes at once: {sampler.doubles[:5]}"
    finally:
        for node in made.nodes:  # kept for a post-mortem: down() removes the lab's state
            log = made.log_path(node)
            if log.exists():
                shutil.copy(log, here / f"agent-{node}.log")
        made.down()
        assert_gone(made.id, made.state_dir, links_before)


# --- reading the lab ---------------------------------------------------------------------


def until(
    what: str,
    check: Callable[[], T | None],
    timeout: float = DEADLINE,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming
    `what` (and what `explain` says) once `timeout` seconds have gone by."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    more = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r}){more}")


@dataclass(frozen=True)
class Ack:
    node: str
    token: int
    name: str
    at: float


def acked(acks: Path, node: str) -> list[Ack]:
    """What the writer on `node` acknowledged, oldest first (a torn last line skipped)."""
    path = acks / f"{node}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[1].isdigit():
            out.append(Ack(fields[0], int(fields[1]), fields[2], float(fields[3])))
    return out


def volume(lab: Lab, node: str) -> Path:
    return lab.data_dir(node) / "volumes" / "db" / "data"


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("w-*")}


def active(lab: Lab, via: str) -> tuple[str, int] | None:
    """(node, fencing token) of db's active as `via` sees it."""
    status = lab.cluster_status(via)
    svc = next((s for s in (status or {}).get("services", []) if s["name"] == "db"), None)
    if svc is None or not svc.get("active"):
        return None
    return str(svc["active"]).split("/")[0], int(svc["fencing_token"])


def events(lab: Lab, via: str) -> list[dict[str, Any]]:
    try:
        status, body = lab.http_get("client", lab.api_url(via) + "/v1/events?limit=1000", 5.0)
    except OSError:
        return []
    found = json.loads(body) if status == 200 else []
    return found if isinstance(found, list) else []


def story(lab: Lab, via: str, old: str) -> str:
    """What happened to db, its volume and the old active's node, for a failure
    message: the events (less the store's and the VIP's) and the old active's
    node's agent log about db."""
    noise = ("store-", "node-up", "vip-", "leader")
    lines = [
        f"{e['time']:.3f} {e['node']} {e['kind']} {e['subject']} {e['reason']} {e['data']}"
        for e in events(lab, via)
        if not e["kind"].startswith(noise)
    ]
    log = [line for line in lab.log_path(old).read_text().splitlines() if "db" in line]
    return "\n".join(["events:", *lines[-40:], f"{old}'s agent log:", *log[-30:]])


# --- the test ----------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=False,
    reason="open bug, about 1 run in 4 under load: after the heal the old active's "
    "node refuses the new active's pushes (no runner for the service answers: its "
    "reconciler is stopping the instance, which was unassigned and re-placed at the "
    "heal, and the stop does not end), so its copy is never set aside; see the "
    "closing note of issue 13",
)
def test_a_partitioned_actives_writes_are_set_aside_and_the_majoritys_data_stands(
    vol_lab: VolLab,
) -> None:
    lab, acks = vol_lab.lab, vol_lab.acks
    old, old_token = until("an active db", lambda: active(lab, "n1"))
    standbys = [n for n in lab.nodes if n != old]
    until(f"{old} to write", lambda: len(acked(acks, old)) >= 40)

    def caught_up() -> bool:  # every write older than a second is on both standbys
        cutoff = time.time() - 1.0
        want = {a.name for a in acked(acks, old) if a.at < cutoff}
        return len(want) >= 20 and all(want <= files(volume(lab, s)) for s in standbys)

    until("the standbys' copies to catch up", caught_up)

    partitioned_at = time.time()
    lab.partition([[old], standbys])
    try:
        # The majority elects a new active, which writes its own files.
        def another() -> tuple[str, int] | None:
            seen = active(lab, standbys[0])
            return seen if seen is not None and seen[0] != old else None

        new, new_token = until("a new active in the majority", another)
        assert new in standbys and new_token > old_token, (old, old_token, new, new_token)
        until(f"the new active {new} to write", lambda: len(acked(acks, new)) >= 40)

        # What the old active acknowledged once cut off, that the new one never got.
        mine = [a for a in acked(acks, old) if a.token == old_token]
        theirs = acked(acks, new)
        assert mine[-1].at < theirs[0].at, (
            f"two actives wrote at once: {old} until {mine[-1].at:.3f}, "
            f"{new} from {theirs[0].at:.3f}"
        )
        unreceived = {a.name for a in mine} - files(volume(lab, new))
        cut_off = {a.name for a in mine if a.at >= partitioned_at} & unreceived
        assert len(cut_off) >= 5, (
            f"{old} acknowledged only {len(cut_off)} unsent writes while cut off: "
            "nothing to set aside, the test proves nothing"
        )
        assert unreceived <= files(volume(lab, old))  # fsynced before acknowledged
    finally:
        restore(lab)
    healed_at = time.time()

    def still_new() -> None:
        for via in lab.nodes:  # the healed minority does not take it back
            seen = active(lab, via)
            assert seen in (None, (new, new_token)), f"{via} sees {seen} active, not {new}"

    def set_aside() -> list[Path]:
        return sorted(volume(lab, old).parent.glob(f"data.set-aside-*-token{old_token}"))

    def first_transfer() -> bool:  # the set-aside comes before it, or never
        still_new()
        theirs = f"w-{new}-t{new_token}-"
        return bool(set_aside()) or any(n.startswith(theirs) for n in files(volume(lab, old)))

    def explain() -> str:
        return story(lab, new, old)

    until(f"the new active's first transfer to {old}", first_transfer, explain=explain)
    asides = set_aside()
    if not asides:
        listing = sorted(p.name for p in volume(lab, old).parent.iterdir())
        lost = cut_off - files(volume(lab, old))
        raise AssertionError(
            f"{new}'s data reached {old} without {old}'s copy set aside first: "
            f"{len(lost)} of the {len(cut_off)} writes {old} acknowledged while cut off "
            f"are lost, e.g. {sorted(lost)[:3]}; {old}'s volumes/db: {listing}\n" + explain()
        )
    assert len(asides) == 1, asides
    aside = asides[0]

    # None of what the new active never received is lost: it is all set aside,
    # with the rest of the old active's copy, whole; none of it is merged back.
    kept = files(aside)
    missing = unreceived - kept
    assert not missing, f"{len(missing)} of {len(unreceived)} lost: {sorted(missing)[:5]}"
    assert {a.name for a in mine} <= kept, "the old copy was not set aside whole"
    for name in sorted(cut_off):
        assert (aside / name).read_text().startswith(f"{old} {old_token} "), name

    # The majority's data stands: its files are in its volume and, once
    # mirrored, on the old active's node, without the minority's.
    written = {a.name for a in acked(acks, new) if a.at < healed_at}

    def mirrored() -> bool:
        still_new()
        return written <= files(volume(lab, old))

    until(f"the new active's writes on {old}", mirrored, explain=explain)
    assert {a.name for a in acked(acks, new)} <= files(volume(lab, new))
    merged = unreceived & files(volume(lab, old))
    assert not merged, f"{len(merged)} of the minority's writes merged back: {sorted(merged)[:5]}"
    assert not unreceived & files(volume(lab, new))

    def announced() -> list[dict[str, Any]]:
        return [e for e in events(lab, new) if e["kind"] == "volume-set-aside"]

    found = until("a volume-set-aside event", announced, explain=explain)
    assert len(found) == 1, found
    event = found[0]
    assert event["node"] == old and event["subject"] == "db/data", event
    assert event["data"]["path"] == str(aside) and event["data"]["token"] == old_token, event
    assert active(lab, new) == (new, new_token)
    assert vol_lab.sampler.doubles == [], vol_lab.sampler.doubles[:5]
