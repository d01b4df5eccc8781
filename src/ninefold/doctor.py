"""Preflight checks: what this machine needs to run one node of a spec.

`ninefold doctor` runs them before `init`, `join` or `agent` (kubeadm's
preflight checks are the model). Each check is a small function of a
`Target` (the spec, this node, its data directory) returning one `Finding`:

- `ok`: nothing to do;
- `warn`: the node runs, but not as well as it should;
- `fail`: it blocks: the node will not run, or not correctly;
- `skip`: it does not apply to this node (or could not be made yet).

Every warn and fail carries a one-line fix. The checks run in parallel
threads and each bounds its own waits (`etcd --version`, `haproxy -v`, the
requests to agents), so a run takes about as long as the slowest one.
The CLI (`ninefold.cli.doctor`) picks the node and renders the findings.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx
import psutil

from ninefold import defaults
from ninefold.client import ApiError, api_scheme, api_verify, node_url
from ninefold.net import bind_error
from ninefold.spec import ClusterSpec, NodeSpec
from ninefold.spec.errors import format_loc

Status = Literal["ok", "warn", "fail", "skip"]

HAPROXY_TESTED = (2, 6)
"""The HAProxy series ninefold is tested with (Debian 12's); older ones warn."""
HAPROXY_JWT = (2, 5)
"""The first HAProxy with `jwt_verify`, which access policies need."""
VERSION_TIMEOUT = 2.0
"""Seconds `haproxy -v` or `rsync --version` may take."""
CLOCK_SAMPLES = 3
"""Requests per node to estimate its clock; the one with the shortest round trip counts."""
CAP_NET_ADMIN = 12
"""Bit of CAP_NET_ADMIN in /proc/<pid>/status's capability masks (`ip addr`)."""
CAP_NET_RAW = 13
"""Bit of CAP_NET_RAW (the raw packet socket gratuitous ARPs are sent on)."""
CAPABILITY_GRANT = "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW"
CLOCK_FIX = (
    "synchronise every node's clock with NTP (timedatectl set-ntp true, or apt-get install chrony)"
)


@dataclass(frozen=True)
class Finding:
    """What one check found."""

    check: str
    status: Status
    detail: str
    fix: str | None = None
    """One line saying how to fix it (for warn and fail)."""

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What the checks look at: one node of a spec, run on this machine."""

    spec: ClusterSpec
    node: NodeSpec
    data_dir: Path
    spec_path: Path | None = None

    def loc(self, *rest: str) -> str:
        """Where in the spec file a key of this node is, e.g. `nodes[1].address in x.yaml`."""
        index = next(i for i, n in enumerate(self.spec.nodes) if n.name == self.node.name)
        where = format_loc(("nodes", index, *rest))
        return f"{where} in {self.spec_path}" if self.spec_path is not None else where


# --- which node this machine is ------------------------------------------------------


class NodeChoiceError(Exception):
    """Which node of the spec this machine is cannot be told from its addresses."""


def local_addresses() -> set[str]:
    """Every IPv4 and IPv6 address on this machine's interfaces, normalised."""
    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(ValueError):
                    found.add(str(ipaddress.ip_address(address.address.split("%", 1)[0])))
    return found


def is_local(address: str, local: Iterable[str] | None = None) -> bool:
    """Whether `address` is this machine's: on an interface, or loopback (on
    Linux every 127.x.y.z is local without being listed)."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or str(ip) in (local_addresses() if local is None else set(local))


def pick_node(spec: ClusterSpec, local: Iterable[str] | None = None) -> NodeSpec:
    """The one node of `spec` whose address is on this machine; NodeChoiceError
    when there is none or more than one."""
    here = set(local_addresses() if local is None else local)
    mine = [n for n in spec.nodes if is_local(n.address, here)]
    if len(mine) == 1:
        return mine[0]
    if mine:
        names = ", ".join(f"{n.name} ({n.address})" for n in mine)
        raise NodeChoiceError(
            f"several nodes of the spec have their address on this machine: {names}; "
            "say which one this is with --node NAME"
        )
    names = ", ".join(f"{n.name} ({n.address})" for n in spec.nodes)
    raise NodeChoiceError(
        f"no node of the spec has its address on this machine (nodes: {names}); "
        "say which one this is with --node NAME"
    )


# --- running them ----------------------------------------------------------------------

Check = Callable[[Target], Finding]


def check_name(check: Check) -> str:
    """`check_data_dir` -> `data dir`: the name its findings carry."""
    return check.__name__.removeprefix("check_").replace("_", " ")


def run_checks(target: Target, checks: Iterable[Check] | None = None) -> list[Finding]:
    """Every check's finding, in the order of `checks` (default CHECKS), run in parallel."""
    chosen = list(CHECKS if checks is None else checks)
    with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        futures = [pool.submit(_guarded, check, target) for check in chosen]
        return [future.result() for future in futures]


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "fail"]


def _guarded(check: Check, target: Target) -> Finding:
    try:
        return check(target)
    except Exception as exc:  # a bug in a check must not hide the other findings
        detail = f"the check itself failed: {type(exc).__name__}: {exc}"
        return Finding(check_name(check), "fail", detail, "report this as a ninefold bug")


# --- the node's address -------------------------------------------------------------


def check_address(target: Target) -> Finding:
    """The node's address is on an interface of this machine (loopback always is)."""
    address = target.node.address
    here = local_addresses()
    if is_local(address, here):
        how = "on this machine"
        if ipaddress.ip_address(address).is_loopback and address not in here:
            how = "local (every loopback address is)"
        return Finding("address", "ok", f"{address} (node {target.node.name}) is {how}")
    others = sorted(
        a for a in here if not (ip := ipaddress.ip_address(a)).is_loopback and not ip.is_link_local
    )
    has = f"it has {', '.join(others)}" if others else "it has no address but loopback"
    return Finding(
        "address",
        "fail",
        f"{address} (node {target.node.name}) is on no interface of this machine ({has})",
        f"add it (ip addr add {address}/PREFIX dev IFACE), run this on the node's own "
        f"machine, or correct {target.loc('address')}",
    )


# --- ports -----------------------------------------------------------------------------


def port_holders(address: str, ports: Iterable[int]) -> dict[int, int]:
    """port -> pid of the process bound to it on `address` (or on every address),
    for the ports psutil can tell (another user's processes need root)."""
    wanted = set(ports)
    anywhere = {address, "0.0.0.0", "::"}
    found: dict[int, int] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return found
    for conn in connections:
        if not conn.laddr or conn.pid is None or conn.raddr:
            continue
        ip, port = conn.laddr[0], conn.laddr[1]
        if port in wanted and ip.split("%", 1)[0] in anywhere:
            found.setdefault(port, conn.pid)
    return found


def describe_process(pid: int) -> str:
    try:
        return f"{psutil.Process(pid).name()} pid {pid}"
    except psutil.Error:
        return f"pid {pid}"


@dataclass(frozen=True)
class RunningAgent:
    pid: int | None
    how: str
    """`pid 123` or `answers at http://...`."""


def running_agent(target: Target) -> RunningAgent | None:
    """This node's own agent, if it runs: by its pid file (in the data
    directory, or that of `ninefold up`), else by its API answering as it."""
    from ninefold.local import runs_agent

    name = target.node.name
    local_root = defaults.data_root() / "local" / target.spec.cluster / name
    for data_dir in dict.fromkeys([target.data_dir, local_root]):
        with contextlib.suppress(OSError, ValueError):
            pid = int((data_dir / "agent.pid").read_text().strip())
            if runs_agent(pid, name, data_dir):
                return RunningAgent(pid, f"pid {pid}")
    url = node_url(target.node, api_scheme(target.spec))
    try:
        with api_client(target.spec) as client:
            answer = client.get(f"{url}/v1/health").json()
    except (ProbeError, httpx.HTTPError, ValueError):
        return None
    if isinstance(answer, dict) and answer.get("node") == name:
        return RunningAgent(None, f"answers at {url}")
    return None


def _process_tree(pid: int) -> set[int]:
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}


