"""A lab: every node of a spec in its own network namespace, with faults on demand.

`Lab.up` builds the topology of `ninefold.lab.topology` (a router namespace
switching one /24 across a bridge per zone, a namespace per node, one for a
client), starts an agent in each node's namespace and waits until the cluster
is up. The lab's state lives in `<state root>/<id>/lab.json` (state root
`/run/ninefold-lab`, or NINEFOLD_LAB_ROOT), so any later process reattaches
with `Lab.load`; the nodes' data directories are next to it. Faults: kill,
stop, freeze a node; partition nodes or isolate a zone with nftables; delay a
node's packets with netem where the kernel has it. `down` and `down_all`
leave nothing behind: no process, no namespace, no state directory.

Everything here needs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ninefold import defaults
from ninefold.lab import faults, netns, topology
from ninefold.lab.errors import (
    LabError,
    LabUnsupported,
    NotRoot,
    StartFailed,
    UnknownName,
)
from ninefold.local import agent_command, agent_died, runs_agent, spawn_agent
from ninefold.spec import ClusterSpec, SpecError, load_spec, parse_spec

Progress = Callable[[str], None]

STATE_ROOT = Path("/run/ninefold-lab")
"""Default state root; NINEFOLD_LAB_ROOT overrides it."""
STATE_FILE = "lab.json"
SPEC_COPY = "spec.yaml"
"""The spec as the lab was built, next to lab.json: `Lab.load` reads it."""
UP_TIMEOUT = 90.0
"""Seconds `Lab.up` waits for the cluster."""
HEALTH_TIMEOUT = 1.0
"""Seconds one `/v1/health` probe may take while waiting for agents."""
STOP_TIMEOUT = 30.0
"""Seconds `Lab.stop` waits for a node's processes to end after SIGTERM."""
POLL = 0.2


def state_root() -> Path:
    """Where labs keep their state: NINEFOLD_LAB_ROOT, else /run/ninefold-lab."""
    return Path(os.environ.get("NINEFOLD_LAB_ROOT") or STATE_ROOT).absolute()


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRoot()
    if shutil.which("ip") is None:
        raise LabUnsupported("the lab needs iproute2's `ip` command (apt-get install iproute2)")


def _quiet(_: str) -> None:
    pass


