"""Measured availability on a real 3-node cluster: every instance of an HTTP
service behind the gateways is killed (SIGKILL) and comes back after its
restart backoff. A client of the test's own polls the three gateways every
20 ms and measures the outage as clients saw it; ninefold's figure (its
nodes' route probes, merged) must be within +-0.5 s of it, and the
incident's cause must name the fault. `ninefold availability` shows it, and
an unknown service is one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

APPS = Path(__file__).parent / "apps"
PY = sys.executable
POLL = 0.02
"""Seconds between two polls of the test's own client, on each gateway."""

SERVICES = f"""
services:
  web:
    command: [{PY}, {APPS / "whoami.py"}, "{{address}}", "{{port}}"]
    replicas: 2
    route: {{http: /web}}
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
    restart: {{backoff: 3s, backoff_max: 3s}}
"""


class Watcher:
    """The test's client: polls every gateway, keeps (time sent, gateway, ok)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.seen: list[tuple[float, int, bool]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, args=(i,), daemon=True) for i in range(len(urls))
        ]

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _poll(self, i: int) -> None:
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    ok = client.get(self.urls[i]).status_code < 500
                except httpx.HTTPError:
                    ok = False
                self.seen.append((sent, i, ok))
                self._stop.wait(max(0.0, POLL - (time.time() - sent)))

    def outage(self, after: float) -> tuple[float, float] | None:
        """(start, end) of the time every gateway failed, after `after`: from
        the last gateway's first failure to the first gateway's recovery,
        each edge the middle of its poll's bracket (at most POLL wide, more
        when a poll thread was held up)."""
        seen = sorted(self.seen)
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        last_ok: dict[int, float] = {}
        last_failed: dict[int, float] = {}
        for sent, i, ok in seen:
            if ok:
                if i in starts and sent < after:
                    del starts[i]  # a failure before the kill, over before it
                elif i in starts and i not in ends:
                    ends[i] = (last_failed[i] + sent) / 2
                last_ok[i] = sent
                continue
            last_failed[i] = sent
            # a poll sent just before the kill may fail with it: from the last success on
            if sent >= after - 1.0 and i not in starts and i in last_ok:
                starts[i] = (last_ok[i] + sent) / 2
        if len(ends) < len(self.urls):
            return None
        return max(starts.values()), min(ends.values())

    def all_served(self) -> bool:
        """Whether each gateway's last poll succeeded."""
        last: dict[int, bool] = {}
        for _sent, i, ok in list(self.seen):
            last[i] = ok
        return len(last) == len(self.urls) and all(last.values())

    def failed(self, start: float, end: float) -> int:
        return sum(1 for sent, _i, ok in self.seen if not ok and start - 1 <= sent <= end + 1)


def api(c: LocalCluster, path: str) -> Any:
    """GET an API path on n1 (quicker than a CLI process on a busy machine)."""
    response = httpx.get(f"http://{c.addresses['n1']}:{c.base + 2}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def availability(c: LocalCluster, service: str = "web") -> dict[str, Any]:
    [measured] = api(c, f"/v1/availability/{service}")["services"]
    assert isinstance(measured, dict)
    return measured


def test_an_outage_is_measured_within_half_a_second_with_its_cause(
    local_cluster: Callable[..., LocalCluster],
) -> None:
    c = local_cluster(SERVICES)
    c.start_all()
    until("web served twice", lambda: len(c.serving("web")) == 2, 60)
    until(
        "every node observing web",
        lambda: availability(c)["observers"] == ["n1", "n2", "n3"],
        30,
    )
    urls = [f"http://{address}:{c.base + 3}/web/" for address in c.addresses.values()]
    with Watcher(urls) as watcher:
        until("every gateway serving the client", watcher.all_served, 20)
        pids = [i["pid"] for i in api(c, "/v1/instances") if i["service"] == "web"]
        assert len(pids) == 2 and all(pids), pids
        killed = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        truth = until("the outage over for the client", lambda: watcher.outage(killed), 30)

    failed = watcher.failed(*truth)
    last: list[dict[str, Any]] = []

    def closed() -> dict[str, Any] | None:
        m = availability(c)
        last[:] = [m]
        done = m["incidents"] and m["incidents"][-1]["end"]
        counted = m["windows"]["1h"]["requests_failed"] >= failed * 0.9
        return m if done and counted else None

    try:
        measured = until("the incident closed and the gateways' counts in", closed, 30)
    except AssertionError:
        raise AssertionError(f"the client failed {failed}; the last answer: {last}") from None
    incident = measured["incidents"][-1]
    true_seconds = truth[1] - truth[0]
    figures = (
        f"injected outage (as the test's client saw it): {true_seconds:.3f}s from "
        f"{truth[0] - killed:+.3f}s after the kill; measured {incident['duration_seconds']:.3f}s "
        f"(start {incident['start'] - truth[0]:+.3f}s, end {incident['end'] - truth[1]:+.3f}s), "
        f"1h downtime {measured['windows']['1h']['downtime_seconds']:.3f}s; the client's "
        f"failed requests {failed}, the gateways' {measured['windows']['1h']['requests_failed']}"
    )
    print(figures)
    assert len(measured["incidents"]) == 1, measured["incidents"]
    assert abs(incident["duration_seconds"] - true_seconds) <= 0.5, figures
    assert abs(incident["start"] - truth[0]) <= 0.5, figures
    assert abs(incident["end"] - truth[1]) <= 0.5, figures
    hour = measured["windows"]["1h"]
    assert abs(hour["downtime_seconds"] - true_seconds) <= 0.5, figures
    assert hour["availability_percent"] < 100 and hour["nines"] is not None
    # the second measure: the gateways' counts of the client's requests (the probes' own out)
    assert hour["requests_answered"] > 0 and hour["request_success_percent"] < 100
    assert abs(hour["requests_failed"] - failed) <= 0.1 * failed + 10, figures
    assert "exited" in incident["cause"] and "SIGKILL" in incident["cause"], incident
    assert "web-0" in incident["cause"] and "web-1" in incident["cause"], incident

    as_json = c.cli("availability", "web", "--json", timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["services"][0]["incidents"] == measured["incidents"]
    table = c.cli("availability", timeout=60)
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    assert "web" in table.stdout and "incidents of web" in table.stdout, table.stdout
    assert "SIGKILL" in table.stdout, table.stdout

    unknown = c.cli("availability", "nope", timeout=60)
    assert unknown.returncode == 2, unknown
    assert unknown.stderr.strip().count("\n") == 0 and "nope" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr
