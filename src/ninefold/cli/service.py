"""`ninefold install-service`: a systemd unit for this machine's agent."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ninefold import defaults
from ninefold.cli.common import DEFAULT_SPEC, SpecOption, known_node, load
from ninefold.cli.console import EXIT_FAILED, fail, say
from ninefold.systemd_unit import agent_argv, capabilities, render_unit, unit_name

UNIT_DIR = Path("/etc/systemd/system")


def systemd_runs() -> bool:
    """Whether systemd is this machine's init (sd_booted(3))."""
    return Path("/run/systemd/system").is_dir()


def write_atomically(path: Path, text: str) -> None:
    """The whole file or none of it (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def install_service(
    node: Annotated[str, typer.Option("--node", "-n", help="This machine's node in the spec.")],
    spec: SpecOption = DEFAULT_SPEC,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The agent's data. Default: keyed by cluster and node."),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", help="Run the agent as this user (default root, capabilities cut)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the unit ('-': stdout). Default: "
            f"{UNIT_DIR}/ninefold-NODE.service.",
        ),
    ] = None,
    start: Annotated[
        bool,
        typer.Option(
            "--start/--no-start",
            help="Also `systemctl daemon-reload` and `systemctl enable --now` the unit.",
        ),
    ] = False,
) -> None:
    """Write a systemd unit (Type=notify) that runs this node's agent from this
    installation; the capabilities in it are only those the spec needs."""
    cluster = load(spec)
    known_node(cluster, spec, node)
    where = (data_dir or defaults.data_dir(cluster.cluster, node)).absolute()
    text = render_unit(cluster, node, spec.resolve(), where, sys.executable, user)
    if output is not None and str(output) == "-":
        sys.stdout.write(text)
        return
    path = output or UNIT_DIR / unit_name(node)
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_FAILED) from None
    caps = ", ".join(capabilities(cluster, cluster.node(node))) or "none"
    say(f"wrote {path} (node {node}, data {where}, capabilities: {caps})")
    name = path.name
    if not start:
        say(f"start it with: systemctl daemon-reload && systemctl enable --now {name}")
        return
    if shutil.which("systemctl") is None or not systemd_runs():
        by_hand = shlex.join(agent_argv(sys.executable, spec.resolve(), node, where))
        raise fail(f"systemd does not run this machine; start the agent with: {by_hand}")
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", name]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise fail(f"{' '.join(argv)}: {said[-1] if said else done.returncode}")
    say(f"{name} enabled and started; follow it with: journalctl -fu {name}")
