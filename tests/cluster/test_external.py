"""External services on a real 3-node cluster, both gateway engines: two HTTP
servers on loopback that ninefold does not run stand for an external
service's endpoints. Every node checks them; every gateway routes to them by
HTTP path and by a TCP port; when one is killed, each node's checks find it
down, the gateways send everything to the other, and `ninefold status`
shows it down with why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until
from tests.helpers import free_ports, wait_for_port

pytestmark = pytest.mark.cluster

WHOAMI = Path(__file__).parent / "apps" / "whoami.py"
Factory = Callable[..., LocalCluster]

ENGINES = [
    "builtin",
    pytest.param(
        "haproxy",
        marks=pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy binary"),
    ),
]


@pytest.fixture
def servers() -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    """Two HTTP servers on 127.0.0.1 answering with their name (`ext-a`,
    `ext-b`): the external endpoints. Killed afterwards."""
    started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for name, port in zip(("ext-a", "ext-b"), free_ports(2), strict=True):
        proc = subprocess.Popen(
            [sys.executable, str(WHOAMI), "127.0.0.1", str(port)],
            env=dict(os.environ, NINEFOLD_INSTANCE=name),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started[name] = (proc, port)
    try:
        for _, port in started.values():
            wait_for_port("127.0.0.1", port)
        yield started
    finally:
        for proc, _ in started.values():
            proc.kill()
            proc.wait()


def services(engine: str, a: int, b: int) -> str:
    return f"""
gateway: {{engine: {engine}}}
services:
  ext:
    external: ["127.0.0.1:{a}", "127.0.0.1:{b}"]
    route: {{http: /ext}}
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
  extdb:
    external: ["127.0.0.1:{a}", "127.0.0.1:{b}"]
    route: {{tcp: @TCPPORT@}}
    check: {{tcp: true, interval: 200ms, rise: 1, fall: 2}}
"""


def endpoints(c: LocalCluster) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["service"], e["endpoint"]): e for e in c.status().get("external", [])}


def names_over_http(url: str, count: int = 12) -> list[str]:
    with httpx.Client(timeout=5, trust_env=False) as http:
        answers = [http.get(url) for _ in range(count)]
    assert all(r.status_code == 200 for r in answers), [r.status_code for r in answers]
    return [r.text.split()[0] for r in answers]


def names_over_tcp(address: str, port: int, count: int = 8) -> list[str]:
    """One HTTP/1.0 request per connection through the gateway's TCP port."""
    names = []
    for _ in range(count):
        with socket.create_connection((address, port), timeout=5) as sock:
            sock.sendall(b"GET /db HTTP/1.0\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        names.append(reply.split(b"\r\n\r\n", 1)[1].split()[0].decode())
    return names


@pytest.mark.parametrize("engine", ENGINES)
def test_gateways_route_to_external_endpoints_and_around_a_dead_one(
    local_cluster: Factory,
    servers: dict[str, tuple[subprocess.Popen[bytes], int]],
    engine: str,
) -> None:
    (proc_a, a), (proc_b, b) = servers["ext-a"], servers["ext-b"]
    c = local_cluster(services(engine, a, b))
    c.start_all()
    ea, eb = f"127.0.0.1:{a}", f"127.0.0.1:{b}"

    def all_nodes_see(service: str, endpoint: str, health: str) -> bool:
        e = endpoints(c).get((service, endpoint))
        return e is not None and e["health"] == health and len(e["nodes"]) == 3

    for service in ("ext", "extdb"):
        for endpoint in (ea, eb):
            until(f"{service} {endpoint} healthy from every node",
                  lambda s=service, e=endpoint: all_nodes_see(s, e, "healthy"), 90)  # fmt: skip
    status = c.status()
    ext = next(s for s in status["services"] if s["name"] == "ext")
    assert (ext["mode"], ext["healthy"], ext["desired"]) == ("external", 2, 2)
    assert not [i for i in status["instances"] if i["service"] in ("ext", "extdb")]

    # through every node's gateway, by HTTP path and by TCP port, to both servers
    for node, address in c.addresses.items():
        url = f"http://{address}:{c.base + 3}/ext/hello"
        until(f"both endpoints answer through {node}",
              lambda u=url: set(names_over_http(u)) == {"ext-a", "ext-b"}, 30)  # fmt: skip
    with httpx.Client(timeout=5, trust_env=False) as http:
        assert http.get(f"http://127.0.0.2:{c.base + 3}/ext/hello").text.split()[1] == "/hello"
    both = {"ext-a", "ext-b"}
    until("both endpoints answer through n3's TCP port",
          lambda: set(names_over_tcp("127.0.0.3", c.tcp_port)) == both, 30)  # fmt: skip

    # one endpoint dies: every node finds it down, the status says so and why
    proc_b.kill()
    proc_b.wait()
    for service in ("ext", "extdb"):
        until(f"{service} {eb} down from every node",
              lambda s=service: all_nodes_see(s, eb, "unhealthy"), 30)  # fmt: skip
    down = endpoints(c)[("ext", eb)]
    assert set(down["nodes"].values()) == {"unhealthy"}
    assert eb in down["detail"] and down["detail"].split(":")[0] in c.addresses
    assert endpoints(c)[("ext", ea)]["health"] == "healthy"
    ext = next(s for s in c.status()["services"] if s["name"] == "ext")
    assert (ext["healthy"], ext["desired"]) == (1, 2)

    # ... and every gateway sends everything to the live one
    for address in c.addresses.values():
        url = f"http://{address}:{c.base + 3}/ext/"
        until(f"only ext-a behind {address}",
              lambda u=url: set(names_over_http(u)) == {"ext-a"}, 30)  # fmt: skip
        assert set(names_over_http(url, 30)) == {"ext-a"}
        assert set(names_over_tcp(address, c.tcp_port)) == {"ext-a"}

    table = c.cli("status")
    assert table.returncode == 0, table.stderr
    assert "external endpoints" in table.stdout
    row = next(line for line in table.stdout.splitlines() if eb in line and "ext " in line)
    assert "unhealthy" in row and "n1=unhealthy" in row
    kinds = {(e["kind"], e["subject"]) for e in c.events()}
    assert ("endpoint-down", f"ext@{eb}") in kinds
    refused = c.cli("restart", "ext")
    assert refused.returncode != 0 and "external" in refused.stderr + refused.stdout
    assert proc_a.poll() is None
    if engine == "builtin":  # the dashboard does not depend on the engine
        dashboard_shows(c, ea, eb)


def dashboard_shows(c: LocalCluster, live: str, dead: str) -> None:
    """The dashboard's External endpoints panel: one row per endpoint with
    the cluster's word and a pill per node (with Debian's chromium)."""
    if not Path("/usr/bin/chromium").exists():
        return
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://{c.addresses['n2']}:{c.base + 2}/ui/")
            panel = page.locator("#external-panel")
            expect(panel).to_be_visible()
            row = panel.locator(f'tr[data-service="ext"][data-endpoint="{dead}"]')
            expect(row).to_have_attribute("data-health", "unhealthy")
            expect(row.locator(".pill.bad[data-node]")).to_have_count(3)
            expect(panel.locator(f'tr[data-endpoint="{live}"]').first).to_have_attribute(
                "data-health", "healthy"
            )
            ext = page.locator('#services tr[data-service="ext"]')
            expect(ext).to_have_attribute("data-mode", "external")
            expect(ext).to_have_attribute("data-healthy", "1")
            expect(ext.locator('[data-action="restart"]')).to_have_count(0)
            assert not errors, errors
        finally:
            browser.close()
