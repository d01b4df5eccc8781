"""A local cluster: every node of a spec as an agent process on this machine.

`ninefold up` and `ninefold down` are built on `LocalCluster`. Each node gets
its own data directory `<root>/<node>` holding its `agent.log` and `agent.pid`;
the root defaults to `<data root>/local/<cluster>`. The agents run detached (in
their own session), so they outlive the command that started them, with the
spec file's directory as their working directory. Every node's address must
be a loopback address (127.0.0.0/8 or ::1): on Linux every 127.x.y.z is
local, so each node has its own address and the same ports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import psutil

from ninefold import defaults
from ninefold.client import ApiError, api_scheme, api_verify, node_url
from ninefold.net import port_is_free
from ninefold.spec import ClusterSpec, NodeSpec, load_spec

Progress = Callable[[str], None]

CERT_RENEW_MARGIN = 30.0
"""Days before its expiry `up` renews a node's certificate."""

HEALTH_TIMEOUT = 1.0
"""Seconds one `/v1/health` probe may take while waiting for the agents."""


class LocalClusterError(Exception):
    """The local cluster cannot do what was asked."""


class NotLocal(LocalClusterError):
    """A node's address is not on this machine's loopback."""


class StartFailed(LocalClusterError):
    """An agent did not start, or the cluster did not come up in time."""


def _quiet(_: str) -> None:
    pass


