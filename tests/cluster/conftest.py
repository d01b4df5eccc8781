"""Fixtures of the cluster tier: real processes on loopback."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Plain `pytest` (unlike `python -m pytest`) does not put the repository root on
# sys.path; `pythonpath = ["."]` in pyproject's pytest options would replace this.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import EtcdServer, start_etcd


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh single-member etcd on 127.0.0.1 (`.endpoint`), killed afterwards."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("no etcd binary on PATH (apt-get install etcd-server)")
    server = start_etcd(binary, tmp_path)
    try:
        yield server
    finally:
        server.kill()
