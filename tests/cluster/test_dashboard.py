"""The dashboard at /ui/ on a real 3-node cluster, in headless Chromium driven by
Playwright (the Python package, with Debian's chromium; no browser download).

The page must show the three nodes and the services, drain a node through its
button and show it drained, undrain it, and chart the gateway's traffic.
`NINEFOLD_SAVE_SCREENSHOT=1` also copies the screenshot to docs/dashboard.png."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
expect = sync_api.expect

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APPS = Path(__file__).parent / "apps"
DOCS = Path(__file__).parents[2] / "docs"
PY = sys.executable

SERVICES = f"""
services:
  web:
    command: [{PY}, {APPS / "whoami.py"}, "{{address}}", "{{port}}"]
    replicas: 2
    route: {{http: /web}}
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
  queue:
    mode: active-passive
    replicas: 2
    command: [{PY}, {APPS / "tcp_echo.py"}, "{{address}}", "{{port}}"]
    check: {{tcp: main, interval: 200ms, rise: 1, fall: 2}}
"""

Factory = Callable[..., LocalCluster]


def api_url(c: LocalCluster, node: str = "n1") -> str:
    return f"http://{c.addresses[node]}:{c.base + 2}"


def settled(c: LocalCluster) -> Callable[[], dict[str, Any] | None]:
    """The API's status once every node is up and every service fully healthy."""

    def probe() -> dict[str, Any] | None:
        status = httpx.get(api_url(c) + "/v1/status", timeout=2).json()
        nodes_up = [n for n in status["nodes"] if n["state"] == "up"]
        healthy = all(s["healthy"] >= s["desired"] for s in status["services"])
        if len(nodes_up) == 3 and status["leader"] and healthy and status["services"]:
            return status
        return None

    return probe


@pytest.fixture
def traffic() -> Iterator[Callable[[str], None]]:
    """Steady requests through a gateway, so the traffic chart has something to show."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def run(url: str) -> None:
        with httpx.Client(timeout=2) as client:
            while not stop.wait(0.02):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(url)

    def start(url: str) -> None:
        thread = threading.Thread(target=run, args=(url,), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)


def test_dashboard_shows_the_cluster_and_drains_a_node(
    local_cluster: Factory, traffic: Callable[[str], None], tmp_path: Path
) -> None:
    c = local_cluster(SERVICES)
    c.start_all()
    status = until("the API to report a settled cluster", settled(c), 60, 0.3)
    traffic(f"http://{c.addresses['n1']}:{c.base + 3}/web/")
    victim = next(n["name"] for n in status["nodes"] if not n["leader"])
    errors: list[str] = []

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(api_url(c) + "/ui/")

            for node in c.addresses:
                expect(page.locator(f'.node[data-node="{node}"]')).to_have_attribute(
                    "data-state", "up"
                )
            leader = page.locator('.node[data-leader="true"]')
            expect(leader).to_have_count(1)
            expect(leader.locator(".star")).to_have_text("★")
            web = page.locator('#services tr[data-service="web"]')
            expect(web).to_have_attribute("data-healthy", "2")
            expect(web).to_have_attribute("data-desired", "2")
            queue = page.locator('#services tr[data-service="queue"]')
            expect(queue.locator("[data-active]")).to_have_count(1)
            expect(queue.locator('[data-action="switchover"]')).to_be_visible()
            expect(page.locator("#instances tr[data-instance]")).to_have_count(4)
            expect(page.locator("#events li").first).to_be_visible()

            card = page.locator(f'.node[data-node="{victim}"]')
            card.locator('[data-action="drain"]').click()
            expect(card).to_have_attribute("data-state", "drained", timeout=15_000)
            expect(page.locator('.message[data-kind="ok"]').first).to_be_visible()
            expect(card.locator('[data-action="undrain"]')).to_be_visible()
            # Nothing is left on a drained node.
            expect(page.locator(f'#instances tr[data-node="{victim}"]')).to_have_count(
                0, timeout=20_000
            )

            card.locator('[data-action="undrain"]').click()
            expect(card).to_have_attribute("data-state", "up", timeout=15_000)
            expect(web).to_have_attribute("data-healthy", "2", timeout=20_000)
            expect(queue).to_have_attribute("data-healthy", "2", timeout=20_000)
            # Rates need two scrapes of n1's /metrics with traffic in between.
            rate = page.locator('[data-chart="web"] [data-rate="requests"]')
            expect(rate).not_to_have_text("0.00", timeout=10_000)

            # Measured availability: a row per routed service.
            expect(page.locator('#availability tr[data-availability-service="web"]')).to_be_visible(
                timeout=15_000
            )

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert shot.stat().st_size > 10_000
    assert errors == [], errors
    if os.environ.get("NINEFOLD_SAVE_SCREENSHOT") == "1":
        shutil.copy(shot, DOCS / "dashboard.png")
