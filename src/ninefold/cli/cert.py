"""`ninefold cert issue|rotate`: node certificates from the cluster CA.

The CA and the issuing are `ninefold.security.cluster_ca`'s; this module takes
the arguments, says what it did and turns the errors into one line each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ninefold.cli.common import DEFAULT_SPEC, CaKeyOption, SpecOption, known_node, load
from ninefold.cli.console import EXIT_USAGE, fail, say
from ninefold.security.ca import CertificateAuthority
from ninefold.security.cluster_ca import issue_dir, issue_node, load_cluster_ca, node_data_dir
from ninefold.security.files import TlsError
from ninefold.spec import ClusterSpec

cert_app = typer.Typer(
    name="cert",
    help="Node certificates from the cluster CA: issue, rotate (docs/security.md).",
    no_args_is_help=True,
)

DaysOption = Annotated[
    int, typer.Option("--days", min=1, help="How long the certificate is valid, in days.")
]
KeepKeyOption = Annotated[
    bool, typer.Option("--keep-key", help="Keep the node's key; only renew its certificate.")
]


def tls_spec(path: Path) -> tuple[ClusterSpec, Path]:
    """The spec and its CA certificate's path; exit 2 if it has no security.tls."""
    cluster = load(path)
    if cluster.security.tls is None:
        raise fail(f"{path}: no security.tls section (see docs/security.md)", EXIT_USAGE)
    return cluster, Path(cluster.security.tls.ca)


def cluster_ca(ca_cert: Path, ca_key: Path | None) -> CertificateAuthority:
    """The cluster CA with its key; one line and exit 1 if it cannot be read."""
    try:
        return load_cluster_ca(ca_cert, ca_key)
    except TlsError as exc:
        raise fail(f"{exc} (issuing certificates needs the CA key: --ca-key)") from None


def issue(
    cluster: ClusterSpec,
    ca: CertificateAuthority,
    node: str,
    data_dir: Path,
    days: int,
    keep_key: bool,
) -> None:
    """Issue one node its certificate and say where it went; exit 1 if it cannot be."""
    try:
        files = issue_node(ca, cluster, node, data_dir, days, keep_key)
    except TlsError as exc:
        raise fail(str(exc)) from None
    say(f"{node}: certificate issued in {files.directory} (valid {days} days)")


@cert_app.command("issue")
def cert_issue(
    node: Annotated[str, typer.Argument(help="The node (its name in the spec).")],
    spec: SpecOption = DEFAULT_SPEC,
    ca_key: CaKeyOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The node's data directory. Default: that of `ninefold up` if it "
            "exists, else the agent's default one.",
        ),
    ] = None,
    days: DaysOption = 365,
    keep_key: KeepKeyOption = False,
) -> None:
    """Issue a node its certificate (into <data dir>/tls/); needs the CA key."""
    cluster, ca_cert = tls_spec(spec)
    known_node(cluster, spec, node)
    target = data_dir or issue_dir(cluster, node)
    issue(cluster, cluster_ca(ca_cert, ca_key), node, target, days, keep_key)


@cert_app.command("rotate")
def cert_rotate(
    nodes: Annotated[
        list[str] | None,
        typer.Argument(help="The nodes. Default: every node with a data directory here."),
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    ca_key: CaKeyOption = None,
    days: DaysOption = 365,
    keep_key: KeepKeyOption = False,
) -> None:
    """Re-issue node certificates from the same CA; running agents and etcd pick
    the new files up without a restart."""
    cluster, ca_cert = tls_spec(spec)
    for node in nodes or []:
        known_node(cluster, spec, node)
    names = nodes or [n.name for n in cluster.nodes]
    found = {name: node_data_dir(cluster, name) for name in names}
    missing = [name for name, where in found.items() if where is None]
    if nodes and missing:
        raise fail(f"no data directory of {', '.join(missing)} on this machine")
    if not any(found.values()):
        raise fail(f"no node of cluster {cluster.cluster} has a data directory on this machine")
    ca = cluster_ca(ca_cert, ca_key)
    for name, where in found.items():
        if where is not None:
            issue(cluster, ca, name, where, days, keep_key)
