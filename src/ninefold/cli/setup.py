"""`ninefold init`, `agent`, `up`, `down` and `demo`: writing a spec and its
cluster CA, running a node's agent, starting and stopping a cluster on this
machine, and the demo. These work without a running cluster's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ninefold import defaults
from ninefold.cli.common import (
    DEFAULT_SPEC,
    CaKeyOption,
    LogFormatOption,
    SpecOption,
    checked_log_format,
    known_node,
    load,
)
from ninefold.cli.console import EXIT_USAGE, fail, out, progress, say
from ninefold.security.cluster_ca import CaFiles, CaKeyExists, init_cluster_ca
from ninefold.security.files import TlsError, config_dir
from ninefold.spec import SpecError, parse_spec

if TYPE_CHECKING:
    from ninefold.local import LocalCluster

STARTER_SPEC = """\
# A ninefold cluster: its nodes and the services they keep running.
# Every key is described in docs/spec.md.
#
#   ninefold up            # start the three nodes on this machine
#   ninefold status        # nodes, services, instances
#   curl http://127.0.0.1:8080/web/   # the web service through any node's gateway
#   ninefold down          # stop them
cluster: {cluster}

# The cluster's store (etcd): each node marked `store: true` runs a member.
store: {{mode: embedded}}

{nodes}
services:
  # Two copies of a static web server, in two different zones. ninefold picks
  # a free port for each ({{port}}), checks it over HTTP every 500 ms, and
  # every node's gateway sends /web/... to a healthy copy.
  web:
    command: python3 -m http.server {{port}} --bind {{address}}
    replicas: 2
    route: {{http: /web}}
    check: {{http: /, interval: 500ms, fall: 3, rise: 2}}
"""


STARTER_NODES = """\
# On Linux every 127.x.y.z address is local, so three nodes fit on one
# machine, each with its own address and the default ports (api 7070,
# gateway 8080, store 2379/2380). On real machines, use their addresses.
nodes:
  - {name: n1, address: 127.0.0.1, zone: a, store: true}
  - {name: n2, address: 127.0.0.2, zone: b, store: true}
  - {name: n3, address: 127.0.0.3, zone: c, store: true}
"""

ONE_NODE = """\
# One node to start with (default ports: api 7070, gateway 8080, store
# 2379/2380). Other machines join it: `ninefold token create --join` prints
# the command to run on each (docs/security.md#joining-a-machine).
nodes:
  - {{name: {name}, address: {address}, store: true}}
"""

TLS_SPEC = """
# Mutual TLS between the nodes and to etcd, with certificates from the cluster
# CA below (its key: {key}; keep it safe). `ninefold up` issues each node's
# certificate; see docs/security.md.
security:
  tls: {{ca: {ca}}}
"""


def init(
    file: Annotated[Path, typer.Argument(help="Where to write the spec.")] = DEFAULT_SPEC,
    cluster: Annotated[str, typer.Option("--cluster", help="The cluster's name.")] = "hello",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Overwrite an existing spec file (an existing CA key is kept and used, "
            "never overwritten).",
        ),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--no-tls",
            help="Create a cluster CA and turn on mutual TLS (security.tls), or not.",
        ),
    ] = True,
    ca_key: Annotated[
        Path | None,
        typer.Option(
            "--ca-key",
            help="Where to write the cluster CA's key (mode 0600; its certificate goes "
            "next to it, as .crt). Default: ca.key in the cluster's config directory "
            "($NINEFOLD_CONFIG_ROOT, /etc/ninefold or ~/.config/ninefold, then the cluster).",
            show_default=False,
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            metavar="NAME=ADDRESS",
            help="Start with this one node (a store member) instead of three on this "
            "machine; other machines join it (`ninefold token create --join`).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a starter spec (three nodes on 127.0.0.1-3, a replicated web service)
    and a cluster CA for mutual TLS."""
    nodes = STARTER_NODES
    if node is not None:
        name, sep, address = node.partition("=")
        if not sep or not name or not address:
            raise fail(f"--node {node!r}: write it as NAME=ADDRESS, e.g. n1=10.0.0.1", EXIT_USAGE)
        nodes = ONE_NODE.format(name=name, address=address)
    text = STARTER_SPEC.format(cluster=cluster, nodes=nodes)
    if node is not None:
        one = "    replicas: 1  # `ninefold scale web 2` once a node has joined\n"
        text = text.replace("    replicas: 2\n", one)
    try:
        parse_spec(text, str(file))
    except SpecError as exc:
        raise fail(str(exc).splitlines()[0], EXIT_USAGE) from None
    if file.exists() and not force:
        raise fail(f"{file} exists; not overwriting it (--force to replace it)")
    made = ""
    if tls:
        key_path = (ca_key or config_dir(cluster) / "ca.key").absolute()
        ca = cluster_ca(cluster, key_path, force)
        if ca.kept:
            made = f" (keeping the cluster CA {ca.cert})"
        else:
            made = f" and the cluster CA {ca.cert} (key {key_path}, mode 0600)"
        text += TLS_SPEC.format(key=key_path, ca=json.dumps(str(ca.cert)))
    try:
        file.write_text(text)
    except OSError as exc:
        raise fail(f"cannot write {file}: {exc.strerror or exc}") from None
    hint = "ninefold up" if file == DEFAULT_SPEC else f"ninefold up --spec {file}"
    say(f"wrote {file}{made}; start its nodes on this machine with: {hint}")


