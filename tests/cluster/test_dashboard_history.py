"""The dashboard's history plots on a real 3-node cluster, in headless Chromium
(Playwright, Debian's chromium): every node's CPU and memory, the routed
service's requests/s, errors/s, p99 latency and healthy instances, with a line
per node and data points in them, for each of the 15 min, 1 h and 24 h windows.

The agents sample every 0.2 s here ($NINEFOLD_HISTORY_INTERVAL) instead of 10 s.
`NINEFOLD_SAVE_SCREENSHOT=1` also copies the panel's screenshot to
docs/dashboard-history.png."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until
from tests.cluster.test_dashboard import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS,
    SERVICES,
    api_url,
    settled,
    sync_api,
    traffic,
)

pytestmark = pytest.mark.cluster
expect = sync_api.expect
__all__ = ["traffic"]  # the fixture, imported for this module's tests

Factory = Callable[..., LocalCluster]
# queue's active mirrors a volume to its standby: the lag series of the history
WITH_VOLUME = SERVICES.replace(
    "    check: {tcp: main, interval: 200ms, rise: 1, fall: 2}\n",
    "    check: {tcp: main, interval: 200ms, rise: 1, fall: 2}\n"
    "    volumes: {data: {replicate: continuous}}\n",
)
assert WITH_VOLUME != SERVICES


def cluster_history(c: LocalCluster) -> Callable[[], dict[str, Any] | None]:
    """GET /v1/history?scope=cluster once all three nodes have rates of `web`
    and a node has the lag of queue's volume."""

    def probe() -> dict[str, Any] | None:
        answer: dict[str, Any] = httpx.get(
            api_url(c) + "/v1/history", params={"window": "15m", "scope": "cluster"}, timeout=5
        ).json()
        if len(answer["nodes"]) != 3:
            return None
        kinds = {s["kind"] for node in answer["nodes"] for s in node["series"]}
        if "volume" not in kinds:
            return None
        for node in answer["nodes"]:
            rates = [
                s
                for s in node["series"]
                if s["subject"] == "web" and s["metric"] == "requests_per_second"
            ]
            if not rates or not any(v for v in rates[0]["values"] if v is not None):
                return None
        return answer

    return probe


def test_history_plots_every_node_and_service(
    local_cluster: Factory,
    traffic: Callable[[str], None],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("NINEFOLD_HISTORY_INTERVAL", "0.2")
    c = local_cluster(WITH_VOLUME)
    c.start_all()
    until("the API to report a settled cluster", settled(c), 60, 0.3)
    for node in ("n1", "n2", "n3"):  # traffic through every node's gateway
        traffic(f"http://{c.addresses[node]}:{c.base + 3}/web/")
    answer = until("every node's history to have web's rates", cluster_history(c), 30, 0.3)
    assert answer["unreachable"] == []
    n1 = answer["nodes"][0]
    metrics = {(s["kind"], s["subject"], s["metric"]) for s in n1["series"]}
    assert {
        ("node", "n1", "cpu_ratio"),
        ("node", "n1", "memory_ratio"),
        ("service", "web", "requests_per_second"),
        ("service", "web", "errors_per_second"),
        ("service", "web", "p99_seconds"),
    } <= metrics
    # healthy instances: the nodes that run an instance of web have the series
    assert any(
        s["metric"] == "healthy_instances" and s["subject"] == "web"
        for node in answer["nodes"]
        for s in node["series"]
    )
    errors: list[str] = []

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(api_url(c) + "/ui/")
            for window in ("24h", "1h", "15m"):  # 15m last: the screenshot
                page.locator(f'#history-window button[data-window="{window}"]').click()
                expect(
                    page.locator(f'#history-window button[data-window="{window}"]')
                ).to_have_class("on")
                # the plots below are the answer for this window, not the last one's
                panel = page.locator("#history-panel")
                expect(panel).to_have_attribute("data-window", window)
                cpu = page.locator('[data-plot="node:cpu_ratio"]')
                expect(cpu.locator("path[data-node]")).to_have_count(3)
                expect(page.locator('[data-plot="node:memory_ratio"]')).to_be_visible()
                web = page.locator('[data-history-service="web"]')
                for metric in ("requests_per_second", "errors_per_second", "p99_seconds"):
                    plot = web.locator(f'[data-plot="service:web:{metric}"]')
                    expect(plot.locator("path[data-node]")).to_have_count(3)
                    expect(plot).not_to_have_attribute("data-points", "0")
                expect(web.locator('[data-plot="service:web:healthy_instances"]')).to_be_visible()
                expect(page.locator("#history-legend [data-legend]")).to_have_count(3)
                lag = page.locator('#history-volumes [data-plot^="volume:queue/data to "]')
                expect(lag.first).to_be_visible()
                expect(lag.first).not_to_have_attribute("data-points", "0")
                # a plotted line has points: its path draws a line or a dot
                drawn = web.locator('[data-plot="service:web:requests_per_second"] path').first
                expect(drawn).to_have_attribute("d", _non_empty_path())
            shot = tmp_path / "history.png"
            page.locator("#history-panel").screenshot(path=str(shot))
            if os.environ.get("NINEFOLD_SAVE_SCREENSHOT") == "1":
                shutil.copy(shot, DOCS / "dashboard-history.png")
        finally:
            browser.close()
    assert shot.stat().st_size > 5_000
    assert errors == [], errors


def _non_empty_path() -> re.Pattern[str]:
    return re.compile(r"^M[0-9.]+,[0-9.]+[Lh]")
