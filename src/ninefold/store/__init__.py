"""The store: one interface (base), an etcd backend and an in-memory one."""

from ninefold.store.base import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Listing,
    LockHold,
    Put,
    Store,
    StoreError,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
)
from ninefold.store.etcd import EtcdStore, TlsFiles
from ninefold.store.memory import MemoryStore

__all__ = [
    "Compare",
    "Delete",
    "EtcdStore",
    "KeyValue",
    "LeaseExpired",
    "Listing",
    "LockHold",
    "MemoryStore",
    "Put",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TlsFiles",
    "TxnResult",
    "WatchEvent",
]
