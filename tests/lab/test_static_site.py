"""Seed 003's web site (`examples/static-site.yaml`) in the lab, unmodified.

Two replicas of a static web server share a docroot mirrored from web-0's
copy to the other replica; every node's gateway balances them and the node
holding 10.99.0.10 answers the client, as keepalived's pair did in the seed.
The test measures what the seed measured: how long the mirror takes to carry
a change (seed 003: rsync from cron every 5 min) and how long the site is
unreachable through the floating address when its holder dies (keepalived's
defaults: about 3.6 s). `bench/seeds.py` calls the same two measurements and
prints them next to the seed's figures; here they are printed, not asserted
against a time (speed goals live in bench/).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ninefold.lab import Lab
from tests.lab.conftest import UP_TIMEOUT, assert_gone
from tests.lab.test_vip import HolderSampler, one_holder, poll

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "static-site.yaml"
SITE_VIP = "10.99.0.10"
SITE_URL = f"http://{SITE_VIP}:8080/"


def docroot(lab: Lab, node: str) -> Path:
    """The node's copy of web's `docroot` volume (no `path:` in the example)."""
    return lab.data_dir(node) / "volumes" / "web" / "docroot"


def web_nodes(lab: Lab, via: str) -> tuple[str, str] | None:
    """(node of web-0, node of the other replica) once both are healthy."""
    status = lab.cluster_status(via) or {}
    healthy = {
        i["instance"]: i["node"]
        for i in status.get("instances", [])
        if i["service"] == "web" and i["state"] == "running" and i["health"] == "healthy"
    }
    others = [node for name, node in healthy.items() if name != "web-0"]
    if "web-0" not in healthy or len(others) != 1:
        return None
    return healthy["web-0"], others[0]


def site_body(lab: Lab, timeout: float = 0.5) -> bytes | None:
    """index.html through the floating address, or None when it does not answer 200."""
    try:
        status, body = lab.http_get("client", SITE_URL + "index.html", timeout)
    except OSError:
        return None
    return body if status == 200 else None


def mirror_lag(lab: Lab, source: str, copy: str, text: str, timeout: float = 30.0) -> float:
    """Seconds from writing index.html (atomically) in `source`'s docroot until
    `copy`'s docroot holds the same bytes, polled every 5 ms."""
    data = text.encode()
    target = docroot(lab, copy) / "index.html"
    staged = docroot(lab, source) / ".index.html.new"
    staged.write_bytes(data)
    began = time.monotonic()
    staged.rename(docroot(lab, source) / "index.html")
    deadline = began + timeout
    while time.monotonic() < deadline:
        try:
            if target.read_bytes() == data:
                return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"{copy}'s copy of index.html did not follow {source}'s in {timeout} s")


@dataclass
class SiteClient:
    """Sequential GETs of index.html through the floating address from the
    client namespace, a new connection each, 0.5 s timeout: the longest time
    between two answers with the expected body, and the failures."""

    lab: Lab
    expected: bytes
    interval: float = 0.02
    answers: list[float] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SiteClient:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            if site_body(self.lab) == self.expected:
                self.answers.append(time.monotonic())
            else:
                self.failures += 1
            self._stop.wait(self.interval)

    def answered_since(self, moment: float) -> bool:
        return any(t > moment for t in list(self.answers))

    def longest_gap(self, since: float) -> float:
        """The longest time between two good answers, counting from the last
        good answer before `since`."""
        times = list(self.answers)
        before = [t for t in times if t <= since]
        after = [t for t in times if t > since]
        points = before[-1:] + after
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def settled(lab: Lab, expected: bytes, avoid: str | None = None) -> str:
    """The floating address's one holder (not `avoid`), once the client gets the
    expected page through it and its ARP entry points at the holder's MAC."""
    holder = poll(
        f"{SITE_VIP} on one node other than {avoid}",
        lambda: (h := one_holder(lab, SITE_VIP)) is not None and h != avoid and h,
    )
    assert isinstance(holder, str)
    poll("the site through the VIP", lambda: site_body(lab) == expected)
    mac = lab.mac(holder)
    poll(
        f"the client's ARP entry for {SITE_VIP} -> {mac}",
        lambda: lab.client_neighbor(SITE_VIP) == mac,
    )
    return holder


@dataclass
class VipMove:
    old: str
    new: str
    gap: float
    failures: int


def vip_move_after_kill(lab: Lab, expected: bytes) -> VipMove:
    """Kill every process of the floating address's holder; the longest time the
    client saw no good answer, and where the address went. The killed node is
    started again and the cluster waited for before returning."""
    old = settled(lab, expected)
    with SiteClient(lab, expected) as client:
        started = time.monotonic()
        poll("the site answering through the VIP", lambda: client.answered_since(started))
        killed_at = time.monotonic()
        lab.kill(old)
        new = settled(lab, expected, avoid=old)
        moved = time.monotonic()
        poll("the site answering again", lambda: client.answered_since(moved))
    move = VipMove(old, new, client.longest_gap(killed_at), client.failures)
    lab.start(old)
    lab.wait_up(UP_TIMEOUT)
    return move


@pytest.fixture(scope="module")
def site(lab_root: Path, links_before: set[str]) -> Iterator[tuple[Lab, HolderSampler]]:
    made = Lab.up(EXAMPLE, progress=print, wait=UP_TIMEOUT)
    try:
        with HolderSampler(made, (SITE_VIP,)) as sampler:
            yield made, sampler
        assert sampler.samples > 50, sampler.errors[:3]
        assert sampler.doubles == [], f"the site's VIP was on two nodes: {sampler.doubles[:5]}"
    finally:
        made.down()
        assert_gone(made.id, made.state_dir, links_before)


def test_a_change_is_mirrored_and_the_site_survives_its_vip_holders_death(
    site: tuple[Lab, HolderSampler],
) -> None:
    lab, _ = site
    nodes = poll("web 2/2 healthy on two nodes", lambda: web_nodes(lab, lab.nodes[0]), 60.0)
    assert isinstance(nodes, tuple)
    source, copy = nodes

    lags = [mirror_lag(lab, source, copy, f"<h1>version {n}</h1>\n") for n in range(5)]
    print(f"mirror lag {source} -> {copy}: " + ", ".join(f"{lag:.3f}" for lag in lags) + " s")
    expected = b"<h1>version 4</h1>\n"
    # Both replicas serve the last version, whichever the gateway picks.
    for _ in range(6):
        poll("the last version through the VIP", lambda: site_body(lab) == expected)

    move = vip_move_after_kill(lab, expected)
    print(
        f"VIP {SITE_VIP} moved {move.old} -> {move.new}: longest gap {move.gap:.2f} s, "
        f"{move.failures} failed requests"
    )
    assert move.new != move.old
    # The site's content survived: after the move, and with the killed node
    # back, the site serves the last version written before the kill.
    poll("the last version after the move", lambda: site_body(lab) == expected)
    assert (docroot(lab, copy) / "index.html").read_bytes() == expected