def cluster_ca(cluster: str, key_path: Path, reuse: bool) -> CaFiles:
    """The CA `init` writes (or, with --force, keeps); one line and exit 1 if it cannot."""
    try:
        return init_cluster_ca(cluster, key_path, reuse)
    except CaKeyExists:
        raise fail(
            f"{key_path} exists (the CA of an earlier init?); not overwriting it "
            "(--force keeps and uses it, or give another --ca-key)"
        ) from None
    except TlsError as exc:
        raise fail(str(exc)) from None


def agent(
    node: Annotated[str, typer.Option("--node", "-n", help="This node's name in the spec.")],
    spec: SpecOption = DEFAULT_SPEC,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where this agent keeps its data. Default: keyed by cluster and node.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
    log_format: LogFormatOption = "text",
) -> None:
    """Run the agent of one node (in the foreground)."""
    cluster = load(spec)
    known_node(cluster, spec, node)
    from ninefold.logs.setup import configure_agent_logging

    configure_agent_logging(
        node,
        log_level,
        checked_log_format(log_format),
        data_dir or defaults.data_dir(cluster.cluster, node),
    )
    from ninefold.agent.daemon import run_agent
    from ninefold.store.embedded import JoinRecordError
    from ninefold.store.etcd_binary import EtcdNotFound

    try:
        run_agent(cluster, node, data_dir)
    except (EtcdNotFound, TlsError, JoinRecordError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


def local_cluster(spec: Path, log_format: str = "text") -> LocalCluster:
    """The cluster of the spec at `spec` as `up` and `down` run it on this machine."""
    from ninefold.local import LocalCluster

    return LocalCluster(spec, spec=load(spec), log_format=log_format)


def up(
    spec: SpecOption = DEFAULT_SPEC,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, help="Seconds to wait for every node to be up (0: none)."),
    ] = 90.0,
    ca_key: CaKeyOption = None,
    log_format: LogFormatOption = "text",
) -> None:
    """Start every node of the spec on this machine, each agent in the background
    (with security.tls, first issuing each node a certificate it lacks)."""
    from ninefold.local import LocalClusterError, NotLocal

    cluster = local_cluster(spec, checked_log_format(log_format))
    try:
        cluster.check_local()
        with progress(f"starting cluster {cluster.spec.cluster}") as report:
            pids = cluster.up(wait=wait, progress=report, ca_key=ca_key)
    except NotLocal as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except LocalClusterError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"cluster {cluster.spec.cluster} is up", title_justify="left")
    for col in ("NODE", "API", "PID"):
        table.add_column(col)
    for n in cluster.spec.nodes:
        table.add_row(n.name, cluster.api_url(n.name), str(pids.get(n.name, "")))
    out.print(table)
    say(f"agent logs: {cluster.root}/<node>/agent.log; stop them with: ninefold down")
    if not wait:
        say("not waiting for the nodes: `ninefold status` shows when they are up")


def down(
    spec: SpecOption = DEFAULT_SPEC,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds before stragglers are killed.")
    ] = 30.0,
) -> None:
    """Stop the agents `ninefold up` started (they stop their services first)."""
    cluster = local_cluster(spec)
    with progress(f"stopping cluster {cluster.spec.cluster}") as report:
        stopped = cluster.down(timeout=timeout, progress=report)
    if not stopped:
        say(f"no agent of cluster {cluster.spec.cluster} is running here")
        return
    names = ", ".join(f"{n} (pid {p})" for n, p in stopped.items())
    say(f"stopped {names}")


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the demo cluster running afterwards.")
    ] = False,
    spec: Annotated[
        Path | None,
        typer.Option("--spec", "-s", help="Run the demo on this spec instead of its own."),
    ] = None,
) -> None:
    """Start a local cluster, show a failover under load, and stop it (unless --keep)."""
    try:
        from ninefold.demo import run_demo
    except ImportError as exc:
        if exc.name != "ninefold.demo":
            raise
        raise fail("the demo is not part of this build") from None
    raise typer.Exit(run_demo(keep=keep, spec=spec))