def check_ports(target: Target) -> Finding:
    """Every port the node will listen on is free on its address (or held by
    this node's own agent, already running)."""
    node = target.node
    ports = target.spec.listen_ports(node)
    listed = ", ".join(f"{what} {port}" for what, port in ports)
    if not is_local(node.address):
        return Finding("ports", "skip", f"not checked: {node.address} is not on this machine")
    busy: list[tuple[str, int]] = []
    privileged: list[tuple[str, int]] = []
    for what, port in ports:
        problem = bind_error(node.address, port)
        if problem is None:
            continue
        (privileged if problem.errno == errno.EACCES else busy).append((what, port))
    if not busy and not privileged:
        return Finding("ports", "ok", f"free on {node.address}: {listed}")
    holders = port_holders(node.address, [port for _, port in busy]) if busy else {}
    agent = running_agent(target) if busy else None
    if agent is not None:
        pid = agent.pid or holders.get(node.ports.api)
        tree = _process_tree(pid) if pid is not None else set()
        theirs = [(w, p) for w, p in busy if tree and p in holders and holders[p] not in tree]
        if not theirs and not privileged:
            held = ", ".join(f"{what} {port}" for what, port in busy)
            return Finding(
                "ports", "ok", f"held by node {node.name}'s running agent ({agent.how}): {held}"
            )
        busy = theirs
    problems, fixes = [], []
    if busy:
        used = ", ".join(
            f"{what} {port}" + (f" ({describe_process(holders[port])})" if port in holders else "")
            for what, port in busy
        )
        problems.append(f"in use on {node.address}: {used}")
        fixes.append(f"stop what holds them, or give the node other ports ({target.loc('ports')})")
    if privileged:
        low = ", ".join(f"{what} {port}" for what, port in privileged)
        problems.append(f"only root or CAP_NET_BIND_SERVICE may listen on {low}")
        fixes.append(
            "run the agent as root, or grant it CAP_NET_BIND_SERVICE "
            "(systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
        )
    return Finding("ports", "fail", "; ".join(problems), "; ".join(fixes))


# --- etcd and HAProxy ------------------------------------------------------------------


def check_etcd(target: Target) -> Finding:
    """A store member of an embedded store needs an etcd binary, of a version
    without known data-inconsistency bugs."""
    from ninefold.store.etcd_binary import ENV_VAR, EtcdNotFound, find_etcd
    from ninefold.store.etcd_versions import etcd_warnings

    if target.spec.store.mode != "embedded":
        return Finding("etcd", "skip", "external store: this node runs no etcd")
    if not target.node.store:
        return Finding("etcd", "skip", f"node {target.node.name} is not a store member")
    try:
        binary = find_etcd()
    except EtcdNotFound as exc:
        message = str(exc)
        detail, sep, hint = message.partition(": install ")
        if sep:
            return Finding("etcd", "fail", detail, "install " + hint)
        fix = f"point ${ENV_VAR} at a working etcd binary, or unset it"
        return Finding("etcd", "fail", message, fix)
    detail = f"etcd {binary.version} ({binary.source}, {binary.path})"
    warnings = etcd_warnings(binary.version)
    if warnings:
        return Finding(
            "etcd",
            "warn",
            f"{detail}: {'; '.join(warnings)}",
            "run a fixed etcd release (docs/operations.md#which-etcd): upgrade its "
            f"package, or point ${ENV_VAR} at a newer binary",
        )
    return Finding("etcd", "ok", detail)


_HAPROXY_VERSION = re.compile(r"HA-?Proxy version (\d+)\.(\d+)(?:\.(\d+))?")


def program_version(argv: list[str], pattern: re.Pattern[str]) -> tuple[int, int, int] | None:
    """The version a program prints for `argv` (major, minor, patch; a
    missing patch is 0), None when it does not run or says none."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = pattern.search(done.stdout + done.stderr)
    if found is None:
        return None
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


def haproxy_version(binary: str) -> tuple[int, int, int] | None:
    return program_version([binary, "-v"], _HAPROXY_VERSION)


def check_haproxy(target: Target) -> Finding:
    """The haproxy gateway engine needs HAProxy (2.6 is what ninefold is tested with)."""
    from ninefold.gateway.haproxy import engine

    gateway = target.spec.gateway
    if not gateway.enabled:
        return Finding("haproxy", "skip", "the gateway is disabled")
    if gateway.engine == "builtin":
        return Finding("haproxy", "skip", "gateway engine builtin: nothing to install")
    install = "apt-get install haproxy (2.6 or later)"
    binary = engine.haproxy_binary()
    if binary is None:
        if gateway.engine == "auto":
            return Finding("haproxy", "skip", "gateway engine auto: no haproxy here, builtin runs")
        return Finding(
            "haproxy",
            "fail",
            "gateway engine haproxy, but no haproxy on PATH, /usr/local/sbin or /usr/sbin",
            install,
        )
    version = haproxy_version(binary)
    if version is None:
        return Finding("haproxy", "fail", f"{binary} -v says no HAProxy version", install)
    text = ".".join(str(part) for part in version)
    detail = f"HAProxy {text} ({binary})"
    if gateway.engine == "auto":
        detail = f"gateway engine auto runs {detail}"
    guarded = sorted(name for name, s in target.spec.services.items() if s.access is not None)
    if guarded and version[:2] < HAPROXY_JWT:
        why = f"{detail} lacks jwt_verify (2.5), which the access policies of {', '.join(guarded)}"
        return Finding("haproxy", "fail", f"{why} need", install)
    if version[:2] < HAPROXY_TESTED:
        return Finding(
            "haproxy",
            "warn",
            f"{detail} is older than 2.6, the version ninefold is tested with; it may "
            "refuse the configuration ninefold renders",
            install,
        )
    return Finding("haproxy", "ok", detail)


# --- VIPs: ip and capabilities --------------------------------------------------------


def node_vips(target: Target) -> list[str]:
    """`address (for whom)` of every VIP this node may hold: the gateway's, and
    those of the services its labels allow."""
    spec = target.spec
    found = []
    if spec.gateway.enabled and spec.gateway.vip is not None:
        found.append(f"{spec.gateway.vip.address} (gateway)")
    for name, service in spec.services.items():
        if service.vip is not None and target.node.matches(service.placement.constraints):
            found.append(f"{service.vip.address} ({name})")
    return found


def check_ip(target: Target) -> Finding:
    """VIPs are added and removed with iproute2's `ip`."""
    vips = node_vips(target)
    if not vips:
        return Finding("ip", "skip", "no VIP this node may hold")
    found = shutil.which("ip")
    if found is None:
        return Finding(
            "ip",
            "fail",
            f"no `ip` command on PATH, which adds and removes the VIPs {', '.join(vips)}",
            "apt-get install iproute2",
        )
    return Finding("ip", "ok", f"{found}, for the VIPs {', '.join(vips)}")


@dataclass(frozen=True)
class Capabilities:
    effective: int
    ambient: int
    root: bool

    def has(self, bit: int) -> bool:
        return bool(self.effective >> bit & 1)


