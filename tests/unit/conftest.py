"""The unit tier: no agents, no network but loopback sockets in-process, and
no processes, except in tests marked `process` (tests/conftest.py counts them
apart in the summary). A unit test that starts a program without the mark
fails, so the tier stays what its name says."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

_popen_init = subprocess.Popen.__init__


@pytest.fixture(autouse=True)
def _no_processes_unless_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("process") is not None:
        yield
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"a unit test started a process ({args!r}): mark it @pytest.mark.process"
        )

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = _popen_init  # type: ignore[method-assign]
