"""Opening a cluster's store from its spec: which endpoints, which namespace,
which TLS files."""

from __future__ import annotations

from ninefold.security.files import NodeTlsFiles
from ninefold.spec import ClusterSpec, NodeSpec
from ninefold.store.base import Store
from ninefold.store.etcd import EtcdStore, TlsFiles


def namespace(cluster: str) -> str:
    return f"/ninefold/{cluster}/"


def store_endpoints(spec: ClusterSpec, node: NodeSpec) -> list[str]:
    """The store endpoints, this node's own member first."""
    endpoints = spec.store_endpoints()
    if spec.store.mode == "embedded" and node.store:
        own = f"{node.address}:{node.ports.store_client}"
        endpoints = [own] + [e for e in endpoints if e != own]
    return endpoints


def open_store(
    spec: ClusterSpec, node: NodeSpec | None = None, tls: NodeTlsFiles | None = None
) -> Store:
    """The cluster's store; over mutual TLS with `tls` (a node's files)."""
    endpoints = store_endpoints(spec, node) if node else spec.store_endpoints()
    files = TlsFiles(tls.ca, tls.cert, tls.key) if tls is not None else None
    return EtcdStore(endpoints, namespace(spec.cluster), tls=files)
