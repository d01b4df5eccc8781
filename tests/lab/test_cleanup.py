"""Cleanup after a crash: a lab whose Python process was SIGKILLed mid-way
leaves namespaces, agents and state behind; `down_all` removes them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ninefold.lab import down_all, netns, running_labs
from tests.helpers import wait_for
from tests.lab.conftest import (
    EXAMPLE,
    assert_gone,
    lab_namespaces,
    live_processes_mentioning,
    root_links,
)

UP = f"""
import sys
from ninefold.lab import Lab
Lab.up({str(EXAMPLE)!r}, progress=lambda line: print(line, flush=True), wait=120)
print("up", flush=True)
import threading
threading.Event().wait()  # until killed
"""


def agents_started(state_dir: Path) -> bool:
    """Whether the crashed-to-be lab has recorded every agent and they run."""
    try:
        state = json.loads((state_dir / "lab.json").read_text())
    except (OSError, ValueError):
        return False
    pids = [node["agent_pid"] for node in state["nodes"].values()]
    return all(pids) and all(netns.alive(pid) for pid in pids)


def test_down_all_after_a_crash(lab_root: Path, links_before: set[str]) -> None:
    others = {ns.split("-", 1)[0] for ns in lab_namespaces()}  # labs not ours: spared
    before = set(running_labs())
    proc = subprocess.Popen(
        [sys.executable, "-c", UP], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "lab nfXXXX: building the network (...)"
        assert first.startswith("lab nf"), first
        lab_id = first.split()[1].rstrip(":")
        state_dir = lab_root / lab_id
        wait_for(lambda: agents_started(state_dir), 60, "the agents to start")
    finally:
        proc.send_signal(signal.SIGKILL)  # the lab's own process dies mid-way
        proc.wait()
    assert set(running_labs()) - before == {lab_id}
    assert len(lab_namespaces(lab_id)) == 5  # 3 nodes, client, router
    assert live_processes_mentioning(str(state_dir))  # orphaned agents, etcd
    assert root_links() <= links_before  # nothing was ever in the root namespace

    removed = down_all(ids=None if not others else {lab_id})
    assert sorted(lab_namespaces(lab_id)) == []
    assert {f"{lab_id}-{n}" for n in ["n1", "n2", "n3", "client", "router"]} <= set(removed)
    assert str(state_dir) in removed
    if not others:
        assert lab_namespaces() == []
    assert_gone(lab_id, state_dir, links_before)
    assert not any(lab_root.iterdir())
    assert down_all(ids={lab_id}) == []  # nothing left to remove
