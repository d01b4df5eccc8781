"""Fixtures of the cluster tier: real processes on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster.harness import LocalCluster
from tests.helpers import EtcdServer, etcd_or_skip, start_etcd


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh single-member etcd on 127.0.0.1 (`.endpoint`), killed afterwards."""
    server = start_etcd(etcd_or_skip(), tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def local_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LocalCluster]]:
    """Factory of real 3-node clusters (agents + embedded etcd on 127.0.0.1-3).

    Agents are stopped afterwards; their logs are printed when the test failed."""
    etcd_or_skip()
    made: list[LocalCluster] = []

    def make(services_yaml: str, **kwargs: object) -> LocalCluster:
        cluster = LocalCluster(tmp_path, services_yaml, **kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())


@pytest.fixture
def joined_agents() -> Iterator[list[Path]]:
    """Data dirs of nodes `ninefold join` started (their agents run on their
    own, not under the harness); their agents are stopped afterwards."""
    dirs: list[Path] = []
    yield dirs
    for data_dir in dirs:
        with contextlib.suppress(OSError, ValueError):
            pid = int((data_dir / "agent.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(15)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