def read_capabilities() -> Capabilities:
    """This process's effective and ambient capability sets (/proc/self/status)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return Capabilities(
        effective=int(fields.get("CapEff", "0"), 16),
        ambient=int(fields.get("CapAmb", "0"), 16),
        root=os.geteuid() == 0,
    )


def check_capabilities(target: Target) -> Finding:
    """Holding a VIP takes CAP_NET_ADMIN (`ip addr`, a child of the agent) and
    CAP_NET_RAW (gratuitous ARP, from the agent itself)."""
    vips = node_vips(target)
    if not vips:
        return Finding("capabilities", "skip", "no VIP this node may hold")
    caps = read_capabilities()
    missing = [
        name
        for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"))
        if not caps.has(bit)
    ]
    grant = f"run the agent as root, or grant it the capabilities (systemd: {CAPABILITY_GRANT})"
    if missing:
        return Finding(
            "capabilities",
            "fail",
            f"this process lacks {' and '.join(missing)}, which holding the VIPs "
            f"{', '.join(vips)} needs (ip addr; gratuitous ARP)",
            grant,
        )
    if not caps.root and not caps.ambient >> CAP_NET_ADMIN & 1:
        return Finding(
            "capabilities",
            "warn",
            "CAP_NET_ADMIN is effective but not ambient: the `ip` command the agent runs "
            "to add the VIPs would not inherit it",
            grant,
        )
    how = "root" if caps.root else "ambient"
    return Finding("capabilities", "ok", f"CAP_NET_ADMIN and CAP_NET_RAW ({how}), for the VIPs")


# --- setpriv ------------------------------------------------------------------------------


def check_setpriv(target: Target) -> Finding:
    """The supervisor starts children through util-linux's setpriv (see
    ninefold.supervisor.process); without it, a slower and less safe fallback."""
    found = shutil.which("setpriv")
    if found is None:
        return Finding(
            "setpriv",
            "warn",
            "no setpriv on PATH: the supervisor sets its children's parent-death signal "
            "in a Python preexec_fn instead, which is not safe under uvloop (children "
            "crashed now and then)",
            "apt-get install util-linux",
        )
    return Finding("setpriv", "ok", found)


RSYNC_MIN = (3, 1, 3)
"""Replicated volumes pass --modify-window=-1 (exact modification times),
which rsync has from 3.1.3 on."""
_RSYNC_VERSION = re.compile(r"rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)")


def rsync_version(binary: str) -> tuple[int, int, int] | None:
    return program_version([binary, "--version"], _RSYNC_VERSION)


def check_rsync(target: Target) -> Finding:
    """Replicated volumes are sent and received by rsync on every node."""
    if not target.spec.replicates_volumes:
        return Finding("rsync", "skip", "no replicated volume in the spec")
    found = shutil.which("rsync")
    if found is None:
        return Finding(
            "rsync", "fail", "no rsync on PATH: replicated volumes cannot be sent or received",
            "apt-get install rsync",
        )  # fmt: skip
    version = rsync_version(found)
    if version is None:
        return Finding(
            "rsync", "fail", f"{found} does not say its version", "apt-get install rsync"
        )
    text = ".".join(map(str, version))
    if version < RSYNC_MIN:
        need = ".".join(map(str, RSYNC_MIN))
        return Finding(
            "rsync", "fail", f"rsync {text} ({found}) is older than {need}",
            f"install rsync {need} or later",
        )  # fmt: skip
    return Finding("rsync", "ok", f"rsync {text} ({found})")


# --- clocks ---------------------------------------------------------------------------------


class ProbeError(Exception):
    """An agent could not be asked; the message says why, in a few words."""


@dataclass(frozen=True)
class ClockSample:
    node: str
    """The node the agent answered as."""
    offset: float
    """Its clock minus this machine's, in seconds."""
    error: float
    """Half the round trip: the true offset is within offset ± error."""


def api_client(spec: ClusterSpec, timeout: float | None = None) -> httpx.Client:
    """A client of the agents' APIs, short timeouts; ProbeError when the
    cluster's CA cannot be read."""
    try:
        verify = api_verify(spec)
    except ApiError as exc:
        raise ProbeError(exc.message) from None
    wait = defaults.DOCTOR_PROBE_TIMEOUT if timeout is None else timeout
    return httpx.Client(verify=verify, timeout=wait, trust_env=False)


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {defaults.DOCTOR_PROBE_TIMEOUT:g} s"
    text = str(exc) or type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).lower()


def probe_clock(client: httpx.Client, url: str, samples: int = CLOCK_SAMPLES) -> ClockSample:
    """The clock of the agent at `url` against this machine's, NTP-style: the
    agent stamps its answer between our send (t0) and receive (t1), so its
    offset is time - (t0 + t1) / 2, within half the round trip. Of `samples`
    requests on one connection (the first also pays for the handshake), the
    one with the shortest round trip counts."""
    best: ClockSample | None = None
    deadline = time.monotonic() + defaults.DOCTOR_PROBE_TIMEOUT
    for _ in range(samples):
        t0 = time.time()
        try:
            response = client.get(f"{url}/v1/health")
        except httpx.HTTPError as exc:
            if best is not None:
                break
            raise ProbeError(_why(exc)) from None
        t1 = time.time()
        try:
            body = response.json()
            node, stamp = str(body["node"]), float(body["time"])
        except (ValueError, KeyError, TypeError):
            if response.status_code not in (200, 503):
                raise ProbeError(f"answers {response.status_code}") from None
            raise ProbeError("answers without its clock (an older ninefold?)") from None
        sample = ClockSample(node, stamp - (t0 + t1) / 2, (t1 - t0) / 2)
        if best is None or sample.error < best.error:
            best = sample
        if time.monotonic() > deadline:
            break
    assert best is not None
    return best


