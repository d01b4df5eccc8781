"""`ninefold doctor`: each preflight check on real things (sockets bound on
loopback, small HTTP servers playing agents, fake binaries on a PATH of the
test's own, a temporary data directory), and the command end to end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ninefold import defaults, doctor
from ninefold.cli.console import EXIT_FAILED, EXIT_USAGE
from ninefold.cli.main import app
from ninefold.doctor import (
    CHECKS,
    Capabilities,
    Finding,
    NodeChoiceError,
    Target,
    check_address,
    check_capabilities,
    check_clock,
    check_data_dir,
    check_disk,
    check_etcd,
    check_haproxy,
    check_ip,
    check_name,
    check_ports,
    check_rsync,
    check_setpriv,
    pick_node,
    run_checks,
)
from ninefold.spec import ClusterSpec, parse_spec
from ninefold.store.etcd_versions import etcd_warnings
from tests.helpers import api_in_thread, free_port, free_ports

runner = CliRunner()


EXTERNAL = "{mode: external, endpoints: [x:2379]}"


def make_spec(*nodes: str, extra: str = "", store: str = EXTERNAL) -> ClusterSpec:
    """A spec of `nodes` (YAML flow mappings) and `extra` top-level keys."""
    lines = ["cluster: doc", f"store: {store}", "nodes:"]
    lines += [f"  - {node}" for node in nodes]
    return parse_spec("\n".join(lines) + "\n" + extra, "spec.yaml")


def target(spec: ClusterSpec, node: str, tmp_path: Path) -> Target:
    return Target(spec, spec.node(node), tmp_path / "data", Path("spec.yaml"))


def one_node(tmp_path: Path, extra: str = "", **node: Any) -> Target:
    fields = {"name": "n1", "address": "127.0.0.1", **node}
    text = "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"
    return target(make_spec(text, extra=extra), "n1", tmp_path)


def agent_spec(api: int) -> str:
    """The spec a real agent API of node n1 on 127.0.0.1:`api` runs with."""
    node = f"{{name: n1, address: 127.0.0.1, store: true, ports: {{api: {api}}}}}"
    return f"cluster: doc\nnodes:\n  - {node}\n"


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that is the whole PATH: put fake commands in it."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def fake_command(bin_dir: Path, name: str, output: str) -> Path:
    script = bin_dir / name
    lines = "".join(f"echo '{line}'\n" for line in output.splitlines())  # PATH has no cat
    script.write_text(f"#!/bin/sh\n{lines}")
    script.chmod(0o755)
    return script


# --- running them ----------------------------------------------------------------------


def test_every_check_runs_and_a_broken_one_is_a_finding(tmp_path: Path) -> None:
    def check_broken(t: Target) -> Finding:
        raise RuntimeError("boom")

    t = one_node(tmp_path)
    findings = run_checks(t, [check_address, check_broken])
    assert [f.check for f in findings] == ["address", "broken"]
    assert findings[1] == Finding(
        "broken",
        "fail",
        "the check itself failed: RuntimeError: boom",
        "report this as a ninefold bug",
    )
    names = [check_name(c) for c in CHECKS]
    assert names == [
        "address", "ports", "etcd", "haproxy", "ip", "capabilities",
        "setpriv", "rsync", "clock", "disk", "data dir",
    ]  # fmt: skip


# --- 8. the node's address --------------------------------------------------------------


def test_address_on_this_machine_or_loopback(tmp_path: Path) -> None:
    finding = check_address(one_node(tmp_path, address="127.0.0.77"))
    assert finding.status == "ok"
    assert finding.detail == "127.0.0.77 (node n1) is local (every loopback address is)"


def test_address_elsewhere_fails_naming_the_spec_key(tmp_path: Path) -> None:
    spec = make_spec("{name: n1, address: 127.0.0.1}", "{name: n2, address: 192.0.2.77}")
    finding = check_address(target(spec, "n2", tmp_path))
    assert finding.status == "fail"
    assert finding.detail.startswith("192.0.2.77 (node n2) is on no interface of this machine (")
    assert finding.fix == (
        "add it (ip addr add 192.0.2.77/PREFIX dev IFACE), run this on the node's own "
        "machine, or correct nodes[1].address in spec.yaml"
    )


def test_the_node_is_the_one_whose_address_is_here() -> None:
    spec = make_spec("{name: n1, address: 192.0.2.1}", "{name: n2, address: 192.0.2.2}")
    assert pick_node(spec, local={"192.0.2.2", "10.0.0.1"}).name == "n2"
    with pytest.raises(NodeChoiceError, match=r"^no node of the spec has its address on this"):
        pick_node(spec, local={"10.0.0.1"})
    local = make_spec("{name: n1, address: 127.0.0.1}", "{name: n2, address: 127.0.0.2}")
    with pytest.raises(NodeChoiceError) as raised:
        pick_node(local, local=set())
    assert str(raised.value) == (
        "several nodes of the spec have their address on this machine: n1 (127.0.0.1), "
        "n2 (127.0.0.2); say which one this is with --node NAME"
    )


# --- 5. ports -------------------------------------------------------------------------------


def test_listen_ports_follow_the_spec(tmp_path: Path) -> None:
    spec = make_spec(
        "{name: n1, address: 127.0.0.1, store: true}",
        store="{mode: embedded}",
        extra=(
            "gateway: {tls: {port: 9443}}\n"
            "security: {tls: {ca: /nonexistent/ca.crt}}\n"
            "services:\n  db: {command: [db], route: {tcp: 5432}}\n"
        ),
    )
    assert spec.listen_ports(spec.node("n1")) == [
        ("api", 7070),
        ("store_client", 2379),
        ("store_peer", 2380),
        ("gateway_http", 8080),
        ("gateway.tls", 9443),
        ("services.db.route.tcp", 5432),
        ("mesh", 8444),
    ]
    quiet = make_spec(
        "{name: n1, address: 127.0.0.1, store: true}", extra="gateway: {enabled: false}"
    )
    assert quiet.listen_ports(quiet.node("n1")) == [("api", 7070)]  # external store, no gateway


def test_free_ports_pass(tmp_path: Path) -> None:
    api, gw = free_ports(2, "127.0.0.1")
    finding = check_ports(one_node(tmp_path, ports=f"{{api: {api}, gateway_http: {gw}}}"))
    assert finding == Finding("ports", "ok", f"free on 127.0.0.1: api {api}, gateway_http {gw}")


def test_a_port_in_use_fails_naming_it_and_its_holder(tmp_path: Path) -> None:
    api, gw = free_ports(2, "127.0.0.1")
    t = one_node(tmp_path, ports=f"{{api: {api}, gateway_http: {gw}}}")
    with socket.create_server(("127.0.0.1", gw)):
        finding = check_ports(t)
    assert finding.status == "fail"
    assert finding.detail.startswith(f"in use on 127.0.0.1: gateway_http {gw} (")
    assert finding.detail.endswith(f" pid {os.getpid()})")  # this test holds it
    assert finding.fix == (
        "stop what holds them, or give the node other ports (nodes[0].ports in spec.yaml)"
    )


def test_ports_held_by_the_nodes_own_running_agent_pass(tmp_path: Path) -> None:
    api, gw = free_ports(2, "127.0.0.1")
    t = one_node(tmp_path, ports=f"{{api: {api}, gateway_http: {gw}}}")
    text = agent_spec(api)
    with api_in_thread(text, api):  # the API of a running agent of n1
        finding = check_ports(t)
    assert finding.status == "ok"
    assert finding.detail == (
        f"held by node n1's running agent (answers at http://127.0.0.1:{api}): api {api}"
    )


# --- 1. etcd --------------------------------------------------------------------------------

EMBEDDED = "{mode: embedded}"


def store_member(tmp_path: Path) -> Target:
    spec = make_spec("{name: n1, address: 127.0.0.1, store: true}", store=EMBEDDED)
    return target(spec, "n1", tmp_path)


@pytest.fixture
def no_etcd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NINEFOLD_ETCD", raising=False)
    monkeypatch.setattr("ninefold.store.etcd_binary.wheel_etcd", lambda: None)


@pytest.mark.process
def test_etcd_found_with_its_version_source_and_path(
    tmp_path: Path, bin_dir: Path, no_etcd_env: None
) -> None:
    good = "3.5.99"
    assert etcd_warnings(good) == []
    etcd = fake_command(bin_dir, "etcd", f"etcd Version: {good}\nGit SHA: 0\nGo Version: go1.21")
    assert check_etcd(store_member(tmp_path)) == Finding(
        "etcd", "ok", f"etcd {good} (system, {etcd})"
    )


@pytest.mark.process
def test_an_old_etcd_warns(tmp_path: Path, bin_dir: Path, no_etcd_env: None) -> None:
    etcd = fake_command(bin_dir, "etcd", "etcd Version: 3.3.27")
    finding = check_etcd(store_member(tmp_path))
    assert finding.status == "warn"
    warnings = etcd_warnings("3.3.27")
    assert finding.detail == f"etcd 3.3.27 (system, {etcd}): {'; '.join(warnings)}"
    assert "older than 3.4" in finding.detail
    assert finding.fix == (
        "run a fixed etcd release (docs/operations.md#which-etcd): upgrade its package, "
        "or point $NINEFOLD_ETCD at a newer binary"
    )


def test_no_etcd_fails_saying_how_to_install_one(
    tmp_path: Path, bin_dir: Path, no_etcd_env: None
) -> None:
    finding = check_etcd(store_member(tmp_path))
    assert finding.status == "fail"
    assert finding.detail == "no etcd binary"
    assert finding.fix is not None
    assert finding.fix.startswith("install Debian's etcd-server (apt-get install etcd-server)")


def test_a_wrong_ninefold_etcd_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_etcd_env: None
) -> None:
    monkeypatch.setenv("NINEFOLD_ETCD", str(tmp_path / "nope"))
    finding = check_etcd(store_member(tmp_path))
    assert finding.status == "fail"
    assert finding.detail == f"$NINEFOLD_ETCD={tmp_path / 'nope'} is not an executable file"
    assert finding.fix == "point $NINEFOLD_ETCD at a working etcd binary, or unset it"


def test_etcd_only_for_embedded_store_members(tmp_path: Path) -> None:
    spec = make_spec(
        "{name: n1, address: 127.0.0.1, store: true}",
        "{name: n2, address: 127.0.0.2}",
        store=EMBEDDED,
    )
    assert check_etcd(target(spec, "n2", tmp_path)).status == "skip"
    assert check_etcd(one_node(tmp_path, store="true")).detail == (
        "external store: this node runs no etcd"
    )


# --- 2. HAProxy -----------------------------------------------------------------------------


def haproxy_node(tmp_path: Path, extra: str = "") -> Target:
    return one_node(tmp_path, extra="gateway: {engine: haproxy}\n" + extra)


@pytest.mark.process
def test_haproxy_found(tmp_path: Path, bin_dir: Path) -> None:
    binary = fake_command(bin_dir, "haproxy", "HAProxy version 2.6.12-1+deb12u1 2023/12/16")
    assert check_haproxy(haproxy_node(tmp_path)) == Finding(
        "haproxy", "ok", f"HAProxy 2.6.12 ({binary})"
    )


def test_no_haproxy_fails(tmp_path: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # haproxy_binary also looks in /usr/sbin, which this machine may have one in
    monkeypatch.setattr("ninefold.gateway.haproxy.engine.haproxy_binary", lambda: None)
    finding = check_haproxy(haproxy_node(tmp_path))
    assert finding == Finding(
        "haproxy",
        "fail",
        "gateway engine haproxy, but no haproxy on PATH, /usr/local/sbin or /usr/sbin",
        "apt-get install haproxy (2.6 or later)",
    )
    auto = one_node(tmp_path, extra="gateway: {engine: auto}\n")
    assert check_haproxy(auto).status == "skip"
    assert check_haproxy(one_node(tmp_path)).detail == "gateway engine builtin: nothing to install"


@pytest.mark.process
def test_an_old_haproxy_warns_and_fails_for_access_policies(tmp_path: Path, bin_dir: Path) -> None:
    binary = fake_command(bin_dir, "haproxy", "HA-Proxy version 2.2.9-2+deb11u5 2023/04/10")
    finding = check_haproxy(haproxy_node(tmp_path))
    assert finding.status == "warn"
    assert finding.detail == (
        f"HAProxy 2.2.9 ({binary}) is older than 2.6, the version ninefold is tested with; "
        "it may refuse the configuration ninefold renders"
    )
    assert finding.fix == "apt-get install haproxy (2.6 or later)"
    guarded = (
        "services:\n  api:\n    command: [x, '{port}']\n    route: {http: /api}\n"
        "    access: {jwt: {jwks: /etc/jwks.json}}\n"
    )
    finding = check_haproxy(haproxy_node(tmp_path, guarded))
    assert finding.status == "fail"
    assert finding.detail == (
        f"HAProxy 2.2.9 ({binary}) lacks jwt_verify (2.5), which the access policies of api need"
    )


# --- 3. ip and CAP_NET_ADMIN, for VIPs --------------------------------------------------------

GATEWAY_VIP = "gateway: {vip: 10.99.0.10/24}\n"


def test_ip_is_needed_only_with_vips(tmp_path: Path, bin_dir: Path) -> None:
    assert check_ip(one_node(tmp_path)) == Finding("ip", "skip", "no VIP this node may hold")
    finding = check_ip(one_node(tmp_path, extra=GATEWAY_VIP))
    assert finding == Finding(
        "ip",
        "fail",
        "no `ip` command on PATH, which adds and removes the VIPs 10.99.0.10/24 (gateway)",
        "apt-get install iproute2",
    )
    ip = fake_command(bin_dir, "ip", "")
    assert check_ip(one_node(tmp_path, extra=GATEWAY_VIP)).detail == (
        f"{ip}, for the VIPs 10.99.0.10/24 (gateway)"
    )


def test_a_service_vip_concerns_the_nodes_it_may_run_on(tmp_path: Path, bin_dir: Path) -> None:
    db = (
        "services:\n  db:\n    command: [db]\n    mode: active-passive\n"
        "    vip: 10.99.0.11/24\n    placement: {constraints: {disk: ssd}}\n"
    )
    spec = make_spec(
        "{name: n1, address: 127.0.0.1}",
        "{name: n2, address: 127.0.0.2, labels: {disk: ssd}}",
        extra=db,
    )
    assert check_ip(target(spec, "n1", tmp_path)).status == "skip"
    finding = check_ip(target(spec, "n2", tmp_path))
    assert finding.status == "fail"
    assert "10.99.0.11/24 (db)" in finding.detail


NET_ADMIN_AND_RAW = 1 << 12 | 1 << 13


def test_capabilities_for_vips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = one_node(tmp_path, extra=GATEWAY_VIP)
    fix = (
        "run the agent as root, or grant it the capabilities "
        "(systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)"
    )

    def caps(effective: int, ambient: int = 0, root: bool = False) -> None:
        monkeypatch.setattr(
            doctor, "read_capabilities", lambda: Capabilities(effective, ambient, root)
        )

    caps(0)
    assert check_capabilities(t) == Finding(
        "capabilities",
        "fail",
        "this process lacks CAP_NET_ADMIN and CAP_NET_RAW, which holding the VIPs "
        "10.99.0.10/24 (gateway) needs (ip addr; gratuitous ARP)",
        fix,
    )
    caps(1 << 13)
    assert check_capabilities(t).detail.startswith("this process lacks CAP_NET_ADMIN, which")
    caps(NET_ADMIN_AND_RAW)  # not root, not ambient: the `ip` child would not have it
    finding = check_capabilities(t)
    assert finding.status == "warn"
    assert finding.detail.startswith("CAP_NET_ADMIN is effective but not ambient")
    assert finding.fix == fix
    caps(NET_ADMIN_AND_RAW, NET_ADMIN_AND_RAW)
    assert check_capabilities(t).status == "ok"
    caps(NET_ADMIN_AND_RAW, 0, root=True)
    assert check_capabilities(t).detail == "CAP_NET_ADMIN and CAP_NET_RAW (root), for the VIPs"
    assert check_capabilities(one_node(tmp_path)).status == "skip"


def test_capabilities_are_read_from_proc() -> None:
    caps = doctor.read_capabilities()
    assert caps.root == (os.geteuid() == 0)
    if caps.root:
        assert caps.has(12) and caps.has(13)


# --- 4. setpriv ---------------------------------------------------------------------------------


def test_setpriv_missing_warns(tmp_path: Path, bin_dir: Path) -> None:
    finding = check_setpriv(one_node(tmp_path))
    assert finding.status == "warn"
    assert finding.detail == (
        "no setpriv on PATH: the supervisor sets its children's parent-death signal in a "
        "Python preexec_fn instead, which is not safe under uvloop (children crashed now "
        "and then)"
    )
    assert finding.fix == "apt-get install util-linux"
    setpriv = fake_command(bin_dir, "setpriv", "")
    assert check_setpriv(one_node(tmp_path)) == Finding("setpriv", "ok", str(setpriv))


REPLICATED = """services:
  db:
    command: [sleep, infinity]
    mode: active-passive
    volumes: {data: {replicate: continuous}}
