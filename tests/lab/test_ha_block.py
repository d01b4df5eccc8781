"""Seed 001's HA building block (`examples/ha-block.yaml`) in the lab.

An active/passive pair of notes servers on n1 and n2 (zones a and b) and a
witness `w` (zone c) that only votes in the store. Clients use the service's
VIP, 10.99.0.20:5000; the active's volume is mirrored to the standby's node
and backed up with restic; notices go to a webhook on the lab's client, where
a receiver made by this test (a socket inside the client's namespace) keeps
them.

The example runs as it is written, but for the backup repository and its
password file (moved into the test's temporary directory) and the service's
script (by absolute path, since the agents start in the spec's directory).
The test writes notes through the VIP, waits until the standby's copy holds
them, and kills every process of the active's node (a machine losing power).
Then: the notes answer again through the VIP, from the survivor, with every
note written before the kill; the VIP is on the survivor (and, sampled every
100 ms for the whole module, never on two nodes); the failover and node-down
notices reached the webhook; the survivor backs the data up, encrypted. The
killed node, started again, comes back as the standby and receives what was
written meanwhile. The witness runs no instance and no gateway throughout.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import yaml

from ninefold.lab import Lab, netns
from tests.lab.conftest import UP_TIMEOUT, assert_gone
from tests.lab.test_vip import HolderSampler, one_holder

T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "ha-block.yaml"
DB_VIP = "10.99.0.20"
NOTES = f"http://{DB_VIP}:5000/"
WEBHOOK = ("10.99.0.254", 9093)
"""Where the example sends its notices: the lab's client."""
DEADLINE = 60.0
"""Seconds for any one step: generous, as other tests may share this 2-core machine."""