def _clock_of(spec: ClusterSpec, node: NodeSpec) -> ClockSample | str:
    try:
        with api_client(spec) as client:
            sample = probe_clock(client, node_url(node, api_scheme(spec)))
    except ProbeError as exc:
        return str(exc)
    if sample.node != node.name:
        return f"answers as node {sample.node}"
    return sample


def check_clock(target: Target) -> Finding:
    """This machine's clock against those of the other nodes' agents that answer."""
    others = [n for n in target.spec.nodes if n.name != target.node.name]
    if not others:
        return Finding("clock", "skip", "no other node in the spec")
    try:
        api_verify(target.spec)
    except ApiError as exc:
        return Finding("clock", "skip", f"not checked: {exc.message}")
    with ThreadPoolExecutor(max_workers=len(others)) as pool:
        results = list(pool.map(lambda n: _clock_of(target.spec, n), others))
    measured = [(n, r) for n, r in zip(others, results, strict=True) if isinstance(r, ClockSample)]
    unchecked = ", ".join(
        f"{n.name} ({r})" for n, r in zip(others, results, strict=True) if isinstance(r, str)
    )
    if not measured:
        return Finding("clock", "skip", f"no other node's agent answers: {unchecked}")
    offsets = ", ".join(f"{n.name} {s.offset:+.3f} s (±{s.error:.3f})" for n, s in measured)
    detail = f"other clocks minus this one: {offsets}"
    if unchecked:
        detail += f"; not checked: {unchecked}"
    worst = max(abs(s.offset) for _, s in measured)
    if worst > defaults.DOCTOR_CLOCK_FAIL:
        limit = f"more than {defaults.DOCTOR_CLOCK_FAIL:g} s apart"
        return Finding("clock", "fail", f"{detail}; {limit}", CLOCK_FIX)
    if worst > defaults.DOCTOR_CLOCK_WARN:
        limit = f"more than {defaults.DOCTOR_CLOCK_WARN:g} s apart"
        return Finding("clock", "warn", f"{detail}; {limit}", CLOCK_FIX)
    return Finding("clock", "ok", detail)


# --- the data directory ---------------------------------------------------------------------


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest parent that does."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable(path: Path) -> bool:
    """Whether this user may create files in the directory `path`."""
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def gib(size: float) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def check_disk(target: Target) -> Finding:
    """Free space on the filesystem of the data directory."""
    where = nearest_existing(target.data_dir)
    free = shutil.disk_usage(where).free
    detail = f"{gib(free)} free on the filesystem of {where}"
    fix = "free space there, or put the data directory on another filesystem (--data-dir)"
    if free < defaults.DOCTOR_DISK_FAIL_BYTES:
        need = gib(defaults.DOCTOR_DISK_FAIL_BYTES)
        return Finding("disk", "fail", f"{detail}; under {need}", fix)
    if free < defaults.DOCTOR_DISK_WARN_BYTES:
        want = gib(defaults.DOCTOR_DISK_WARN_BYTES)
        return Finding("disk", "warn", f"{detail}; under {want}", fix)
    return Finding("disk", "ok", detail)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_data_dir(target: Target) -> Finding:
    """The data directory is a directory this user may write, or can be made."""
    path = target.data_dir.absolute()
    if path.exists() and not path.is_dir():
        return Finding(
            "data dir",
            "fail",
            f"{path} is not a directory",
            "remove it, or give another --data-dir",
        )
    where = nearest_existing(path)
    if not where.is_dir():
        return Finding(
            "data dir",
            "fail",
            f"{path} cannot be made: {where} is not a directory",
            "give another --data-dir",
        )
    user = _user()
    if not writable(where):
        return Finding(
            "data dir",
            "fail",
            f"{where} is not writable by {user}, so {path} cannot be "
            + ("written" if where == path else "made"),
            f"sudo install -d -o {user} {path}, or give another --data-dir",
        )
    if where == path:
        return Finding("data dir", "ok", f"{path}, writable by {user}")
    return Finding("data dir", "ok", f"{path} (not made yet; {where} is writable by {user})")


CHECKS: tuple[Check, ...] = (
    check_address,
    check_ports,
    check_etcd,
    check_haproxy,
    check_ip,
    check_capabilities,
    check_setpriv,
    check_rsync,
    check_clock,
    check_disk,
    check_data_dir,
)
"""Every check, in the order they are shown."""
