"""The `ninefold lab` commands that need no lab: help, and refusals without root."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from ninefold.cli.main import app
from ninefold.lab import Lab, NotRoot, down_all
from tests.lab.conftest import EXAMPLE

ROOT_LINE = "error: ninefold lab needs root (network namespaces): run it with sudo"


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


@pytest.mark.usefixtures("not_root")
@pytest.mark.parametrize(
    "args",
    [
        ["up", str(EXAMPLE)],
        ["status"],
        ["down"],
        ["down", "--all"],
        ["kill", "n1"],
        ["partition", "n1 / n2"],
        ["heal"],
        ["exec", "n1", "--", "true"],
    ],
)
def test_needs_root(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["lab", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ROOT_LINE
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.usefixtures("not_root")
def test_python_api_needs_root() -> None:
    with pytest.raises(NotRoot, match="needs root"):
        Lab.up(EXAMPLE)
    with pytest.raises(NotRoot):
        Lab.load()
    with pytest.raises(NotRoot):
        down_all()


@pytest.mark.usefixtures("not_root")
def test_help_needs_no_root() -> None:
    result = CliRunner().invoke(app, ["lab", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for verb in ["up", "down", "status", "kill", "stop", "start", "freeze", "thaw",
                 "partition", "heal", "isolate", "slow", "exec"]:  # fmt: skip
        assert f" {verb} " in result.stdout
    result = CliRunner().invoke(app, ["lab", "partition", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "n1,n2 / n3" in result.stdout


def test_unsuitable_spec(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A spec whose nodes are not in one private /24: one line naming the node, exit 2."""
    spec = tmp_path_factory.mktemp("spec") / "bad.yaml"
    spec.write_text(
        "cluster: bad\n"
        "nodes:\n"
        "  - {name: n1, address: 10.99.0.11, store: true}\n"
        "  - {name: n2, address: 10.98.0.12}\n"
    )
    result = CliRunner().invoke(app, ["lab", "up", str(spec)], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "node n2" in last and "10.98.0.12" in last and "10.99.0.0/24" in last
