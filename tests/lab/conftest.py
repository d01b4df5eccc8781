"""Fixtures of the lab tier: root, network namespaces, nftables.

Every lab of this tier keeps its state under one temporary NINEFOLD_LAB_ROOT;
`lab` is one lab from examples/lab.yaml shared by a module, removed at the end
of it, with a check that nothing is left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ninefold.lab import Lab, netns

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lab.yaml"
UP_TIMEOUT = 90.0


def lab_tier_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab tier needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the lab tier needs `{tool}`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_tier_reason()
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def root_links() -> set[str]:
    """Names of the links of this process's (the root) network namespace."""
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def lab_namespaces(lab_id: str | None = None) -> list[str]:
    prefix = f"{lab_id}-" if lab_id else ""
    return [ns for ns in netns.namespaces() if netns.NAME_RE.match(ns) and ns.startswith(prefix)]


def live_processes_mentioning(text: str) -> list[str]:
    """`pid cmdline` of every running (not zombie) process whose command line has `text`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if text in cmdline:
            found.append(f"{proc.pid} {cmdline}")
    return found


def assert_gone(lab_id: str, state_dir: Path, links_before: set[str]) -> None:
    """Nothing of the lab is left: namespaces, processes, state, root links."""
    assert lab_namespaces(lab_id) == []
    assert live_processes_mentioning(str(state_dir)) == []
    assert not state_dir.exists()
    assert root_links() <= links_before, root_links() - links_before


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state root for the tier's labs (NINEFOLD_LAB_ROOT)."""
    root = tmp_path_factory.mktemp("lab-root")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NINEFOLD_LAB_ROOT", str(root))
        yield root


@pytest.fixture(scope="session")
def links_before() -> set[str]:
    return root_links()


@pytest.fixture(scope="module")
def lab(lab_root: Path, links_before: set[str]) -> Iterator[Lab]:
    """One lab from examples/lab.yaml, up and healthy; removed afterwards."""
    made = Lab.up(EXAMPLE, progress=print, wait=UP_TIMEOUT)
    try:
        yield made
    finally:
        made.down()
        assert_gone(made.id, made.state_dir, links_before)


def restore(lab: Lab, timeout: float = UP_TIMEOUT) -> Lab:
    """No fault left: network whole, every node thawed, started and up."""
    lab.heal()
    for node in lab.nodes:
        lab.thaw(node)
        lab.start(node)
    lab.wait_up(timeout)
    return lab


@pytest.fixture
def whole(lab: Lab) -> Lab:
    """The shared lab with no fault left by an earlier test."""
    return restore(lab)
