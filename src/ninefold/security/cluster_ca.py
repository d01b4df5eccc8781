"""The cluster CA on the operator's machine: made (or kept) by `ninefold init`,
loaded to issue node certificates, and a node's files issued from it for
`ninefold cert issue/rotate`.

Every problem is a TlsError with a one-line message; the CLI prints it and
chooses the exit code (and adds the hint about its own options)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from ninefold import defaults
from ninefold.security.ca import (
    CertificateAuthority,
    ca_cert_path,
    ca_key_path,
    create_ca,
    load_ca,
    write_ca,
)
from ninefold.security.certs import issue_node_files
from ninefold.security.files import NodeTlsFiles, TlsError
from ninefold.spec import ClusterSpec


class CaKeyExists(TlsError):
    """A CA key is already where a new one would go, and reusing it was not asked for."""

    def __init__(self, key_path: Path) -> None:
        super().__init__(f"{key_path} exists")
        self.key_path = key_path


@dataclass(frozen=True, slots=True)
class CaFiles:
    """Where the cluster CA's files are, and whether they were there before."""

    key: Path
    cert: Path
    kept: bool


def init_cluster_ca(cluster: str, key_path: Path, reuse: bool) -> CaFiles:
    """A new CA for `cluster` written to `key_path` (mode 0600) and the
    certificate next to it; with `reuse`, an existing key there (and its
    certificate) is checked and kept instead. CaKeyExists when a key is there
    and `reuse` is false: a CA key is never overwritten, since every node's
    certificate hangs on it."""
    cert_path = ca_cert_path(key_path)
    if key_path.exists():
        if not reuse:
            raise CaKeyExists(key_path)
        load_ca(cert_path, key_path)
        return CaFiles(key_path, cert_path, kept=True)
    write_ca(create_ca(cluster), key_path, cert_path)
    return CaFiles(key_path, cert_path, kept=False)


def load_cluster_ca(ca_cert: Path, ca_key: Path | None = None) -> CertificateAuthority:
    """The CA whose certificate is `ca_cert`, with its key from `ca_key`
    (default: next to the certificate, `.key` for `.crt`)."""
    return load_ca(ca_cert, ca_key or ca_key_path(ca_cert))


def node_data_dir(cluster: ClusterSpec, node: str) -> Path | None:
    """The data directory of `node` on this machine: the one `ninefold up` uses
    (`ninefold.local`) if it exists, else the agent's default one if it exists,
    else None."""
    local = defaults.data_root() / "local" / cluster.cluster / node
    for candidate in (local, defaults.data_dir(cluster.cluster, node)):
        if candidate.is_dir():
            return candidate
    return None


def issue_dir(cluster: ClusterSpec, node: str) -> Path:
    """Where `cert issue` puts a node's files when not told: its data directory
    here if it has one, else the agent's default one (to be made)."""
    return node_data_dir(cluster, node) or defaults.data_dir(cluster.cluster, node)


def issue_node(
    ca: CertificateAuthority,
    cluster: ClusterSpec,
    node: str,
    data_dir: Path,
    days: int,
    keep_key: bool = False,
) -> NodeTlsFiles:
    """Issue the spec's node `node` a certificate valid `days` days into
    `<data_dir>/tls/` (a new key unless `keep_key` and one is there)."""
    return issue_node_files(
        ca, cluster.node(node), data_dir, dt.timedelta(days=days), keep_key=keep_key
    )