def until(what: str, check: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def lab_variant(here: Path) -> Path:
    """examples/ha-block.yaml with its repository and password file under `here`."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    db = spec["services"]["db"]
    db["command"] = [str(EXAMPLES / w) if w.startswith("services/") else w for w in db["command"]]
    password = here / "restic.pass"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    repository = spec["backups"]["repositories"]["local"]
    repository.update(url=str(here / "restic"), password_file=str(password))
    path = here / "ha-block.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Receiver:
    """An HTTP server inside the client's namespace, on the example's webhook
    address, keeping every alert POSTed to it (Alertmanager's format: a list)."""

    def __init__(self, lab: Lab) -> None:
        self.alerts: list[dict[str, Any]] = []
        received = self.alerts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.extend(json.loads(body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        sock = netns.socket_in(lab.namespace("client"))
        self.server = http.server.ThreadingHTTPServer(WEBHOOK, Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.server_bind()
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def notices(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in list(self.alerts)
            if a["labels"].get("alertname") == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]


@dataclass
class Block:
    lab: Lab
    sampler: HolderSampler
    receiver: Receiver
    spec: Path


@pytest.fixture(scope="module")
def block(
    lab_root: Path, links_before: set[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Block]:
    spec = lab_variant(tmp_path_factory.mktemp("ha-block"))
    made = Lab.up(spec, progress=print, wait=UP_TIMEOUT)
    try:
        assert made.client_address == WEBHOOK[0], made.client_address
        receiver = Receiver(made)
        try:
            with HolderSampler(made, (DB_VIP,)) as sampler:
                yield Block(made, sampler, receiver, spec)
        finally:
            receiver.close()
        assert sampler.samples > 50, sampler.errors[:3]
        assert sampler.doubles == [], f"the VIP was on two nodes at once: {sampler.doubles[:5]}"
    finally:
        made.down()
        assert_gone(made.id, made.state_dir, links_before)


# --- reading the lab ---------------------------------------------------------------------


def serving(lab: Lab, via: str) -> tuple[str, str] | None:
    """(active's node, standby's node) of db once both instances run healthy."""
    status = lab.cluster_status(via) or {}
    svc = next((s for s in status.get("services", []) if s["name"] == "db"), None)
    healthy = {
        i["node"]
        for i in status.get("instances", [])
        if i["service"] == "db" and i["state"] == "running" and i["health"] == "healthy"
    }
    if svc is None or not svc.get("active") or len(healthy) != 2:
        return None
    active = str(svc["active"]).split("/")[0]
    return active, next(n for n in healthy if n != active)


def instances_on(lab: Lab, via: str, node: str) -> list[str]:
    status = lab.cluster_status(via) or {}
    return [i["instance"] for i in status.get("instances", []) if i["node"] == node]


def notes(lab: Lab) -> dict[str, str] | None:
    """id -> text of every note, through the VIP; None when it does not answer."""
    try:
        status, body = lab.http_get("client", NOTES, 0.5)
    except OSError:
        return None
    return {n["id"]: n["text"] for n in json.loads(body)} if status == 200 else None


def post_note(lab: Lab, text: str) -> str:
    status, body = netns.http_request(
        lab.namespace("client"), "POST", NOTES, 2.0, body=text.encode()
    )
    assert status == 200, (status, body)
    return str(json.loads(body)["id"])


def copy_of(lab: Lab, node: str) -> Path:
    return lab.data_dir(node) / "volumes" / "db" / "data"


def commands_in(lab: Lab, node: str) -> list[str]:
    out = []
    for pid in lab.processes(node):
        with contextlib.suppress(psutil.Error):
            out.append(" ".join(psutil.Process(pid).cmdline()))
    return out


def backup_of_data(lab: Lab, via: str) -> dict[str, Any] | None:
    """The last run of db/data's backup, as `GET /v1/backups` says."""
    try:
        status, body = lab.http_get("client", lab.api_url(via) + "/v1/backups", 2.0)
    except OSError:
        return None
    if status != 200:
        return None
    for target in json.loads(body)["targets"]:
        if target["target"] == "volume/db/data/local":
            return target["last"]  # type: ignore[no-any-return]
    return None


def assert_witness_runs_nothing(lab: Lab, via: str) -> None:
    assert instances_on(lab, via, "w") == []
    assert not lab.reaches("client", "w", port=8080), "the witness runs a gateway"
    running = commands_in(lab, "w")
    assert not [c for c in running if "notes.py" in c], running
    assert any("etcd" in c for c in running), running  # it does vote
    assert not copy_of(lab, "w").exists()


# --- the test ----------------------------------------------------------------------------


def test_the_service_its_data_its_vip_and_a_notice_survive_the_active_s_node(
    block: Block,
) -> None:
    lab, receiver = block.lab, block.receiver
    active, standby = until("db active, and its standby healthy", lambda: serving(lab, "w"))
    assert {active, standby} == {"n1", "n2"}
    until(f"{DB_VIP} on {active}", lambda: one_holder(lab, DB_VIP) == active)
    until("the notes through the VIP", lambda: notes(lab) is not None)
    assert_witness_runs_nothing(lab, "w")
    for worker in ("n1", "n2"):
        assert lab.reaches("client", worker, port=8080), f"{worker}'s gateway does not answer"

    texts = [f"note {n} before the kill" for n in range(20)]
    written = {post_note(lab, text): text for text in texts}
    assert written.items() <= (notes(lab) or {}).items()
    until(
        f"the notes in {standby}'s copy",
        lambda: all((copy_of(lab, standby) / f"{i}.note").exists() for i in written),
    )
    until("the first backup", lambda: (backup_of_data(lab, "w") or {}).get("ok"))

    killed_at = time.monotonic()
    lab.kill(active)
    after = until("the notes through the VIP again", lambda: notes(lab))
    answered = time.monotonic() - killed_at
    holder = one_holder(lab, DB_VIP)
    print(f"db: {active} killed, notes answered through {DB_VIP} again after {answered:.2f} s")

    # The service and its data: every note written before the kill, served by
    # the survivor, which takes new ones.
    assert holder == standby, f"{DB_VIP} is on {lab.holders(DB_VIP)}, not {standby}"
    assert written.items() <= after.items(), sorted(set(written) - set(after))[:5]
    new = post_note(lab, "after the failover")
    assert (copy_of(lab, standby) / f"{new}.note").read_text() == "after the failover"
    status = until("the cluster to see the failover", lambda: serving_alone(lab, standby))
    assert status == standby

    # The notices: the failover at once, the dead node after its `for:`.
    until("the failover notice", lambda: receiver.notices("failover", service="db"))
    until(f"node-down for {active}", lambda: receiver.notices("node-down", node=active))
    assert receiver.notices("failover", service="db")[0]["labels"]["severity"] == "critical"

    # The backup: the survivor backs its copy up, encrypted.
    ask = lab.run(
        "client",
        [sys.executable, "-m", "ninefold", "backup", "run", "db/data", "--wait", "60",
         "--spec", str(block.spec)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ask.returncode == 0, ask.stdout + ask.stderr
    last = backup_of_data(lab, standby) or {}
    assert last.get("ok") and last["node"] == standby, last
    repository = block.spec.parent / "restic"
    blobs = b"".join(p.read_bytes() for p in (repository / "data").rglob("*") if p.is_file())
    assert blobs and b"before the kill" not in blobs, "the backup is not encrypted"

    assert_witness_runs_nothing(lab, standby)
    assert lab.holders(DB_VIP) == [standby]

    # The dead node comes back as the standby (its instance waited, unplaced,
    # rather than go to the witness); the active and the VIP stay.
    lab.start(active)
    lab.wait_up(UP_TIMEOUT)
    assert until("the pair whole again", lambda: serving(lab, "w")) == (standby, active)
    until(
        f"the note written after the failover in {active}'s copy",
        lambda: (copy_of(lab, active) / f"{new}.note").exists(),
    )
    assert lab.holders(DB_VIP) == [standby]
    assert_witness_runs_nothing(lab, standby)
    assert block.sampler.doubles == [], block.sampler.doubles[:5]


def serving_alone(lab: Lab, node: str) -> str | None:
    """`node` when the cluster (asked through it) has db active there."""
    status = lab.cluster_status(node) or {}
    svc = next((s for s in status.get("services", []) if s["name"] == "db"), None)
    if svc is None or not svc.get("active"):
        return None
    return node if str(svc["active"]).startswith(f"{node}/") else None