class LocalCluster:
    def __init__(
        self,
        spec_path: Path,
        root: Path | None = None,
        spec: ClusterSpec | None = None,
        log_format: str = "text",
    ) -> None:
        self.log_format = log_format
        """The agents' --log-format (text or json)."""
        self.spec_path = Path(spec_path).resolve()
        self.spec = spec or load_spec(self.spec_path)
        self.root = (root or defaults.data_root() / "local" / self.spec.cluster).resolve()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- places ---------------------------------------------------------------------
    def data_dir(self, node: str) -> Path:
        return self.root / node

    def log_path(self, node: str) -> Path:
        return self.data_dir(node) / "agent.log"

    def pid_path(self, node: str) -> Path:
        return self.data_dir(node) / "agent.pid"

    def node(self, name: str) -> NodeSpec:
        try:
            return self.spec.node(name)
        except KeyError:
            names = ", ".join(n.name for n in self.spec.nodes)
            raise LocalClusterError(f"no node named {name!r} (nodes: {names})") from None

    def api_url(self, node: str | None = None) -> str:
        """The API of `node`, or of the first running node (else the first node)."""
        if node is not None:
            return node_url(self.node(node), api_scheme(self.spec))
        running = self.running()
        first = next((n for n in self.spec.nodes if n.name in running), self.spec.nodes[0])
        return node_url(first, api_scheme(self.spec))

    def check_local(self) -> None:
        for n in self.spec.nodes:
            if not ipaddress.ip_address(n.address).is_loopback:
                raise NotLocal(
                    f"{self.spec_path}: node {n.name} has address {n.address}, not a loopback "
                    "address (127.0.0.0/8 or ::1); a local cluster runs every node on this "
                    "machine: run `ninefold agent` on each machine instead"
                )

    # -- processes -------------------------------------------------------------------
    def recorded_pid(self, node: str) -> int | None:
        try:
            return int(self.pid_path(node).read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_agent(self, pid: int, node: str) -> bool:
        """Whether `pid` is alive and is the ninefold agent of `node` in this root."""
        proc = self._procs.get(node)
        if proc is not None and proc.pid == pid:
            proc.poll()  # reap it if it died
        return runs_agent(pid, node, self.data_dir(node))

    def running(self) -> dict[str, int]:
        """node -> pid of every node whose recorded agent is alive."""
        out = {}
        for n in self.spec.nodes:
            pid = self.recorded_pid(n.name)
            if pid is not None and self._is_agent(pid, n.name):
                out[n.name] = pid
        return out

    def start(self, node: str) -> int:
        """Start the agent of `node` in the background (unless it runs); its pid."""
        self.check_local()
        self.node(node)
        pid = self.recorded_pid(node)
        if pid is not None and self._is_agent(pid, node):
            return pid
        proc = spawn_agent(
            agent_command(self.spec_path, node, self.data_dir(node), self.log_format),
            self.log_path(node),
            f"ninefold up: starting agent {node}",
            cwd=self.spec_path.parent,
        )
        self._procs[node] = proc
        self.pid_path(node).write_text(f"{proc.pid}\n")
        return proc.pid

    def kill(self, node: str) -> int | None:
        """SIGKILL the agent of `node` (like a machine losing power); its pid, if it ran."""
        self.node(node)
        pid = self.recorded_pid(node)
        if pid is None or not self._is_agent(pid, node):
            self.pid_path(node).unlink(missing_ok=True)
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._wait_gone({node: pid}, 10.0)
        self.pid_path(node).unlink(missing_ok=True)
        return pid

    def up(
        self, wait: float = 90.0, progress: Progress | None = None, ca_key: Path | None = None
    ) -> dict[str, int]:
        """Start every node's agent that is not running, then wait until every node
        answers and the cluster sees them all up. Returns node -> pid of all agents.
        With `security.tls`, nodes lacking a good certificate get one first (from
        the CA key at `ca_key`, by default next to the CA certificate)."""
        say = progress or _quiet
        self.check_local()
        already = self.running()
        self._check_ports([n for n in self.spec.nodes if n.name not in already])
        self.issue_certs(ca_key, say)
        started: dict[str, int] = {}
        for n in self.spec.nodes:
            if n.name in already:
                say(f"{n.name} already running (pid {already[n.name]})")
                continue
            started[n.name] = self.start(n.name)
            say(f"started {n.name} (pid {started[n.name]})")
        if wait > 0:
            self.wait_up(wait, say, started)
        return {**already, **started}

    def issue_certs(
        self, ca_key: Path | None = None, progress: Progress | None = None
    ) -> list[str]:
        """With `security.tls`: issue a certificate to every node that has none, one
        from another CA, for other names, or expiring within CERT_RENEW_MARGIN days.
        The nodes issued."""
        tls = self.spec.security.tls
        if tls is None:
            return []
        import datetime as dt

        from ninefold.security.ca import ca_key_path, load_ca, load_ca_cert
        from ninefold.security.certs import issue_node_files, needs_issuing
        from ninefold.security.files import NodeTlsFiles, TlsError

        say = progress or _quiet
        ca_path = tls.ca_path(self.spec_path.parent)
        margin = dt.timedelta(days=CERT_RENEW_MARGIN)
        try:
            ca_cert = load_ca_cert(ca_path)
            due = {}
            for n in self.spec.nodes:
                files = NodeTlsFiles.of_data_dir(self.data_dir(n.name))
                why = needs_issuing(files, ca_cert, n, margin)
                if why is not None:
                    due[n.name] = why
            if not due:
                return []
            ca = load_ca(ca_path, ca_key or ca_key_path(ca_path))
            for name, why in due.items():
                issue_node_files(ca, self.node(name), self.data_dir(name))
                say(f"{name}: certificate issued ({why})")
        except TlsError as exc:
            raise LocalClusterError(
                f"{exc} (node certificates are issued with the CA key)"
            ) from None
        return list(due)

    def wait_up(
        self, wait: float, progress: Progress | None = None, watch: dict[str, int] | None = None
    ) -> None:
        """Wait until every node answers `/v1/health` and `/v1/status` shows all up."""
        say = progress or _quiet
        watch = watch if watch is not None else self.running()
        deadline = time.monotonic() + wait
        names = [n.name for n in self.spec.nodes]
        state = "waiting for the agents"
        try:
            verify = api_verify(self.spec)
        except ApiError as exc:
            raise StartFailed(exc.message) from None
        with httpx.Client(timeout=HEALTH_TIMEOUT, trust_env=False, verify=verify) as http:
            while True:
                for name, pid in watch.items():
                    if not self._is_agent(pid, name):
                        raise StartFailed(self._died(name))
                answering, store_ok = [], []
                for name in names:
                    try:
                        r = http.get(self.api_url(name) + "/v1/health")
                    except httpx.HTTPError:
                        continue
                    answering.append(name)
                    if r.status_code == 200:
                        store_ok.append(name)
                if len(answering) < len(names):
                    state = f"waiting for the agents: {len(answering)} of {len(names)} answer"
                elif not store_ok:
                    state = "waiting for the store to have quorum"
                else:
                    up = self._nodes_up(http, store_ok[0])
                    if up is not None and all(n in up for n in names):
                        say(f"all {len(names)} nodes up")
                        return
                    count = 0 if up is None else len([n for n in names if n in up])
                    state = f"waiting for the nodes to join: {count} of {len(names)} up"
                say(state)
                if time.monotonic() > deadline:
                    raise StartFailed(
                        f"cluster {self.spec.cluster} not up after {wait:.0f}s ({state}); "
                        f"agent logs: {self.root}/<node>/agent.log"
                    )
                time.sleep(0.3)

    def _nodes_up(self, http: httpx.Client, node: str) -> set[str] | None:
        try:
            r = http.get(self.api_url(node) + "/v1/status")
            if r.status_code != 200:
                return None
            return {n["name"] for n in r.json().get("nodes", []) if n.get("state") != "down"}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _died(self, node: str) -> str:
        return agent_died(node, self._procs.get(node), self.log_path(node))

    def _check_ports(self, nodes: list[NodeSpec]) -> None:
        """Refuse to start agents whose ports some other process already holds."""
        for n in nodes:
            for kind, port in self.spec.listen_ports(n):
                if not port_is_free(n.address, port):
                    raise StartFailed(
                        f"node {n.name}: {n.host_port(port)} ({kind} port) is already in use "
                        "(another ninefold cluster, or another program?)"
                    )

    def down(self, timeout: float = 30.0, progress: Progress | None = None) -> dict[str, int]:
        """Stop every agent (SIGTERM; SIGKILL after `timeout`); node -> pid of those stopped."""
        say = progress or _quiet
        running = self.running()
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if running:
            say(f"stopping {len(running)} agents")
        left = self._wait_gone(running, timeout, say)
        for node, pid in left.items():
            say(f"{node} did not stop in {timeout:.0f}s: killing it")
            try:
                victims = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for victim in victims:
                with contextlib.suppress(psutil.NoSuchProcess):
                    victim.kill()
        self._wait_gone(left, 10.0)
        for n in self.spec.nodes:
            self.pid_path(n.name).unlink(missing_ok=True)
        return running

    def _wait_gone(
        self, pids: dict[str, int], timeout: float, progress: Progress | None = None
    ) -> dict[str, int]:
        """Wait until these agents are gone; those still alive after `timeout`."""
        deadline = time.monotonic() + timeout
        left = dict(pids)
        while left:
            left = {n: p for n, p in left.items() if self._is_agent(p, n)}
            if not left or time.monotonic() > deadline:
                break
            if progress is not None:
                progress(f"stopping agents: {', '.join(sorted(left))} still running")
            time.sleep(0.1)
        return left


# --- agent processes (shared with the lab, which runs them in network namespaces) ---


def agent_command(
    spec_path: Path, node: str, data_dir: Path, log_format: str = "text"
) -> list[str]:
    """The command line of the agent of `node` (`log_format`: its --log-format)."""
    return [
        sys.executable, "-m", "ninefold", "agent",
        "--spec", str(spec_path), "--node", node, "--data-dir", str(data_dir),
        *(["--log-format", log_format] if log_format != "text" else []),
    ]  # fmt: skip


def spawn_agent(
    argv: list[str], log_path: Path, banner: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` detached (its own session), its output appended to `log_path`
    after a `--- <time> <banner>` line (its directory made first); `env` is
    added to this process's environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {banner}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def runs_agent(pid: int, node: str, data_dir: Path) -> bool:
    """Whether `pid` is alive (not a zombie) and is the ninefold agent of `node`
    with `data_dir`."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return (
        "agent" in argv
        and any("ninefold" in a for a in argv)
        and argument_after(argv, "--node") == node
        and argument_after(argv, "--data-dir") == str(data_dir)
    )


def agent_died(node: str, proc: subprocess.Popen[bytes] | None, log_path: Path) -> str:
    """Why an agent is gone, with the last line of its log."""
    code = proc.poll() if proc is not None else None
    how = f"exited with code {code}" if code is not None else "is gone"
    last = last_line(log_path)
    detail = f": {last}" if last else ""
    why = last_line(log_path, " ERROR ") or last_line(log_path, '"level":"error"')
    if why and why != last:
        detail += f" (after: {why})"
    return f"agent {node} {how}{detail} (log: {log_path})"


def argument_after(argv: list[str], flag: str) -> str | None:
    """The word after `flag` in a command line, if any."""
    try:
        return argv[argv.index(flag) + 1]
    except (ValueError, IndexError):
        return None


def last_line(path: Path, containing: str = "") -> str:
    """The last non-empty line of a (log) file (of its last 64 kB holding
    `containing`), "" if none or unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - (65536 if containing else 4096)))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip() and containing in line]
    return lines[-1] if lines else ""
