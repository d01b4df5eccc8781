"""`ninefold join`: make this machine a node of a running cluster."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from ninefold import defaults
from ninefold.cli.console import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code,
    fail,
    progress,
    say,
)
from ninefold.client import error_of
from ninefold.security.ca import fingerprint, new_key, private_pem
from ninefold.security.certs import node_csr, write_node_files
from ninefold.security.files import NodeTlsFiles, TlsError, write_public
from ninefold.security.tls import client_context
from ninefold.spec import ClusterSpec, dump_spec, parse_spec
from ninefold.store.base import StoreError
from ninefold.store.embedded import StoreJoin
from ninefold.store.etcd import EtcdStore

TIMEOUT = 30.0
"""Seconds each request to the cluster may take (a join may wait for the
store to take one more member)."""
UP_WAIT = 60.0
"""Seconds to wait for the new agent to answer."""


def _base(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        host, port = address, str(defaults.API_PORT)
    return f"https://{host}:{port}"


def _answer(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    error = error_of(response)
    raise fail(f"the cluster refused the join: {error.message}", exit_code(error))


def join(
    address: Annotated[str, typer.Argument(help="A node's API, host[:port] (port 7070).")],
    token: Annotated[
        str, typer.Option("--token", help="A join token (`ninefold token create --join`).")
    ],
    ca_hash: Annotated[
        str,
        typer.Option(
            "--ca-hash",
            help="sha256:... of the cluster CA, as `token create --join` prints it: "
            "this machine checks it is talking to the right cluster.",
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="This node's name.")],
    node_address: Annotated[
        str, typer.Option("--address", help="This node's address, as the others reach it.")
    ],
    zone: Annotated[str, typer.Option("--zone", help="This node's zone.")] = "default",
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="A label KEY=VALUE of this node (repeat for more)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where the agent keeps its data. Default: by cluster."),
    ] = None,
    store: Annotated[
        bool,
        typer.Option(
            "--store",
            help="Also make this node a member of the cluster's store (etcd): added as a "
            "learner, it votes once it has caught up.",
        ),
    ] = False,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Start the agent in the background.")
    ] = True,
) -> None:
    """Join this machine to a running cluster: fetch a certificate and the spec,
    then start an agent (no file to edit); with --store its store member too."""
    _labels(labels or [])  # a bad label fails before anything is asked
    base = _base(address)
    try:
        # The CA is public; its fingerprint, not this connection, says it is the right one.
        with httpx.Client(verify=False, timeout=TIMEOUT, trust_env=False) as client:
            answer = _answer(client.get(f"{base}/v1/ca"))
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {base}: {exc}", EXIT_UNREACHABLE) from None
    try:
        ca_pem = answer["ca"].encode()
        ca_fingerprint = fingerprint(ca_pem)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise fail(f"{base}/v1/ca did not answer with a CA certificate", EXIT_USAGE) from None
    if ca_fingerprint != ca_hash.strip().lower():
        raise fail(
            f"the CA at {base} is not the one --ca-hash names (it is {ca_fingerprint})",
            EXIT_USAGE,
        )
    # Everything local that can fail, before the cluster spends a token use
    # and adds the node (which cannot be undone from here).
    where = data_dir or defaults.data_dir(answer["cluster"], name)
    files = NodeTlsFiles.of_data_dir(where)
    try:
        files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = files.directory / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise fail(f"cannot write {files.directory}: {exc.strerror}", EXIT_USAGE) from None
    key = new_key()
    body = {
        "token": token,
        "name": name,
        "address": node_address,
        "zone": zone,
        "labels": _labels(labels or []),
        "store": store,
        "csr": node_csr(name, key).decode(),
    }
    verify = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        with httpx.Client(verify=verify, timeout=TIMEOUT, trust_env=False) as client:
            joined = _answer(client.post(f"{base}/v1/join", json=body))
    except httpx.HTTPError as exc:
        raise fail(f"the join did not complete: {exc}", EXIT_UNREACHABLE) from None
    spec = parse_spec(joined["spec"])
    # This machine's copy of the spec names its own copy of the CA.
    assert spec.security.tls is not None
    spec.security.tls.ca = str(files.ca)
    spec_path = where / "spec.yaml"
    try:
        write_node_files(files, ca_pem, joined["cert"].encode(), private_pem(key))
        if joined.get("crl"):  # before the agent starts: etcd takes it from its first start
            write_public(files.crl, joined["crl"].encode())
        spec_path.write_text(dump_spec(spec))
    except (TlsError, OSError) as exc:
        raise fail(f"joined, but this machine's files are not all written: {exc}") from None
    member = joined.get("store_member")
    if member is not None:
        StoreJoin(member["member_id"], member["initial_cluster"]).write(where)
    role = " and store member" if member is not None else ""
    say(f"joined cluster {spec.cluster} as node{role} {name} ({node_address}); spec: {spec_path}")
    command = f"ninefold agent --spec {spec_path} --node {name} --data-dir {where}"
    if not start:
        say(f"start its agent with: {command}")
        return
    me = spec.node(name)
    # The node is in the cluster now: a failure from here on leaves it there
    # (down), and its store learner counts against the one etcd allows.
    later = f"; start it again with: {command}"
    if member is not None:
        later += f" (or drop its store learner: etcdctl member remove {member['member_id']:x})"
    _start_agent(spec_path, name, where, f"https://{me.host_port(me.ports.api)}", files, later)
    if member is not None:
        log_path = where / "agent.log"
        asyncio.run(_wait_until_voter(spec, name, member["member_id"], files, log_path, later))


def _labels(words: list[str]) -> dict[str, str]:
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise fail(f"--label {word!r}: expected KEY=VALUE", EXIT_USAGE)
        out[key] = value
    return out


async def _wait_until_voter(
    spec: ClusterSpec, name: str, member_id: int, files: NodeTlsFiles, log_path: Path, later: str
) -> None:
    """Until the agent has promoted its store learner, showing how far it is."""
    from ninefold.store.cluster import open_store

    store = open_store(spec, tls=files)
    assert isinstance(store, EtcdStore)
    deadline = time.monotonic() + UP_WAIT
    try:
        with progress(f"store member {name}: catching up with the leader") as show:
            while time.monotonic() < deadline:
                try:
                    members = await store.members()
                except StoreError as exc:
                    show(f"store member {name}: waiting for the store ({exc})")
                else:
                    mine = [m for m in members if m.id == member_id]
                    if mine and not mine[0].learner:
                        voters = sum(not m.learner for m in members)
                        say(f"store member {name} votes ({voters} voting members)")
                        return
                await asyncio.sleep(0.3)
    finally:
        await store.close()
    raise fail(
        f"store member {name} is still a learner after {UP_WAIT:g}s; see {log_path}{later}",
        EXIT_FAILED,
    )


def _start_agent(
    spec_path: Path, name: str, data_dir: Path, url: str, files: NodeTlsFiles, later: str
) -> None:
    log_path = data_dir / "agent.log"
    argv = [
        sys.executable, "-m", "ninefold", "agent",
        "--spec", str(spec_path), "--node", name, "--data-dir", str(data_dir),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=spec_path.parent,
        )
    (data_dir / "agent.pid").write_text(f"{proc.pid}\n")
    verify = client_context(files.ca, files.cert, files.key)
    deadline = time.monotonic() + UP_WAIT
    with httpx.Client(verify=verify, timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                why = f"the agent exited with code {proc.returncode}; see {log_path}{later}"
                raise fail(why, EXIT_FAILED)
            try:
                if client.get(f"{url}/v1/health").status_code == 200:
                    say(f"agent {name} up (pid {proc.pid}, log {log_path})")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    why = f"agent {name} did not answer within {UP_WAIT:g}s; see {log_path}{later}"
    raise fail(why, EXIT_FAILED)