"""


@pytest.mark.process
def test_rsync_is_checked_only_for_replicated_volumes(tmp_path: Path, bin_dir: Path) -> None:
    assert check_rsync(one_node(tmp_path)).status == "skip"
    missing = check_rsync(one_node(tmp_path, extra=REPLICATED))
    assert (missing.status, missing.fix) == ("fail", "apt-get install rsync")
    assert missing.detail == "no rsync on PATH: replicated volumes cannot be sent or received"
    old = fake_command(bin_dir, "rsync", "rsync  version 3.1.2  protocol version 31")
    too_old = check_rsync(one_node(tmp_path, extra=REPLICATED))
    assert too_old == Finding(
        "rsync", "fail", f"rsync 3.1.2 ({old}) is older than 3.1.3", "install rsync 3.1.3 or later"
    )
    fake_command(bin_dir, "rsync", "rsync  version 3.2.7  protocol version 31")
    assert check_rsync(one_node(tmp_path, extra=REPLICATED)).detail == f"rsync 3.2.7 ({old})"


# --- 6. clocks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_agent(address: str, node: str, skew: float | None) -> Iterator[int]:
    """An HTTP server on `address` answering /v1/health as `node` would, its
    clock `skew` seconds off (None: an old agent that does not tell its time)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: dict[str, Any] = {"node": node, "store": "unavailable", "version": "0"}
            if skew is not None:
                body["time"] = time.time() + skew
            data = json.dumps(body).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    Health.protocol_version = "HTTP/1.1"  # keep-alive, like the agent
    server = ThreadingHTTPServer((address, 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def two_nodes(tmp_path: Path, port: int) -> Target:
    spec = make_spec(
        "{name: n1, address: 127.0.0.1}",
        f"{{name: n2, address: 127.0.0.2, ports: {{api: {port}}}}}",
    )
    return target(spec, "n1", tmp_path)


def test_clock_in_step_with_a_real_agent(tmp_path: Path) -> None:
    port = free_port()
    text = agent_spec(port)
    spec = make_spec(
        f"{{name: n1, address: 127.0.0.1, ports: {{api: {port}}}}}",
        "{name: n2, address: 127.0.0.2}",
    )
    with api_in_thread(text, port):
        finding = check_clock(target(spec, "n2", tmp_path))
    measured = re.match(
        r"other clocks minus this one: n1 ([-+][0-9.]+) s \(±([0-9.]+)\)", finding.detail
    )
    assert measured, finding.detail
    # Same machine, same clock: the offset is within the measurement's error.
    assert abs(float(measured[1])) <= float(measured[2]) + 0.01, finding.detail
    assert finding.status == "ok"


@pytest.mark.parametrize(
    ("skew", "status", "limit"),
    [(0.5, "warn", "more than 0.25 s apart"), (-3.0, "fail", "more than 1 s apart")],
)
def test_clock_skew_warns_then_fails(tmp_path: Path, skew: float, status: str, limit: str) -> None:
    with fake_agent("127.0.0.2", "n2", skew) as port:
        finding = check_clock(two_nodes(tmp_path, port))
    assert finding.status == status
    measured = re.match(
        r"other clocks minus this one: n2 ([-+][0-9.]+) s \(±([0-9.]+)\)", finding.detail
    )
    assert measured, finding.detail
    assert abs(float(measured[1]) - skew) < 0.05
    assert float(measured[2]) < 0.05
    assert finding.detail.endswith(f"; {limit}")
    assert finding.fix == (
        "synchronise every node's clock with NTP (timedatectl set-ntp true, or apt-get "
        "install chrony)"
    )


def test_clock_of_agents_that_do_not_answer_is_not_checked(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    finding = check_clock(two_nodes(tmp_path, port))
    assert finding == Finding(
        "clock", "skip", "no other node's agent answers: n2 (connection refused)"
    )
    with fake_agent("127.0.0.2", "n2", None) as port:
        finding = check_clock(two_nodes(tmp_path, port))
    assert finding.detail == (
        "no other node's agent answers: n2 (answers without its clock (an older ninefold?))"
    )
    spec = make_spec("{name: n1, address: 127.0.0.1}")
    assert check_clock(target(spec, "n1", tmp_path)).detail == "no other node in the spec"
    tls = make_spec(
        "{name: n1, address: 127.0.0.1}",
        "{name: n2, address: 127.0.0.2}",
        extra=f"security: {{tls: {{ca: {tmp_path / 'ca.crt'}}}}}\n",
    )  # before `join`, this machine may not have the cluster CA yet
    finding = check_clock(target(tls, "n1", tmp_path))
    assert finding.status == "skip"
    assert finding.detail.startswith("not checked: ")
    assert str(tmp_path / "ca.crt") in finding.detail


# --- 7. the data directory --------------------------------------------------------------------


def test_disk_space_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = one_node(tmp_path)  # its data dir does not exist yet: its parent counts
    monkeypatch.setattr(defaults, "DOCTOR_DISK_FAIL_BYTES", 0)
    monkeypatch.setattr(defaults, "DOCTOR_DISK_WARN_BYTES", 0)
    finding = check_disk(t)
    assert finding.status == "ok"
    assert finding.detail.endswith(f" GiB free on the filesystem of {tmp_path}")
    fix = "free space there, or put the data directory on another filesystem (--data-dir)"
    monkeypatch.setattr(defaults, "DOCTOR_DISK_WARN_BYTES", 1 << 60)
    finding = check_disk(t)
    assert (finding.status, finding.fix) == ("warn", fix)
    assert finding.detail.endswith(f"on the filesystem of {tmp_path}; under 1073741824.0 GiB")
    monkeypatch.setattr(defaults, "DOCTOR_DISK_FAIL_BYTES", 1 << 60)
    finding = check_disk(t)
    assert (finding.status, finding.fix) == ("fail", fix)
    assert finding.detail.endswith("; under 1073741824.0 GiB")


def test_data_dir_writable_or_makeable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = one_node(tmp_path)
    user = doctor._user()
    assert check_data_dir(t).detail == (
        f"{tmp_path / 'data'} (not made yet; {tmp_path} is writable by {user})"
    )
    (tmp_path / "data").mkdir()
    assert check_data_dir(t) == Finding(
        "data dir", "ok", f"{tmp_path / 'data'}, writable by {user}"
    )
    (tmp_path / "data").rmdir()
    (tmp_path / "data").write_text("")
    assert check_data_dir(t) == Finding(
        "data dir", "fail", f"{tmp_path / 'data'} is not a directory",
        "remove it, or give another --data-dir",
    )  # fmt: skip


def test_data_dir_not_writable_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    spec = make_spec("{name: n1, address: 127.0.0.1}")
    t = Target(spec, spec.node("n1"), locked / "n1")
    if os.geteuid() == 0:  # root writes anywhere: play a user who may not
        monkeypatch.setattr(doctor, "writable", lambda path: False)
    else:
        locked.chmod(0o500)
    try:
        finding = check_data_dir(t)
    finally:
        locked.chmod(0o700)
    user = doctor._user()
    assert finding == Finding(
        "data dir",
        "fail",
        f"{locked} is not writable by {user}, so {locked / 'n1'} cannot be made",
        f"sudo install -d -o {user} {locked / 'n1'}, or give another --data-dir",
    )


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def one_node_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, int]:
    """A one-node spec on 127.0.0.1 with free ports, nothing to install; its
    path and API port. Disk thresholds at 0, so the machine's disk does not matter."""
    monkeypatch.setattr(defaults, "DOCTOR_DISK_FAIL_BYTES", 0)
    monkeypatch.setattr(defaults, "DOCTOR_DISK_WARN_BYTES", 0)
    api, gw = free_ports(2, "127.0.0.1")
    path = tmp_path / "ninefold.yaml"
    path.write_text(
        "cluster: doc\nstore: {mode: external, endpoints: ['127.0.0.1:2379']}\nnodes:\n"
        f"  - {{name: n1, address: 127.0.0.1, ports: {{api: {api}, gateway_http: {gw}}}}}\n"
    )
    return path, api


def test_doctor_table_and_json(one_node_spec: tuple[Path, int], tmp_path: Path) -> None:
    spec, _ = one_node_spec
    args = ["doctor", "--spec", str(spec), "--data-dir", str(tmp_path / "d")]
    started = time.monotonic()
    result = runner.invoke(app, args)
    assert time.monotonic() - started < 10
    assert result.exit_code == 0, result.output
    assert "node n1 (127.0.0.1) of cluster doc" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("nothing blocks node n1")
    for word in ("CHECK", "STATUS", "DETAIL", "address", "ports", "data dir"):
        assert word in result.stdout
    result = runner.invoke(app, [*args, "-o", "json"])
    assert result.exit_code == 0
    findings = json.loads(result.stdout)
    assert [f["check"] for f in findings] == [check_name(c) for c in CHECKS]
    for f in findings:
        assert set(f) == {"check", "status", "detail", "fix"}
        assert f["status"] in ("ok", "warn", "skip")
        assert (f["fix"] is not None) == (f["status"] == "warn")


def test_doctor_exits_1_when_something_blocks(
    one_node_spec: tuple[Path, int], tmp_path: Path
) -> None:
    spec, api = one_node_spec
    args = ["doctor", "--spec", str(spec), "--data-dir", str(tmp_path / "d")]
    with socket.create_server(("127.0.0.1", api)):
        table = runner.invoke(app, args)
        as_json = runner.invoke(app, [*args, "-o", "json"])
    assert table.exit_code == EXIT_FAILED
    assert "to fix:" in table.stdout
    fix = "  ports: stop what holds them, or give the node other ports (nodes[0].ports in "
    assert any(line.startswith(fix) for line in table.stdout.splitlines())
    assert table.stdout.rstrip().endswith("1 problem(s) block node n1: ports")
    assert as_json.exit_code == EXIT_FAILED
    ports = next(f for f in json.loads(as_json.stdout) if f["check"] == "ports")
    assert ports["status"] == "fail"
    assert ports["detail"].startswith(f"in use on 127.0.0.1: api {api}")


def test_doctor_usage_errors_are_one_line(one_node_spec: tuple[Path, int], tmp_path: Path) -> None:
    spec, _ = one_node_spec
    missing = runner.invoke(app, ["doctor", "--spec", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == EXIT_USAGE
    assert missing.stderr.strip() == f"{tmp_path / 'nope.yaml'}: file not found"
    unknown = runner.invoke(app, ["doctor", "--spec", str(spec), "--node", "n9"])
    assert unknown.exit_code == EXIT_USAGE
    assert unknown.stderr.strip() == f"error: {spec}: no node named 'n9' (nodes: n1)"
    several = tmp_path / "three.yaml"
    several.write_text(
        "cluster: doc\nnodes:\n  - {name: n1, address: 127.0.0.1, store: true}\n"
        "  - {name: n2, address: 127.0.0.2}\n"
    )
    ambiguous = runner.invoke(app, ["doctor", "--spec", str(several)])
    assert ambiguous.exit_code == EXIT_USAGE
    assert "say which one this is with --node NAME" in ambiguous.stderr
    assert runner.invoke(app, ["doctor", "--spec", str(spec), "-o", "yaml"]).exit_code == EXIT_USAGE
    for result in (missing, unknown, ambiguous):
        assert "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