class Lab:
    """A running lab, built by `Lab.up` or reattached by `Lab.load`."""

    def __init__(self, state: dict[str, Any], state_dir: Path, spec: ClusterSpec) -> None:
        self.state = state
        self.state_dir = state_dir
        self.spec = spec
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- making and finding labs -------------------------------------------------------
    @classmethod
    def up(
        cls,
        spec_path: Path | str,
        progress: Progress | None = None,
        wait: float = UP_TIMEOUT,
        keep_on_failure: bool = False,
        agents: bool = True,
        log_format: str = "text",
    ) -> Lab:
        """Build a lab for the spec, start its agents and wait (`wait` seconds,
        0: not at all) until every node answers and the cluster has a leader.
        Without `agents`, only the machines and their network: the caller
        installs and starts what runs on them (as on bare machines).

        On failure the lab is removed again unless `keep_on_failure`."""
        say = progress or _quiet
        require_root()
        path = Path(spec_path).resolve()
        spec = load_spec(path)
        lab_id = _new_id()
        plan = topology.plan(spec, lab_id)
        state_dir = state_root() / lab_id
        state_dir.mkdir(parents=True, exist_ok=False)
        state = {
            "id": lab_id,
            "spec": str(path),
            "created": time.time(),
            "log_format": log_format,
            "subnet": str(plan.subnet),
            "namespaces": {
                **{n.name: n.namespace for n in plan.nodes},
                "router": plan.router_namespace,
                "client": plan.client_namespace,
            },
            "nodes": {
                n.name: {
                    "address": n.address,
                    "zone": n.zone,
                    "namespace": n.namespace,
                    "port": n.port,
                    "api_port": n.api_port,
                    "data_dir": str(state_dir / n.name),
                    "agent_pid": None,
                }
                for n in plan.nodes
            },
            "zones": {z.name: {"bridge": z.bridge} for z in plan.zones},
            "client": {"address": plan.client_address, "namespace": plan.client_namespace},
            "router": {"namespace": plan.router_namespace, "core_bridge": topology.CORE_BRIDGE},
            "network": {"fault": None, "slow": {}},
        }
        lab = cls(state, state_dir, spec)
        lab._save()
        (state_dir / SPEC_COPY).write_text(path.read_text())
        try:
            say(f"lab {lab_id}: building the network ({plan.subnet})")
            _build(plan)
            for node in lab.nodes if agents else []:
                pid = lab.start(node)
                say(f"started agent {node} in {lab.namespace(node)} (pid {pid})")
            if wait > 0 and agents:
                lab.wait_up(wait, say)
        except BaseException as exc:
            if keep_on_failure and not isinstance(exc, KeyboardInterrupt):
                raise
            with contextlib.suppress(Exception):
                lab.down()
            raise
        return lab

    @classmethod
    def load(cls, lab_id: str | None = None) -> Lab:
        """Reattach to a running lab; `None`: the only one there is."""
        require_root()
        root = state_root()
        if lab_id is None:
            running = running_labs()
            if not running:
                raise UnknownName(
                    f"no lab is running (under {root}): start one with `ninefold lab up SPEC`"
                )
            if len(running) > 1:
                raise UnknownName(
                    f"{len(running)} labs are running ({', '.join(running)}): say which one"
                )
            lab_id = running[0]
        path = root / lab_id / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            ids = running_labs()
            known = f" (running: {', '.join(ids)})" if ids else " (none is running)"
            raise UnknownName(f"no lab {lab_id} under {root}{known}") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {path}: {exc}") from None
        copy = root / lab_id / SPEC_COPY
        try:  # the spec as the lab was built with it, even if the file changed since
            spec = parse_spec(copy.read_text(), state["spec"])
        except FileNotFoundError:
            spec = load_spec(state["spec"])
        except SpecError as exc:
            raise LabError(f"lab {lab_id}: cannot load its spec {state['spec']}: {exc}") from None
        return cls(state, root / lab_id, spec)

    def _save(self) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(path)

    def _fresh(self) -> dict[str, Any]:
        """The state as saved: another process (the CLI) may have changed it."""
        with contextlib.suppress(OSError, ValueError):
            self.state = json.loads((self.state_dir / STATE_FILE).read_text())
        return self.state

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Read, change and write the state under a lock: the CLI, a test and
        the leader's lab provider may change one lab at the same time."""
        with open(self.state_dir / "lab.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            change(self._fresh())
            self._save()

    # -- names -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return str(self.state["id"])

    @property
    def spec_path(self) -> Path:
        return Path(self.state["spec"])

    @property
    def nodes(self) -> list[str]:
        return list(self.state["nodes"])

    @property
    def zones(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {zone: [] for zone in self.state["zones"]}
        for name, node in self.state["nodes"].items():
            out.setdefault(node["zone"], []).append(name)
        return out

    @property
    def client_address(self) -> str:
        return str(self.state["client"]["address"])

    def _node(self, node: str) -> dict[str, Any]:
        try:
            return self.state["nodes"][node]  # type: ignore[no-any-return]
        except KeyError:
            raise UnknownName(
                f"no node named {node!r} in lab {self.id} (nodes: {', '.join(self.nodes)})"
            ) from None

    def _node_ns(self, node: str) -> str:
        """The namespace of a node (not of the client or the router)."""
        return str(self._node(node)["namespace"])

    def namespace(self, name: str) -> str:
        """The namespace of a node, of "client" or of "router"."""
        try:
            return str(self.state["namespaces"][name])
        except KeyError:
            raise UnknownName(
                f"no node named {name!r} in lab {self.id} "
                f"(nodes: {', '.join(self.nodes)}; also client, router)"
            ) from None

    def address(self, name: str) -> str:
        """A node's address, or the client's ("client")."""
        if name == "client":
            return self.client_address
        return str(self._node(name)["address"])

    def zone(self, node: str) -> str:
        return str(self._node(node)["zone"])

    def data_dir(self, node: str) -> Path:
        return Path(self._node(node)["data_dir"])

    def log_path(self, node: str) -> Path:
        return self.data_dir(node) / "agent.log"

    def api_url(self, node: str) -> str:
        scheme = "https" if self.spec.security.tls is not None else "http"
        return f"{scheme}://{self.address(node)}:{self._node(node)['api_port']}"

    def api_tls(self) -> ssl.SSLContext | None:
        """With `security.tls`: a context trusting the cluster CA (the API takes
        clients without a certificate; tokens decide what they may do)."""
        tls = self.spec.security.tls
        if tls is None:
            return None
        return ssl.create_default_context(cafile=str(tls.ca_path(self.spec_path.parent)))

    def _zone_nodes(self, zone: str) -> list[str]:
        zones = self.zones
        if zone not in zones:
            raise UnknownName(
                f"no zone named {zone!r} in lab {self.id} (zones: {', '.join(zones)})"
            )
        return zones[zone]

    # -- commands and requests inside namespaces ---------------------------------------
    def run(
        self, name: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in the namespace of `name` (node, "client", "router") and wait."""
        return subprocess.run(netns.in_namespace(self.namespace(name), list(argv)), **kwargs)

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in the namespace of `name` (node, "client", "router")."""
        return subprocess.Popen(netns.in_namespace(self.namespace(name), list(argv)), **kwargs)

    def http_get(self, where: str, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET `url` from inside the namespace of `where`: (status, body).

        No process is started: the connection is made by a socket created
        inside that namespace (setns(2) on a short-lived thread). Raises
        OSError (TimeoutError, ConnectionRefusedError, ...) when nothing answers."""
        return netns.http_get(self.namespace(where), url, timeout, self.api_tls())

    def connect(self, where: str, address: str, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection to address:port made from inside the namespace of `where`."""
        return netns.connect_in(self.namespace(where), address, port, timeout)

    def reaches(
        self, where: str, target: str, port: int | None = None, timeout: float = 0.5
    ) -> bool:
        """Whether a TCP connection from `where` to `target` (a node, "client" or
        an address) succeeds; the port defaults to the target node's API port.
        Network reachability only: it does not depend on the cluster's store."""
        if target in self.state["nodes"]:
            address = self.address(target)
            port = port if port is not None else int(self._node(target)["api_port"])
        elif target == "client":
            address = self.client_address
        else:
            address = target
        if port is None:
            raise ValueError(f"reaches({where!r}, {target!r}): which port?")
        try:
            self.connect(where, address, port, timeout).close()
        except OSError:
            return False
        return True

    # -- agents and processes ----------------------------------------------------------
    def processes(self, node: str) -> list[int]:
        """Pids of every process in the node's namespace (`ip netns pids`)."""
        ns = self._node_ns(node)
        self._reap()
        return netns.pids(ns)

    def _is_agent(self, pid: int, node: str) -> bool:
        return runs_agent(pid, node, self.data_dir(node))

    def agent_pid(self, node: str) -> int | None:
        """The pid of the node's agent, if it runs (frozen counts as running)."""
        self._node(node)
        self._reap()
        recorded = self._fresh()["nodes"][node].get("agent_pid")
        own = self._procs.get(node)
        if own is not None and own.pid == recorded and own.poll() is None:
            # Started by this process and not dead: right after the fork its
            # command line is still ours, before `nsenter` runs.
            return int(recorded)
        if recorded and self._is_agent(recorded, node):
            return int(recorded)
        for pid in netns.pids(self._node_ns(node)):
            if self._is_agent(pid, node):
                return pid
        return None

    def agent_state(self, node: str) -> str:
        """ "running", "frozen" or "stopped" (no agent)."""
        pid = self.agent_pid(node)
        if pid is None:
            return "stopped"
        return "frozen" if netns.stopped(pid) else "running"

    def start(self, node: str) -> int:
        """Start the node's agent (unless it runs); its pid. Does not wait: see `wait_up`."""
        pid = self.agent_pid(node)
        if pid is not None:
            return pid
        proc = spawn_agent(
            netns.in_namespace(
                self._node_ns(node),
                agent_command(
                    self.spec_path,
                    node,
                    self.data_dir(node),
                    str(self.state.get("log_format", "text")),
                ),
            ),
            self.log_path(node),
            f"ninefold lab {self.id}: starting agent {node}",
            cwd=self.spec_path.parent,
            env={"NINEFOLD_LAB_ID": self.id},  # its pools' lab provider makes machines here
        )
        self._procs[node] = proc
        self._update(lambda state: state["nodes"][node].update(agent_pid=proc.pid))
        return proc.pid

    def kill(self, node: str) -> None:
        """SIGKILL every process in the node's namespace (a machine losing power)."""
        netns.kill_all(self._node_ns(node))
        self._forget_agent(node)

    def stop(self, node: str, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the node's agent and wait until every process in its namespace
        is gone; after `timeout`, SIGKILL what is left and raise LabError."""
        ns = self._node_ns(node)
        pid = self.agent_pid(node)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        netns.signal_all(ns, signal.SIGCONT)  # a frozen node could not stop
        deadline = time.monotonic() + timeout
        while self.processes(node):
            if time.monotonic() > deadline:
                left = self.processes(node)
                netns.kill_all(ns)
                self._forget_agent(node)
                raise LabError(
                    f"node {node} did not stop within {timeout:g}s; killed pids "
                    f"{', '.join(map(str, left))} (log: {self.log_path(node)})"
                )
            time.sleep(0.05)
        self._forget_agent(node)

    def freeze(self, node: str, timeout: float = 10.0) -> None:
        """SIGSTOP every process in the node's namespace: a hung machine."""
        ns = self._node_ns(node)
        deadline = time.monotonic() + timeout
        while True:
            netns.signal_all(ns, signal.SIGSTOP)
            left = [p for p in netns.pids(ns) if not netns.stopped(p)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise LabError(f"node {node}: processes {left} did not stop")
            time.sleep(0.02)

    def thaw(self, node: str) -> None:
        """SIGCONT every process in the node's namespace."""
        netns.signal_all(self._node_ns(node), signal.SIGCONT)

    def _forget_agent(self, node: str) -> None:
        self._reap()
        self._update(lambda state: state["nodes"][node].update(agent_pid=None))

    def _reap(self) -> None:
        """Collect the exit status of agents this process started and that died."""
        for node, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[node]

    # -- waiting -----------------------------------------------------------------------
    def health(self, node: str, timeout: float = HEALTH_TIMEOUT) -> int | None:
        """The status code of the node's /v1/health seen from the client; None: no answer."""
        try:
            status, _ = self.http_get("client", self.api_url(node) + "/v1/health", timeout)
        except OSError:
            return None
        return status

    def cluster_status(self, via: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """/v1/status of the node `via`, from the client; None if it does not answer 200."""
        try:
            status, body = self.http_get("client", self.api_url(via) + "/v1/status", timeout)
            data = json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def wait_up(
        self,
        timeout: float = UP_TIMEOUT,
        progress: Progress | None = None,
        nodes: Iterable[str] | None = None,
    ) -> None:
        """Wait until `nodes` (default: all) answer /v1/health with a store, and
        the cluster has a leader and sees them up. StartFailed when an agent
        dies or time runs out."""
        say = progress or _quiet
        names = list(nodes) if nodes is not None else self.nodes
        for name in names:
            self._node(name)
        deadline = time.monotonic() + timeout
        state = "waiting for the agents"
        last = ""
        while True:
            for name in names:
                if self.agent_pid(name) is None:
                    raise StartFailed(self._died(name))
            answers = {name: self.health(name) for name in names}
            answering = [n for n, code in answers.items() if code is not None]
            store_ok = [n for n, code in answers.items() if code == 200]
            if len(answering) < len(names):
                state = f"waiting for the agents: {len(answering)} of {len(names)} answer"
            elif len(store_ok) < len(names):
                state = f"waiting for the store: {len(store_ok)} of {len(names)} reach it"
            else:
                status = self.cluster_status(store_ok[0])
                up = {n["name"] for n in (status or {}).get("nodes", []) if n.get("state") == "up"}
                if status is not None and status.get("leader") and all(n in up for n in names):
                    say(f"lab {self.id}: {', '.join(names)} up, leader {status['leader']}")
                    return
                if status is not None and not status.get("leader"):
                    state = "waiting for the cluster to elect a leader"
                else:
                    count = len([n for n in names if n in up])
                    state = f"waiting for the nodes to join: {count} of {len(names)} up"
            if state != last:
                say(state)
                last = state
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"lab {self.id}: cluster {self.spec.cluster} not up after {timeout:g}s "
                    f"({state}); agent logs: {self.state_dir}/<node>/agent.log"
                )
            time.sleep(POLL)

    def _died(self, node: str) -> str:
        return agent_died(node, self._procs.get(node), self.log_path(node))

    # -- network faults ----------------------------------------------------------------
    def _apply(self, blocks: faults.Blocks, fault: dict[str, Any] | None) -> None:
        if shutil.which("nft") is None:
            raise LabUnsupported("network faults need nftables' `nft` (apt-get install nftables)")
        for node in self.nodes:
            self._nft(self.namespace(node), faults.ruleset(blocks.get(node, ())))
        self._update(lambda state: state["network"].update(fault=fault))

    def _nft(self, ns: str, script: str) -> None:
        try:
            netns.command(netns.in_namespace(ns, ["nft", "-f", "-"]), input=script)
        except netns.CommandFailed as exc:
            raise LabError(f"nft in {ns}: {exc.stderr}") from None

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network between groups of nodes, both ways; nodes in no group
        and the client are not touched. Replaces an earlier partition or isolation."""
        groups = [[g] if isinstance(g, str) else list(g) for g in groups]
        for group in groups:
            for node in group:
                self._node(node)
        addresses = {n: self.address(n) for n in self.nodes}
        try:
            blocks = faults.partition_blocks(groups, addresses)
        except faults.BadGroups as exc:
            raise LabError(str(exc)) from None
        self._apply(blocks, {"partition": groups})

    def isolate(self, zone: str) -> None:
        """The zone's nodes reach each other and nobody else (other nodes, the
        client). Replaces an earlier partition or isolation."""
        inside = self._zone_nodes(zone)
        addresses = {n: self.address(n) for n in self.nodes}
        self._apply(
            faults.isolation_blocks(inside, addresses, self.client_address), {"isolate": zone}
        )

    def heal(self) -> None:
        """Remove every lab nftables table (partitions, isolation) and every delay."""
        if shutil.which("nft") is not None:
            for ns in self.state["namespaces"].values():
                self._nft(ns, faults.removal())
        for node in self.delays:
            self.slow(node, 0)
        self._update(lambda state: state["network"].update(fault=None))

    def slow(self, node: str, delay_s: float) -> None:
        """Delay every packet the node sends by `delay_s` (netem); 0 removes it.
        LabUnsupported when the kernel has no netem."""
        ns = self._node_ns(node)
        if delay_s <= 0:
            with contextlib.suppress(netns.CommandFailed):
                netns.command(netns.in_namespace(ns, ["tc", "qdisc", "del", "dev", "eth0", "root"]))
            self._update(lambda state: state["network"].setdefault("slow", {}).pop(node, None))
            return
        if shutil.which("tc") is None:
            raise LabUnsupported(
                "netem is not available: no `tc` command (apt-get install iproute2)"
            )
        delay = f"{delay_s * 1000:g}ms"
        try:
            netns.command(
                netns.in_namespace(
                    ns, ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", delay]
                )
            )
        except netns.CommandFailed as exc:
            if "kind is unknown" in exc.stderr or "netem" in exc.stderr.lower():
                raise LabUnsupported(
                    f"netem is not available in this kernel: tc says {exc.stderr!r}"
                ) from None
            raise LabError(f"tc in {ns}: {exc.stderr}") from None
        self._update(lambda state: state["network"].setdefault("slow", {}).update({node: delay_s}))

    @property
    def fault(self) -> dict[str, Any] | None:
        """The current partition ({"partition": groups}) or isolation ({"isolate": zone})."""
        return self._fresh()["network"].get("fault")  # type: ignore[no-any-return]

    @property
    def delays(self) -> dict[str, float]:
        """node -> seconds its packets are delayed by (`slow`)."""
        return dict(self._fresh()["network"].get("slow", {}))

    # -- addresses ---------------------------------------------------------------------
    def addresses(self, node: str) -> set[str]:
        """IPv4 addresses on the node's interfaces other than lo."""
        found = netns.ipv4_addresses(self._node_ns(node))
        return {a for ifname, addrs in found.items() if ifname != "lo" for a in addrs}

    def holders(self, address: str) -> list[str]:
        """Nodes whose interfaces carry `address`."""
        return [n for n in self.nodes if address in self.addresses(n)]

    def mac(self, node: str) -> str:
        """The MAC address of the node's eth0."""
        links = netns.ip_json(self._node_ns(node), "link", "show", "dev", "eth0")
        return str(links[0]["address"])

    def client_neighbor(self, address: str) -> str | None:
        """The MAC the client's neighbour (ARP) table gives `address`; None when
        it has no usable entry (absent, FAILED, INCOMPLETE)."""
        entries = netns.ip_json(self.namespace("client"), "neigh", "show", "to", address)
        for entry in entries:
            states = set(entry.get("state", []))
            if entry.get("lladdr") and not states & {"FAILED", "INCOMPLETE"}:
                return str(entry["lladdr"])
        return None

    # -- the end -----------------------------------------------------------------------
    def down(self) -> None:
        """Kill every process in the lab's namespaces, delete the namespaces (their
        links, bridges and nftables tables go with them) and the state directory."""
        spaces = list(self.state["namespaces"].values())
        _remove_namespaces(spaces)
        self._reap()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- machines made later (the lab provider of node pools) -------------------------
    def add_machine(self, name: str, zone: str, tags: Mapping[str, str]) -> str:
        """A new machine: a namespace with an address of the lab's subnet on
        `zone`'s bridge, nothing running in it yet; its address."""
        if name in self._fresh()["namespaces"]:
            raise LabError(f"lab {self.id}: a machine named {name!r} exists already")
        bridge = self._zone_bridge(zone)
        address = self._free_address()
        ns = topology.namespace_name(self.id, name)
        index = len(self.state["nodes"])
        port = topology.machine_port(name, index)
        router = self.state["router"]["namespace"]
        netns.add(ns)
        try:
            netns.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                     "netns", router)  # fmt: skip
            netns.ip("-n", router, "link", "set", port, "master", bridge, "up")
            prefix = ipaddress.ip_network(self.state["subnet"]).prefixlen
            netns.ip("-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            netns.ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            netns.delete(ns)
            raise

        def add(state: dict[str, Any]) -> None:
            state["namespaces"][name] = ns
            state["nodes"][name] = {
                "address": address, "zone": zone, "namespace": ns, "port": port,
                "api_port": defaults.API_PORT, "data_dir": str(self.state_dir / name),
                "agent_pid": None, "machine": {"tags": dict(tags), "powered": True},
            }  # fmt: skip

        self._update(add)
        return address

    def boot(self, name: str, script: str) -> int:
        """Run a machine's bootstrap script (its cloud user-data) inside it,
        detached; its output goes to `<data dir>/boot.log`. The pid."""
        directory = self.data_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "user-data.sh"
        path.write_text(script)
        path.chmod(0o700)
        proc = spawn_agent(
            netns.in_namespace(self._node_ns(name), ["/bin/sh", str(path)]),
            directory / "boot.log",
            f"ninefold lab {self.id}: booting {name}",
            cwd=directory,
        )
        return proc.pid

    def machines(self) -> dict[str, dict[str, Any]]:
        """Machines made by `add_machine`: name -> their state (zone, address, tags, powered)."""
        out = {}
        for name, node in self._fresh()["nodes"].items():
            if "machine" in node:
                out[name] = {"zone": node["zone"], "address": node["address"], **node["machine"]}
        return out

    def power_off(self, name: str) -> None:
        """Every process in the machine killed, as when its power goes; it stays."""
        if name not in self.machines():
            return
        self.kill(name)
        self._update(lambda state: state["nodes"][name]["machine"].update(powered=False))

    def remove_machine(self, name: str) -> None:
        """The machine gone: its processes killed, its namespace deleted."""
        if name not in self.machines():
            return
        ns = self._node_ns(name)
        netns.kill_all(ns)
        netns.delete(ns)

        def forget(state: dict[str, Any]) -> None:
            state["namespaces"].pop(name, None)
            gone = state["nodes"].pop(name, None)
            if gone is not None:  # never given again: fault rules may still name it
                state.setdefault("retired", []).append(gone["address"])

        self._update(forget)

    def _zone_bridge(self, zone: str) -> str:
        zones = self.state["zones"]
        if zone not in zones:
            raise UnknownName(
                f"no zone named {zone!r} in lab {self.id} (zones: {', '.join(zones)})"
            )
        return str(zones[zone]["bridge"])

    def _free_address(self) -> str:
        subnet = ipaddress.ip_network(self.state["subnet"])
        taken = {str(a) for a in topology.spec_addresses(self.spec)}
        taken |= {n["address"] for n in self._fresh()["nodes"].values()}
        taken |= set(self.state.get("retired", []))
        taken.add(self.state["client"]["address"])
        for host in subnet.hosts():
            if str(host) not in taken and int(host) & 0xFF >= 100:
                return str(host)
        raise LabError(f"lab {self.id}: no free address left in {subnet}")

    def __repr__(self) -> str:
        return f"Lab({self.id!r}, nodes={self.nodes})"


# --- building -------------------------------------------------------------------------


def _build(plan: topology.Plan) -> None:
    router = plan.router_namespace
    netns.add(router)
    for bridge in [topology.CORE_BRIDGE, *(z.bridge for z in plan.zones)]:
        netns.ip("-n", router, "link", "add", bridge, "type", "bridge")
        netns.ip("-n", router, "link", "set", bridge, "up")
    for z in plan.zones:
        netns.ip("-n", router, "link", "add", z.uplink, "type", "veth", "peer", "name", z.downlink)
        netns.ip("-n", router, "link", "set", z.uplink, "master", z.bridge, "up")
        netns.ip("-n", router, "link", "set", z.downlink, "master", topology.CORE_BRIDGE, "up")
    prefix = plan.subnet.prefixlen
    hosts = [(n.namespace, n.port, plan.zone_of(n.zone).bridge, n.address) for n in plan.nodes]
    hosts.append((plan.client_namespace, topology.CLIENT_PORT, topology.CORE_BRIDGE,
                  plan.client_address))  # fmt: skip
    for ns, port, bridge, address in hosts:
        netns.add(ns)
        netns.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                 "netns", router)  # fmt: skip
        netns.ip("-n", router, "link", "set", port, "master", bridge, "up")
        netns.ip("-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
        netns.ip("-n", ns, "link", "set", "eth0", "up")


def _new_id() -> str:
    taken = {name.split("-", 1)[0] for name in netns.namespaces()}
    root = state_root()
    while True:
        lab_id = f"nf{secrets.token_hex(2)}"
        if lab_id not in taken and not (root / lab_id).exists():
            return lab_id


# --- finding and removing every lab ---------------------------------------------------


def running_labs() -> list[str]:
    """Ids of the labs under the state root whose namespaces exist."""
    root = state_root()
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if (
            topology.ID_RE.match(entry.name)
            and (entry / STATE_FILE).exists()
            and netns.exists(topology.namespace_name(entry.name, "router"))
        ):
            out.append(entry.name)
    return out


def _remove_namespaces(spaces: list[str]) -> None:
    """Kill every process in these namespaces (all of them first, so nothing
    is left to talk to a half-removed lab), then delete the namespaces."""
    for ns in spaces:
        netns.signal_all(ns, signal.SIGKILL)
    for ns in spaces:
        netns.kill_all(ns)
    for ns in spaces:
        netns.delete(ns)


def down_all(ids: Iterable[str] | None = None) -> list[str]:
    """Remove every lab namespace (`nfXXXX-*`: their processes killed first) and
    every lab state directory under the state root, whatever state they are in:
    cleanup after a crash. `ids` limits it to those labs. What it removed."""
    require_root()
    wanted = set(ids) if ids is not None else None

    def chosen(lab_id: str) -> bool:
        return wanted is None or lab_id in wanted

    spaces = [
        ns for ns in netns.namespaces() if netns.NAME_RE.match(ns) and chosen(ns.split("-", 1)[0])
    ]
    _remove_namespaces(spaces)
    removed = list(spaces)
    root = state_root()
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and topology.ID_RE.match(entry.name) and chosen(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed
