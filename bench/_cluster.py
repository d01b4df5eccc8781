"""What the benches share: a real local cluster (the cluster-test harness),
an in-process store client, etcd member status, results on disk.

Everything talks to loopback only (127.0.0.1-3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc.aio  # noqa: E402
import psutil  # noqa: E402
from aetcd import rpc  # noqa: E402

from ninefold.spec import ClusterSpec, load_spec  # noqa: E402
from ninefold.store.base import Store  # noqa: E402
from ninefold.store.cluster import open_store  # noqa: E402
from tests.cluster.harness import LocalCluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PY = sys.executable
HTTP = f'[{PY}, -m, http.server, "{{port}}", --bind, "{{address}}"]'
"""A small HTTP service: Python's http.server on the instance's port."""

T = TypeVar("T")


def need_etcd() -> None:
    from ninefold.store.etcd_binary import EtcdNotFound, find_etcd

    try:
        find_etcd()
    except EtcdNotFound as exc:
        sys.exit(str(exc))


@contextlib.contextmanager
def local_cluster(
    services_yaml: str,
    name: str,
    keep: bool = False,
    labels: dict[str, dict[str, str]] | None = None,
) -> Iterator[LocalCluster]:
    """A 3-node cluster (agents + embedded etcd) in a temporary directory,
    stopped afterwards. With keep, the directory (logs, data) is left behind."""
    need_etcd()
    root = Path(tempfile.mkdtemp(prefix=f"ninefold-{name}-"))
    cluster = LocalCluster(root, services_yaml, name=name, labels=labels or {})
    ok = False
    try:
        cluster.start_all()
        yield cluster
        ok = True
    finally:
        cluster.stop_all()
        if keep or not ok:
            print(f"cluster files (logs, data) left in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def cluster_spec(cluster: LocalCluster) -> ClusterSpec:
    return load_spec(cluster.spec_path)


def store_of(cluster: LocalCluster, timeout: float = 0.5) -> tuple[Store, ClusterSpec]:
    """An in-process client of the cluster's store (every member, round robin)."""
    spec = cluster_spec(cluster)
    store = open_store(spec)
    store._timeout = timeout  # type: ignore[attr-defined]  # polls must not hang for 1 s
    return store, spec


class AgentDied(RuntimeError):
    pass


def check_agents(cluster: LocalCluster) -> None:
    """Raise AgentDied, with the end of its log, if an agent we started has exited."""
    for node, proc in cluster.procs.items():
        code = proc.poll()
        if code is not None:
            tail = cluster.log_path(node).read_text(errors="replace").splitlines()[-12:]
            raise AgentDied(
                f"agent {node} exited with code {code}; its log ends:\n" + "\n".join(tail)
            )


async def wait_for(
    what: str,
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,
    interval: float = 0.1,
) -> T:
    """Await probe until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except AgentDied:
            raise
        except Exception as exc:  # the store may be electing a leader
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


async def etcd_leader(cluster: LocalCluster) -> str | None:
    """The node whose etcd member is the raft leader now (None if unknown)."""
    ids: dict[int, str] = {}
    leader_id = 0
    for node, address in cluster.addresses.items():
        async with grpc.aio.insecure_channel(f"{address}:{cluster.base}") as channel:
            try:
                status = await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=0.5)
            except grpc.aio.AioRpcError:
                continue
            ids[int(status.header.member_id)] = node
            leader_id = leader_id or int(status.leader)
    return ids.get(leader_id)


def agent_process(cluster: LocalCluster, node: str) -> psutil.Process:
    return psutil.Process(cluster.procs[node].pid)


def etcd_process(agent: psutil.Process) -> psutil.Process | None:
    for child in agent.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.name() == "etcd":
                return child
    return None


def log_lines(cluster: LocalCluster, needle: str) -> list[tuple[float, str, str]]:
    """(epoch time, node, line) of the agents' log lines containing needle."""
    found = []
    for node in cluster.addresses:
        path = cluster.log_path(node)
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if needle not in line:
                continue
            stamp = line[:23]  # logging's asctime: 2026-01-31 12:00:00,123
            try:
                when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
                when += int(stamp[20:23]) / 1000
            except ValueError:
                continue
            found.append((when, node, line[24:]))
    return sorted(found)


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
