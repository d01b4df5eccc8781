"""Where certificates and keys live, and writing them safely.

A node keeps its TLS files in `<data dir>/tls/`: `ca.crt` (the cluster CA),
`node.crt` and `node.key` (mode 0600), and `crl.pem`, the cluster's
revocation list. Files are replaced atomically (a
temporary file renamed over the old one), so a reader sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONFIG_ROOT_ENV = "NINEFOLD_CONFIG_ROOT"


class TlsError(Exception):
    """A certificate or key cannot be made, read or written; the message is one line."""


@dataclass(frozen=True, slots=True)
class NodeTlsFiles:
    """The TLS files of one node, in `directory`."""

    directory: Path

    @classmethod
    def of_data_dir(cls, data_dir: Path) -> NodeTlsFiles:
        return cls(Path(data_dir) / "tls")

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / "node.crt"

    @property
    def key(self) -> Path:
        return self.directory / "node.key"

    @property
    def crl(self) -> Path:
        """The cluster's revocation list (security/revocation.py); optional."""
        return self.directory / "crl.pem"

    def missing(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key) if not p.is_file()]

    def check(self, node: str) -> None:
        """TlsError naming the first missing file and how to make it."""
        missing = self.missing()
        if missing:
            raise TlsError(
                f"node {node}: TLS file {missing[0]} is missing "
                f"(issue the node's certificate: ninefold cert issue {node})"
            )


def config_dir(cluster: str) -> Path:
    """The cluster's configuration directory on this machine (the CA key's default home):
    $NINEFOLD_CONFIG_ROOT/<cluster>, else /etc/ninefold/<cluster> for root, else
    $XDG_CONFIG_HOME (~/.config)/ninefold/<cluster>."""
    env = os.environ.get(CONFIG_ROOT_ENV)
    if env:
        return Path(env) / cluster
    if os.geteuid() == 0:
        return Path("/etc/ninefold") / cluster
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ninefold" / cluster


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not overwrite and path.exists():
            raise TlsError(f"{path} exists; not overwriting it")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if someone made the file meanwhile
                os.unlink(tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except FileExistsError:
        raise TlsError(f"{path} exists; not overwriting it") from None
    except OSError as exc:
        raise TlsError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_private(path: Path, data: bytes, overwrite: bool = True) -> None:
    """A key file, mode 0600 from its first byte on."""
    _write(path, data, 0o600, overwrite)


def write_public(path: Path, data: bytes, overwrite: bool = True) -> None:
    _write(path, data, 0o644, overwrite)
