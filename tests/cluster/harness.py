"""A real local cluster for tests: N agents on 127.0.0.x, each with an etcd member.

Agents run as subprocesses of the test through the real `ninefold` entry
point; the test kills them with SIGKILL like a machine dying.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


def until(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll probe until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # a probe may race with a dying process
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def free_base_port(addresses: list[str], span: int = 4) -> int:
    """A base port such that base..base+span-1 are free on every address.

    Below the kernel's ephemeral range (32768+), where outgoing connections
    take their source ports and could grab a port between this check and the
    agent's bind, and below the instances' port range (20000+)."""
    for _ in range(200):
        base = random.randrange(10000, 19990, 10)
        if all(_free(a, base + i) for a in addresses for i in range(span)):
            return base
    raise RuntimeError("no free port block found")


def _free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    root: Path
    services_yaml: str
    nodes: int = 3
    zones: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    name: str = "test"
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.addresses = {f"n{i + 1}": f"127.0.0.{i + 1}" for i in range(self.nodes)}
        self.base = free_base_port(list(self.addresses.values()), span=8)
        self.tcp_port = self.base + 5
        """A port for a TCP route: write @TCPPORT@ in the services."""
        self.mesh_port = self.base + 6
        """Every node's `ports.mesh` (bound with security.tls only)."""
        self.volume_port = self.base + 7
        """Every node's `ports.volumes` (bound when a volume is replicated)."""
        self.spec_path = self.root / "cluster.yaml"
        self.write_spec(self.services_yaml)

    def spec_text(self, services_yaml: str) -> str:
        lines = [f"cluster: {self.name}", "store: {mode: embedded}", "nodes:"]
        for i, (name, address) in enumerate(self.addresses.items()):
            zone = self.zones[i % len(self.zones)]
            labels = ", ".join(f"{k}: {v}" for k, v in self.labels.get(name, {}).items())
            lines.append(
                f"  - {{name: {name}, address: {address}, zone: {zone}, store: true, "
                f"labels: {{{labels}}}, "
                f"ports: {{store_client: {self.base}, store_peer: {self.base + 1}, "
                f"api: {self.base + 2}, gateway_http: {self.base + 3}, "
                f"mesh: {self.mesh_port}, volumes: {self.volume_port}}}}}"
            )
        services = services_yaml.replace("@TCPPORT@", str(self.tcp_port))
        return "\n".join(lines) + "\n" + services

    def write_spec(self, services_yaml: str, path: Path | None = None) -> Path:
        path = path or self.spec_path
        path.write_text(self.spec_text(services_yaml))
        return path

    def data_dir(self, node: str) -> Path:
        return self.root / "data" / node

    def log_path(self, node: str) -> Path:
        return self.root / f"{node}.agent.log"

    # -- processes ------------------------------------------------------------------
    def start(self, node: str) -> None:
        log = open(self.log_path(node), "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs[node] = subprocess.Popen(
            [
                sys.executable, "-m", "ninefold", "agent",
                "--spec", str(self.spec_path), "--node", node,
                "--data-dir", str(self.data_dir(node)), "--log-level", "debug",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        log.close()

    def start_all(self) -> None:
        for node in self.addresses:
            self.start(node)

    def kill(self, node: str) -> list[int]:
        """SIGKILL the agent only, like a machine losing power to its agent;
        returns the pids of what it had started (which must die with it)."""
        proc = self.procs.pop(node)
        children = [c.pid for c in self.descendants_of(proc.pid)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return children

    @staticmethod
    def descendants_of(pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for child in self.descendants_of(proc.pid):
                    child.kill()
                proc.kill()
                proc.wait()
        self.procs.clear()

    def logs(self) -> str:
        parts = []
        for node in self.addresses:
            path = self.log_path(node)
            if path.exists():
                parts.append(f"--- {node} ---\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    # -- the CLI ----------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ninefold", *args],
            capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, NINEFOLD_SPEC=str(self.spec_path), COLUMNS="200"),
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "-o", "json")
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())
        return json.loads(result.stdout)

    def events(self) -> list[dict[str, Any]]:
        result = self.cli("events", "-n", "1000", "-o", "json")
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    # -- views ---------------------------------------------------------------------------
    def serving(self, service: str) -> dict[str, str]:
        """instance -> node, for the service's running, healthy instances."""
        return {
            i["instance"]: i["node"]
            for i in self.status()["instances"]
            if i["service"] == service
            and i["state"] == "running"
            and i["health"] in ("healthy", "none")
        }

    def leader(self) -> str | None:
        return self.status()["leader"]
