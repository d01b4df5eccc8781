"""The etcd member an agent runs on a node marked ``store: true``.

The member is a child of the agent under the same supervisor as services, so
it dies with the agent (a node is its agent) and restarts with backoff if it
crashes. The cluster is formed from the spec's store nodes; a member whose data
directory already exists rejoins with what it has. A node that joined a
running cluster as a member (`ninefold join --store`) starts its member with
the membership the cluster gave it (`store-join.json`), as a learner that the
agent promotes to a voter once it has caught up (agent/store_join.py).
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from ninefold import defaults
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import ClusterSpec, NodeSpec

log = logging.getLogger("ninefold.store")


class JoinRecordError(Exception):
    """The node's store-join.json cannot be read."""


def url(address: str, port: int, scheme: str = "http") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


def tls_argv(tls: NodeTlsFiles) -> list[str]:
    """etcd flags for mutual TLS on both ports, with the node's files: a client or
    peer must present a certificate from the cluster CA. etcd reads the
    certificate and key files again on every handshake, so a rotation needs no
    restart. With the node's revocation list (`crl.pem`, present from the
    certificate's issue on), a revoked certificate is refused on both ports:
    etcd reads the list on every handshake too (connections already open stay
    open: the fence ends those)."""
    crl = ["--client-crl-file", str(tls.crl), "--peer-crl-file", str(tls.crl)]
    return [
        *(crl if tls.crl.is_file() else []),
        "--cert-file", str(tls.cert),
        "--key-file", str(tls.key),
        "--trusted-ca-file", str(tls.ca),
        "--client-cert-auth",
        "--peer-cert-file", str(tls.cert),
        "--peer-key-file", str(tls.key),
        "--peer-trusted-ca-file", str(tls.ca),
        "--peer-client-cert-auth",
    ]  # fmt: skip


def member_argv(
    spec: ClusterSpec,
    node: NodeSpec,
    data_dir: Path,
    binary: str,
    tls: NodeTlsFiles | None = None,
    joined: StoreJoin | None = None,
) -> list[str]:
    """etcd's command line for `node`'s member; https on both ports with `tls`.
    A member the running store added (`joined`) starts with its membership
    rather than as one of a new cluster."""
    members = spec.store_nodes()
    scheme = "https" if tls is not None else "http"
    initial = ",".join(f"{m.name}={url(m.address, m.ports.store_peer, scheme)}" for m in members)
    if joined is not None:
        initial = joined.initial_cluster
    client = url(node.address, node.ports.store_client, scheme)
    peer = url(node.address, node.ports.store_peer, scheme)
    return [
        binary,
        "--name", node.name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial,
        "--initial-cluster-state", "existing" if joined is not None else "new",
        "--initial-cluster-token", f"ninefold-{spec.cluster}",
        "--heartbeat-interval", str(defaults.STORE_HEARTBEAT_MS),
        "--election-timeout", str(defaults.STORE_ELECTION_TIMEOUT_MS),
        # A member cut off by a partition must not depose the leader when it
        # comes back with a higher term: that costs every lease a store
        # election (the default from etcd 3.5 on).
        "--pre-vote",
        "--snapshot-count", "5000",
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "10000",
        "--quota-backend-bytes", str(512 * 1024 * 1024),
        "--logger", "zap",
        "--log-level", "warn",
        *(tls_argv(tls) if tls is not None else []),
    ]  # fmt: skip


JOIN_FILE = "store-join.json"
"""In a node's data dir: how its member joins a running store."""


@dataclass(frozen=True)
class StoreJoin:
    """The member a running store added for this node (as a learner)."""

    member_id: int
    initial_cluster: str
    """`name=peer-url,...` of every member, this one included, as etcd's
    --initial-cluster wants it for a member of an existing cluster."""

    def write(self, data_dir: Path) -> None:
        (data_dir / JOIN_FILE).write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, data_dir: Path) -> StoreJoin | None:
        """The join record in data_dir, None if the node did not join a store;
        JoinRecordError on a damaged one."""
        try:
            data = json.loads((data_dir / JOIN_FILE).read_text())
            return cls(int(data["member_id"]), str(data["initial_cluster"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JoinRecordError(f"{data_dir / JOIN_FILE} is damaged: {exc}") from None


STOP_SIGNAL = int(signal.SIGTERM)
