"""`ninefold prometheus-config` (cli/observe.py): the scrape configuration and
its file_sd targets from a spec, checked by Debian's `promtool check config`
(which also reads the targets file)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ninefold.api import ApiServer, create_app
from ninefold.cli.main import app
from ninefold.cli.observe import file_sd_targets, scrape_config
from ninefold.spec import parse_spec
from ninefold.state.keys import SPEC_KEY
from ninefold.store.memory import MemoryStore
from tests.helpers import free_ports

runner = CliRunner()
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

PLAIN = """\
cluster: shop
nodes:
  - {name: n1, address: 127.0.0.1, zone: a, region: eu, store: true}
  - {name: n2, address: 127.0.0.2, zone: b, store: true}
  - {name: n3, address: "::1", zone: c, store: true, ports: {api: 7171}}
"""
TLS = "security: {tls: {ca: ca.crt}}\n" + PLAIN


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ninefold.yaml"
    path.write_text(text)
    (tmp_path / "ca.crt").write_text("not checked here\n")
    return path


def test_targets_name_every_node_with_its_labels() -> None:
    targets = file_sd_targets(parse_spec(PLAIN))
    assert targets == [
        {
            "targets": ["127.0.0.1:7070"],
            "labels": {"node": "n1", "zone": "a", "region": "eu", "cluster": "shop"},
        },
        {
            "targets": ["127.0.0.2:7070"],
            "labels": {"node": "n2", "zone": "b", "region": "default", "cluster": "shop"},
        },
        {
            "targets": ["[::1]:7171"],
            "labels": {"node": "n3", "zone": "c", "region": "default", "cluster": "shop"},
        },
    ]


def test_plain_cluster_is_scraped_over_http() -> None:
    config = scrape_config(parse_spec(PLAIN), "t.json")
    (job,) = config["scrape_configs"]
    assert job["scheme"] == "http" and job["metrics_path"] == "/metrics"
    assert job["honor_labels"] is True
    assert "tls_config" not in job and "authorization" not in job
    assert job["file_sd_configs"] == [{"files": ["t.json"], "refresh_interval": "1m"}]


def test_tls_cluster_is_scraped_over_https_trusting_the_ca() -> None:
    config = scrape_config(
        parse_spec(TLS), "t.json", cert_file="/c.pem", token_file="/tok", ca_file="/ca.crt"
    )
    (job,) = config["scrape_configs"]
    assert job["scheme"] == "https"
    assert job["tls_config"] == {"ca_file": "/ca.crt", "cert_file": "/c.pem", "key_file": "/c.pem"}
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/tok"}


def test_command_writes_the_targets_and_prints_the_config(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, TLS)
    targets = tmp_path / "sd" / "ninefold.json"
    result = runner.invoke(
        app, ["prometheus-config", "-s", str(spec), "--file-sd", str(targets), "--job", "nf"]
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "nf"
    assert job["tls_config"]["ca_file"] == str(tmp_path / "ca.crt")
    assert job["file_sd_configs"][0]["files"] == [str(targets)]
    assert [g["labels"]["node"] for g in json.loads(targets.read_text())] == ["n1", "n2", "n3"]
    assert "wrote 3 target(s)" in result.stderr


def test_command_prints_only_the_targets(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prometheus-config", "-s", str(write_spec(tmp_path, PLAIN))])
    assert result.exit_code == 0
    assert "ninefold-shop.json" in result.stdout and "--targets" in result.stderr
    listing = runner.invoke(
        app, ["prometheus-config", "-s", str(tmp_path / "ninefold.yaml"), "--targets"]
    )
    assert listing.exit_code == 0
    assert json.loads(listing.stdout) == file_sd_targets(parse_spec(PLAIN))


def test_key_without_cert_is_a_usage_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, TLS)
    result = runner.invoke(app, ["prometheus-config", "-s", str(spec), "--key", "k.pem"])
    assert result.exit_code == 2
    assert "--key needs --cert" in result.stderr


@pytest.mark.process
@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="no promtool (apt-get install prometheus)")
@pytest.mark.parametrize("text", [PLAIN, TLS], ids=["plain", "tls"])
def test_promtool_accepts_the_config_and_the_targets(tmp_path: Path, text: str) -> None:
    spec = write_spec(tmp_path, text)
    token = tmp_path / "token"
    token.write_text("nf1.x.y\n")
    targets = tmp_path / "prometheus" / "ninefold-shop.json"
    result = runner.invoke(
        app,
        [
            "prometheus-config",
            "-s",
            str(spec),
            "--file-sd",
            str(targets),
            "--token-file",
            str(token),
        ],
    )
    assert result.exit_code == 0, result.output
    config = tmp_path / "prometheus" / "prometheus.yml"
    config.write_text(result.stdout)
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr
    # promtool reads the targets file too: a broken one fails the same check
    targets.write_text(json.dumps([{"targets": ["n1:7070"], "labels": {"0bad": "x"}}]))
    broken = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode != 0 and "not a valid label name" in broken.stdout + broken.stderr


@contextlib.contextmanager
def api_serving(spec_text: str, stored: str, port: int) -> Iterator[None]:
    """An agent's API on 127.0.0.1:`port` whose store holds the spec `stored`,
    served from a thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        store = MemoryStore()
        await store.put(SPEC_KEY, stored.encode())
        server = ApiServer(create_app(store, parse_spec(spec_text), "n1"), "127.0.0.1", port)
        assert await server.start()
        ready.set()
        await stop.wait()
        await server.stop()
        await store.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"the API did not start on 127.0.0.1:{port}")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        with contextlib.suppress(Exception):
            loop.close()


def one_node(port: int) -> str:
    return (
        "cluster: shop\nnodes:\n"
        f"  - {{name: n1, address: 127.0.0.1, store: true, ports: {{api: {port}}}}}\n"
    )


def test_from_cluster_takes_the_nodes_of_the_stored_spec(tmp_path: Path) -> None:
    """A node that joined is in the stored spec, not in the local file."""
    (port,) = free_ports(1)
    local = one_node(port)
    stored = local + "  - {name: n4, address: 127.0.0.4, zone: d}\n"
    spec = write_spec(tmp_path, local)
    with api_serving(local, stored, port):
        result = runner.invoke(
            app, ["prometheus-config", "-s", str(spec), "--from-cluster", "--targets"]
        )
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert [g["labels"]["node"] for g in groups] == ["n1", "n4"]
    assert groups[1]["targets"] == ["127.0.0.4:7070"]


def test_from_cluster_when_no_agent_answers(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    local = one_node(port)
    result = runner.invoke(
        app, ["prometheus-config", "-s", str(write_spec(tmp_path, local)), "--from-cluster"]
    )
    assert result.exit_code == 3
    assert "unreachable" in result.stderr
