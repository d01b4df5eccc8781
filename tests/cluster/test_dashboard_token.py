"""The dashboard on a cluster that uses tokens: it asks for one, then shows
the cluster (Debian's chromium through Playwright, against an agent API
served from a thread over the in-memory store)."""

from __future__ import annotations

import httpx
import pytest

from tests.cluster.test_dashboard import CHROMIUM, CHROMIUM_ARGS, expect, sync_api
from tests.helpers import api_in_thread, free_port

pytestmark = pytest.mark.cluster


def test_the_dashboard_asks_for_a_token_and_then_shows_the_cluster() -> None:
    port = free_port()
    spec = (
        "cluster: shop\n"
        f"nodes: [{{name: n1, address: 127.0.0.1, store: true, ports: {{api: {port}}}}}]\n"
    )
    base = f"http://127.0.0.1:{port}"
    with api_in_thread(spec, port):
        admin = httpx.post(f"{base}/v1/bootstrap").json()["token"]
        made = httpx.post(
            f"{base}/v1/tokens",
            json={"role": "read", "name": "dashboard"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        reader = made.json()["token"]
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{base}/ui/")
                form = page.locator("#token-form")
                expect(form).to_be_visible(timeout=10_000)
                expect(page.locator("#conn-text")).to_contain_text("needs a token")
                page.fill("#token-input", reader)
                page.click("#token-form button")
                expect(form).to_be_hidden()
                expect(page.locator("#cluster-name")).to_contain_text("shop", timeout=10_000)
                expect(page.locator("#services")).to_contain_text("web")
                # The token stays out of the address bar.
                assert reader not in page.url
            finally:
                browser.close()
