"""`templates:` on a real 3-node cluster (docs/templates.md): an upstream list
of a service's healthy instances, rendered on the nodes it selects, follows
the instances as one is frozen and thawed and a node dies and returns; its
reload command runs once per change of the file, never without one."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

APPS = Path(__file__).parent / "apps"

UPSTREAM = """\
# {{ cluster }}: web for {{ node.name }}
{% for i in healthy("web") %}
server {{ i.node }} {{ i.address }}:{{ i.port }}
{% endfor %}
"""


def services(root: Path) -> str:
    reloads = f"{root}/reloads-{{node}}"
    return f"""
services:
  web:
    command: [{sys.executable}, {APPS / "whoami.py"}, "{{address}}", "{{port}}"]
    replicas: 3
    check: {{http: /, interval: 200ms, rise: 1, fall: 2}}
templates:
  - name: upstream
    destination: "{root}/out/{{node}}/upstream.conf"
    nodes: [n1, n2]
    wait: 100ms
    command: [sh, -c, 'sha256sum < "{{destination}}" >> "{reloads}"']
    contents: {json.dumps(UPSTREAM)}
"""


def servers(c: LocalCluster, node: str) -> set[str]:
    """The nodes whose instance `node`'s rendered file lists."""
    path = c.root / "out" / node / "upstream.conf"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    return {line.split()[1] for line in text.splitlines() if line.startswith("server ")}


def listing(c: LocalCluster, node: str, want: set[str]) -> bool:
    return servers(c, node) == want


def instance_pid(c: LocalCluster, node: str) -> int:
    (pid,) = [i["pid"] for i in c.status()["instances"] if i["node"] == node and i["pid"]]
    return int(pid)


def test_an_upstream_list_follows_instance_health_and_reloads_once_per_change(
    local_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    c = local_cluster(services(tmp_path))
    c.start_all()
    everyone = {"n1", "n2", "n3"}
    until("n1's file listing all three instances", lambda: listing(c, "n1", everyone), 60)
    until("n2's file too", lambda: listing(c, "n2", everyone), 20)
    text = (c.root / "out" / "n1" / "upstream.conf").read_text()
    header, *lines = text.splitlines()
    assert header == "# test: web for n1"
    for line in lines:  # server <node> <its address>:<the instance's port>
        assert re.fullmatch(r"server n(\d) 127\.0\.0\.\1:\d+", line), text
    assert not (c.root / "out" / "n3").exists()  # n3 is not selected

    # Stopped: a frozen instance fails its checks and leaves the list, then returns.
    pid = instance_pid(c, "n2")
    os.kill(pid, signal.SIGSTOP)
    try:
        until("n2's instance off the list", lambda: listing(c, "n1", {"n1", "n3"}), 30)
    finally:
        os.kill(pid, signal.SIGCONT)
    until("n2's instance back on the list", lambda: listing(c, "n1", everyone), 30)

    # Killed: a dead node's instance leaves the list (with its lease), and returns with it.
    c.kill("n3")
    until("n3's instance off the list", lambda: listing(c, "n1", {"n1", "n2"}), 30)
    until("on n2's list too", lambda: listing(c, "n2", {"n1", "n2"}), 10)
    c.start("n3")
    until("n3's instance back on the list", lambda: listing(c, "n1", everyone), 60)

    # The command ran once per change: each run saw a file other than the one
    # before, the last run saw the file as it is now.
    for node in ("n1", "n2"):
        now = (c.root / "out" / node / "upstream.conf").read_bytes()
        runs = until(
            f"{node}'s reload after the last change",
            functools.partial(_runs_up_to, c, node, now),
            10,
        )
        assert all(a != b for a, b in itertools.pairwise(runs)), runs
        assert len(runs) >= 5, runs  # at least: first, -n2, +n2, -n3, +n3
        rendered = [e for e in c.events() if e["kind"] == "template-rendered" and e["node"] == node]
        assert len(rendered) == len(runs), (rendered, runs)
        assert all(e["subject"] == "upstream" for e in rendered)
    assert not any(e["kind"].startswith("template-") and "failed" in e["kind"] for e in c.events())


def _runs_up_to(c: LocalCluster, node: str, now: bytes) -> list[str] | None:
    """The digests of what the reload command saw, once the last is `now`'s."""
    path = c.root / f"reloads-{node}"
    runs = [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []
    return runs if runs and runs[-1] == hashlib.sha256(now).hexdigest() else None
