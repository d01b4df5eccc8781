"""The `ninefold` command.

Every command but `agent`, `init`, `up` and `down` talks to the cluster's REST
API (docs/api.md) through `ninefold.client`, on whichever node of the spec
answers first.

Exit codes: 0 ok, 1 operation failed, 2 usage or spec error (unknown service,
node or instance included), 3 cluster unreachable (no agent answers, or no
store quorum).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table
from rich.text import Text

from ninefold import __version__
from ninefold.cli.console import (
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    err,
    fail,
    out,
    print_json,
    progress,
    say,
)
from ninefold.cli.lab import lab_app
from ninefold.client import (
    ApiError,
    ClusterClient,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StoreUnavailable,
    Unauthorized,
    Unreachable,
)
from ninefold.spec import ClusterSpec, SpecError, load_spec, parse_spec

EXIT_CODES: list[tuple[type[ApiError], int]] = [
    (Unreachable, EXIT_UNREACHABLE),
    (StoreUnavailable, EXIT_UNREACHABLE),
    (Unauthorized, EXIT_DENIED),
    (Forbidden, EXIT_DENIED),
    (NotFound, EXIT_USAGE),
    (Invalid, EXIT_USAGE),
    (Conflict, EXIT_FAILED),
]
"""How API errors become exit codes; anything else is EXIT_FAILED."""

app = typer.Typer(
    name="ninefold",
    help="High availability for ordinary services across a handful of machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
kv_app = typer.Typer(
    name="kv",
    help="The cluster's key-value store for users: get, put, rm, ls.",
    no_args_is_help=True,
)
app.add_typer(kv_app, name="kv")
cert_app = typer.Typer(
    name="cert",
    help="Node certificates from the cluster CA: issue, rotate (docs/security.md).",
    no_args_is_help=True,
)
app.add_typer(cert_app, name="cert")
app.add_typer(lab_app, name="lab")


SpecOption = Annotated[
    Path,
    typer.Option(
        "--spec",
        "-s",
        envvar="NINEFOLD_SPEC",
        help="The cluster spec (YAML). Also NINEFOLD_SPEC.",
        show_default=True,
    ),
]
DEFAULT_SPEC = Path("ninefold.yaml")
TableOutput = Annotated[str, typer.Option("--output", "-o", help="table or json")]
TextOutput = Annotated[str, typer.Option("--output", "-o", help="text or json")]
CasOption = Annotated[
    int | None,
    typer.Option(
        "--cas",
        min=0,
        help="Only if the key's revision is REV (0: only if the key is absent).",
        metavar="REV",
    ),
]

LOG_FOLLOW_WINDOW = 500
"""Lines fetched per instance on each `logs -f` poll, to find the new ones."""
LOG_FOLLOW_INTERVAL = 1.0


# --- helpers ---------------------------------------------------------------------


def exit_code(exc: ApiError) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_FAILED


def load(path: Path) -> ClusterSpec:
    """The spec at `path`; every problem on its own line and exit 2 if it is bad."""
    try:
        spec = load_spec(path)
    except SpecError as exc:
        for issue in exc.issues:
            line = str(issue)
            if issue.message == "file not found" and path == DEFAULT_SPEC:
                line += " (give one with --spec or NINEFOLD_SPEC, or write one: ninefold init)"
            err.print(line, highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    if spec.security.tls is not None:  # a relative CA path is relative to the spec file
        spec.security.tls.ca = str(spec.security.tls.ca_path(path.parent).absolute())
    return spec


def check_output(output: str, *choices: str) -> None:
    if output not in choices:
        raise fail(f"--output must be {' or '.join(choices)}, not {output!r}", EXIT_USAGE)


def connect(spec_path: Path) -> ClusterClient:
    return client_for(load(spec_path))


def client_for(spec: ClusterSpec) -> ClusterClient:
    """A client of the spec's cluster; one line and exit 2 when its TLS files are unusable."""
    try:
        return ClusterClient(spec)
    except ApiError as exc:
        raise fail(exc.message, EXIT_USAGE) from None


@contextlib.contextmanager
def calling(not_found: int | None = None, conflict: int | None = None) -> Iterator[None]:
    """Turn API errors into one line on stderr and the exit code they mean."""
    try:
        yield
    except ApiError as exc:
        code = exit_code(exc)
        if isinstance(exc, NotFound) and not_found is not None:
            code = not_found
        if isinstance(exc, Conflict) and conflict is not None:
            code = conflict
        if isinstance(exc, Invalid) and exc.issues:
            for issue in exc.issues:
                err.print(issue, highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(code) from None
        raise fail(exc.message, code) from None


def accepted(answer: Any, default: str) -> None:
    message = answer.get("message") if isinstance(answer, dict) else None
    out.print(message or default, highlight=False, markup=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"ninefold {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """ninefold keeps services running, health-checked and failed over across nodes."""


# --- init ----------------------------------------------------------------------------

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

CaKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-key",
        envvar="NINEFOLD_CA_KEY",
        help="The cluster CA's private key. Default: the spec's security.tls.ca with "
        "the suffix .key. Also NINEFOLD_CA_KEY.",
        show_default=False,
    ),
]


@app.command()
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
        from ninefold.security.files import config_dir

        key_path = (ca_key or config_dir(cluster) / "ca.key").absolute()
        cert_path, made = _cluster_ca(cluster, key_path, force)
        text += TLS_SPEC.format(key=key_path, ca=json.dumps(str(cert_path)))
    try:
        file.write_text(text)
    except OSError as exc:
        raise fail(f"cannot write {file}: {exc.strerror or exc}") from None
    hint = "ninefold up" if file == DEFAULT_SPEC else f"ninefold up --spec {file}"
    say(f"wrote {file}{made}; start its nodes on this machine with: {hint}")


def _cluster_ca(cluster: str, key_path: Path, reuse: bool) -> tuple[Path, str]:
    """Create the CA at key_path (or, with `reuse`, keep the one there): its
    certificate's path and a few words for the summary line."""
    from ninefold.security.ca import ca_cert_path, create_ca, load_ca, write_ca
    from ninefold.security.files import TlsError

    cert_path = ca_cert_path(key_path)
    try:
        if key_path.exists():
            if not reuse:
                raise fail(
                    f"{key_path} exists (the CA of an earlier init?); not overwriting it "
                    "(--force keeps and uses it, or give another --ca-key)"
                )
            load_ca(cert_path, key_path)
            return cert_path, f" (keeping the cluster CA {cert_path})"
        write_ca(create_ca(cluster), key_path, cert_path)
    except TlsError as exc:
        raise fail(str(exc)) from None
    return cert_path, f" and the cluster CA {cert_path} (key {key_path}, mode 0600)"


# --- cert ------------------------------------------------------------------------------

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


def load_cluster_ca(ca_cert: Path, ca_key: Path | None) -> Any:
    from ninefold.security.ca import ca_key_path, load_ca
    from ninefold.security.files import TlsError

    try:
        return load_ca(ca_cert, ca_key or ca_key_path(ca_cert))
    except TlsError as exc:
        raise fail(f"{exc} (issuing certificates needs the CA key: --ca-key)") from None


def node_data_dir(cluster: ClusterSpec, node: str) -> Path | None:
    """The data directory of `node` on this machine: the one `ninefold up` uses if
    it exists, else the agent's default one if it exists, else None."""
    from ninefold import defaults

    local = defaults.data_root() / "local" / cluster.cluster / node
    for candidate in (local, defaults.data_dir(cluster.cluster, node)):
        if candidate.is_dir():
            return candidate
    return None


def issue_for(
    cluster: ClusterSpec, ca: Any, node: str, data_dir: Path, days: int, keep: bool
) -> None:
    import datetime as dt

    from ninefold.security.certs import issue_node_files
    from ninefold.security.files import TlsError

    try:
        files = issue_node_files(
            ca, cluster.node(node), data_dir, dt.timedelta(days=days), keep_key=keep
        )
    except TlsError as exc:
        raise fail(str(exc)) from None
    say(f"{node}: certificate issued in {files.directory} (valid {days} days)")


def known_node(cluster: ClusterSpec, spec: Path, node: str) -> None:
    if not any(n.name == node for n in cluster.nodes):
        names = ", ".join(n.name for n in cluster.nodes)
        raise fail(f"{spec}: no node named {node!r} (nodes: {names})", EXIT_USAGE)


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
    from ninefold import defaults

    target = data_dir or node_data_dir(cluster, node) or defaults.data_dir(cluster.cluster, node)
    issue_for(cluster, load_cluster_ca(ca_cert, ca_key), node, target, days, keep_key)


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
    ca = load_cluster_ca(ca_cert, ca_key)
    for name, where in found.items():
        if where is not None:
            issue_for(cluster, ca, name, where, days, keep_key)


# --- agent ----------------------------------------------------------------------------


@app.command()
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
) -> None:
    """Run the agent of one node (in the foreground)."""
    cluster = load(spec)
    if not any(n.name == node for n in cluster.nodes):
        names = ", ".join(n.name for n in cluster.nodes)
        raise fail(f"{spec}: no node named {node!r} (nodes: {names})", EXIT_USAGE)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format=f"%(asctime)s {node} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("grpc", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ninefold.agent.daemon import run_agent
    from ninefold.security.files import TlsError
    from ninefold.store.embedded import EtcdNotFound, JoinRecordError

    try:
        run_agent(cluster, node, data_dir)
    except (EtcdNotFound, TlsError, JoinRecordError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


# --- up / down ---------------------------------------------------------------------------


def local_cluster(spec: Path) -> Any:
    from ninefold.local import LocalCluster

    return LocalCluster(spec, spec=load(spec))


@app.command()
def up(
    spec: SpecOption = DEFAULT_SPEC,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, help="Seconds to wait for every node to be up (0: none)."),
    ] = 90.0,
    ca_key: CaKeyOption = None,
) -> None:
    """Start every node of the spec on this machine, each agent in the background
    (with security.tls, first issuing each node a certificate it lacks)."""
    from ninefold.local import LocalClusterError, NotLocal

    cluster = local_cluster(spec)
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


@app.command()
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


# --- status -----------------------------------------------------------------------------

_STATE_COLOUR = {"up": "green", "down": "red", "drained": "yellow"}


@app.command()
def status(spec: SpecOption = DEFAULT_SPEC, output: TableOutput = "table") -> None:
    """Nodes, services and instances of the cluster."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        view = client.status()
    if output == "json":
        print_json(view)
        return
    nodes = Table(title=f"cluster {view.get('cluster', '')}", title_justify="left")
    for col in ("NODE", "ADDRESS", "ZONE", "STATE", "ROLE"):
        nodes.add_column(col)
    for n in view.get("nodes", []):
        state = str(n.get("state", ""))
        colour = _STATE_COLOUR.get(state, "white")
        roles = (("leader", n.get("leader")), ("store", n.get("store_member")))
        role = ", ".join(r for r, on in roles if on)
        nodes.add_row(
            n.get("name", ""),
            n.get("address", ""),
            n.get("zone", ""),
            f"[{colour}]{state}[/{colour}]",
            role,
        )
    out.print(nodes)
    services = Table(title="services", title_justify="left")
    for col in ("SERVICE", "MODE", "HEALTHY", "ACTIVE", "TOKEN"):
        services.add_column(col)
    for s in view.get("services", []):
        healthy, desired = s.get("healthy", 0), s.get("desired", 0)
        colour = "green" if healthy >= desired else ("yellow" if healthy else "red")
        services.add_row(
            s.get("name", ""),
            s.get("mode", ""),
            f"[{colour}]{healthy}/{desired}[/{colour}]",
            s.get("active") or "",
            str(s.get("fencing_token") or ""),
        )
    out.print(services)
    instances = Table(title="instances", title_justify="left")
    for col in ("INSTANCE", "NODE", "STATE", "HEALTH", "ROLE", "ENDPOINT", "RESTARTS"):
        instances.add_column(col)
    for i in view.get("instances", []):
        ports = ",".join(f"{k}={v}" for k, v in (i.get("ports") or {}).items())
        state = i.get("state", "")
        if i.get("draining"):
            state += " (draining)"
        instances.add_row(
            i.get("instance", ""),
            i.get("node", ""),
            state,
            i.get("health", ""),
            i.get("role", ""),
            f"{i.get('address') or ''} {ports}".strip(),
            str(i.get("restarts", 0)),
        )
    out.print(instances)
    if view.get("vips"):
        vips = Table(title="vips", title_justify="left")
        for col in ("VIP", "FOR", "HOLDER"):
            vips.add_column(col)
        for v in view["vips"]:
            held = v.get("holder")
            vips.add_row(v.get("address", ""), v.get("service", ""), held or "[red]unheld[/red]")
        out.print(vips)


# --- apply --------------------------------------------------------------------------------


def show_diff(lines: list[str]) -> None:
    for line in lines:
        style = ""
        if line.startswith("+") and not line.startswith("+++"):
            style = "green"
        elif line.startswith("-") and not line.startswith("---"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        out.print(Text(line, style=style), soft_wrap=True)


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="The new spec.")],
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            "-s",
            envvar="NINEFOLD_SPEC",
            help="The spec naming the cluster's nodes. Default: FILE itself.",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Apply without asking (it asks only on a terminal)."),
    ] = False,
) -> None:
    """Show what a new spec changes, ask, then make it the cluster's desired state."""
    new = load(file)
    target = load(spec) if spec is not None else new
    text = file.read_text(encoding="utf-8")
    with client_for(target) as client, calling():
        plan = client.put_spec(text, dry_run=True)
        diff = [str(line) for line in plan.get("diff") or []]
        if not diff:
            say(f"{file}: nothing to change (cluster {new.cluster} already runs it)")
            return
        show_diff(diff)
        if not yes and not sys.stdin.isatty():
            raise fail("not applied: no terminal to ask on (pass --yes)", EXIT_USAGE)
        if not yes:
            try:
                agreed = typer.confirm("Apply these changes?", err=True)
            except (typer.Abort, click.Abort):
                err.print()
                agreed = False
            if not agreed:
                raise fail("not applied (answer y, or pass --yes)")
        result = client.put_spec(text, dry_run=False)
    if not result.get("applied", True):
        say(f"{file}: nothing to change")
        return
    say(f"applied {file} (revision {result.get('revision')})")


# --- changes ---------------------------------------------------------------------------


@app.command()
def scale(
    service: Annotated[str, typer.Argument(help="The service.")],
    replicas: Annotated[int, typer.Argument(help="How many instances it should run.", min=1)],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Set how many instances a service runs."""
    with connect(spec) as client, calling():
        answer = client.scale(service, replicas)
    accepted(answer, f"{service} scaled to {replicas}")


@app.command()
def restart(
    service: Annotated[str, typer.Argument(help="The service.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Restart every instance of a service, one at a time (rolling, drained)."""
    with connect(spec) as client, calling():
        answer = client.restart(service)
    accepted(answer, f"{service}: rolling restart asked; `ninefold events -f` shows its progress")


@app.command()
def move(
    instance: Annotated[str, typer.Argument(help="The instance, e.g. web-1.")],
    node: Annotated[str, typer.Argument(help="The node it should run on.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Move one instance to another node."""
    with connect(spec) as client, calling():
        answer = client.move(instance, node)
    accepted(answer, f"{instance}: moving to {node}")


@app.command()
def switchover(
    service: Annotated[str, typer.Argument(help="The active-passive service.")],
    to: Annotated[
        str | None,
        typer.Option("--to", "-t", help="The node to make active. Default: the best standby."),
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Hand an active-passive service's active role to a standby, on purpose."""
    with connect(spec) as client, calling():
        answer = client.switchover(service, to)
    accepted(answer, f"{service}: switchover asked")


@app.command()
def drain(
    node: Annotated[str, typer.Argument(help="The node.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Move every instance off a node and place nothing new there."""
    with connect(spec) as client, calling():
        answer = client.drain(node)
    accepted(answer, f"{node}: draining")


@app.command()
def undrain(
    node: Annotated[str, typer.Argument(help="The node.")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Let a drained node take instances again."""
    with connect(spec) as client, calling():
        answer = client.undrain(node)
    accepted(answer, f"{node}: takes instances again")


# --- events --------------------------------------------------------------------------------


def event_line(event: dict[str, Any]) -> str:
    """`HH:MM:SS.mmm  kind  subject  reason  key=value ...`, as the journal shows it."""
    try:
        stamp = datetime.fromtimestamp(float(event.get("time") or 0))
        when = stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
    except (TypeError, ValueError, OverflowError, OSError):
        when = str(event.get("time", ""))
    data = event.get("data") or {}
    extra = " ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else ""
    parts = [when, event.get("kind"), event.get("subject"), event.get("reason"), extra]
    return "  ".join(str(p) for p in parts if p)


@app.command()
def events(
    spec: SpecOption = DEFAULT_SPEC,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many of the newest events.")
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    output: TextOutput = "text",
) -> None:
    """The event journal: every decision the cluster made, with time and reason."""
    check_output(output, "text", "json")

    def show(event: dict[str, Any]) -> None:
        if output == "json":
            print(json.dumps(event), flush=True)
        else:
            out.print(event_line(event), highlight=False, markup=False, soft_wrap=True)

    with connect(spec) as client, calling(), contextlib.suppress(KeyboardInterrupt):
        for event in client.events(limit):
            show(event)
        if follow:
            for event in client.stream_events():
                show(event)


# --- logs ------------------------------------------------------------------------------------

_PREFIX_COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "red"]


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of `now` (a log's tail) that come after the tail `before` ended.

    The last lines of `before` are looked for in `now`, latest place first; else
    `now` may start with the end of `before` (the window slid); else (the log
    was rotated, or grew by more than the window) every line is new."""
    if not before:
        return now
    tail = before[-20:]
    m = len(tail)
    for end in range(len(now), m - 1, -1):
        if now[end - m : end] == tail:
            return now[end:]
    for j in range(min(len(before), len(now)), 0, -1):
        if now[:j] == before[-j:]:
            return now[j:]
    return now


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="The service.")],
    spec: SpecOption = DEFAULT_SPEC,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, help="Lines from the end of each log.")
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (polls every second).")
    ] = False,
) -> None:
    """A service's logs, gathered from every node that runs one of its instances."""
    client = connect(spec)
    colours: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    warned: set[str] = set()

    def targets() -> list[tuple[str, str]]:
        detail = client.service(service)
        found = []
        for i in sorted(detail.get("instances") or [], key=lambda i: i.get("instance", "")):
            name, node = i.get("instance"), i.get("node")
            if name and node:
                found.append((str(name), str(node)))
        return found

    def fetch(instance: str, node: str, count: int) -> list[str] | None:
        try:
            url = client.node_url(node)
        except KeyError:
            problem = f"node {node} is not in {spec}"
        else:
            try:
                text = client.instance_log(url, instance, count)
            except ApiError as exc:
                problem = exc.message
            else:
                warned.discard(instance)
                return text
        if instance not in warned:
            warned.add(instance)
            err.print(f"{instance}: no log ({problem})", highlight=False, markup=False)
        return None

    def show(instance: str, text: list[str]) -> None:
        width = max([len(i) for i in colours] + [len(instance)])
        colour = colours.setdefault(instance, _PREFIX_COLOURS[len(colours) % 6])
        for line in text:
            prefix = Text(f"{instance:<{width}} | ", style=colour)
            out.print(prefix + Text(line), soft_wrap=True, highlight=False)

    with client, calling(), contextlib.suppress(KeyboardInterrupt):
        found = targets()
        if not found:
            raise fail(f"{service} has no instances")
        fetched = 0
        for instance, node in found:
            text = fetch(instance, node, lines)
            if text is None:
                continue
            fetched += 1
            seen[instance] = text
            show(instance, text)
        if not follow:
            if not fetched:
                raise fail(f"no log of {service} could be read")
            return
        while True:
            time.sleep(LOG_FOLLOW_INTERVAL)
            for instance, node in targets():
                text = fetch(instance, node, LOG_FOLLOW_WINDOW)
                if text is None:
                    continue
                fresh = new_lines(seen.get(instance, []), text)
                seen[instance] = text
                show(instance, fresh)


# --- kv ----------------------------------------------------------------------------------------


def _key(key: str) -> str:
    if not key or key.strip("/") == "":
        raise fail("a key must not be empty", EXIT_USAGE)
    return key


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(help="The key.")],
    spec: SpecOption = DEFAULT_SPEC,
    output: TextOutput = "text",
) -> None:
    """Print a key's value (exit 1 if there is no such key)."""
    check_output(output, "text", "json")
    with connect(spec) as client, calling(not_found=EXIT_FAILED):
        item = client.kv_get(_key(key))
    if output == "json":
        print_json(item)
    else:
        print(item.get("value", ""), flush=True)


@kv_app.command("put")
def kv_put(
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[str, typer.Argument(help="The value (text); - reads it from stdin.")],
    cas: CasOption = None,
    spec: SpecOption = DEFAULT_SPEC,
    output: TextOutput = "text",
) -> None:
    """Set a key; with --cas, only if its revision is still REV (else exit 1)."""
    check_output(output, "text", "json")
    if value == "-":
        value = sys.stdin.read()
    with connect(spec) as client, calling(not_found=EXIT_FAILED):
        answer = client.kv_put(_key(key), value, cas)
    if output == "json":
        print_json(answer)
    else:
        say(f"{key}: revision {answer.get('revision')}")


@kv_app.command("rm")
def kv_rm(
    key: Annotated[str, typer.Argument(help="The key.")],
    cas: CasOption = None,
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Remove a key (exit 1 if there is no such key, or --cas does not match)."""
    with connect(spec) as client, calling(not_found=EXIT_FAILED):
        client.kv_delete(_key(key), cas)
    say(f"{key}: removed")


@kv_app.command("ls")
def kv_ls(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    spec: SpecOption = DEFAULT_SPEC,
    output: TableOutput = "table",
) -> None:
    """List keys with their revision and value."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        items = client.kv_list(prefix)
    if output == "json":
        print_json(items)
        return
    if not items:
        err.print(f"no keys{f' under {prefix!r}' if prefix else ''}", highlight=False)
        return
    table = Table()
    for col in ("KEY", "REVISION", "VALUE"):
        table.add_column(col)
    for item in items:
        value = str(item.get("value", ""))
        first = value.splitlines()[0] if value else ""
        if len(first) > 60 or first != value:
            first = first[:60] + "..."
        table.add_row(Text(str(item.get("key", ""))), str(item.get("revision", "")), Text(first))
    out.print(table)


# --- demo --------------------------------------------------------------------------------------


@app.command()
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


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


# The token commands use this module's helpers, so they come last.
from ninefold.cli.token import token_app  # noqa: E402

app.add_typer(token_app, name="token")
from ninefold.cli import doctor as _doctor  # noqa: E402, F401  (registers `ninefold doctor`)
from ninefold.cli import join as _join  # noqa: E402, F401  (registers `ninefold join`)
from ninefold.cli import service as _service  # noqa: E402, F401  (registers `ninefold install-service`)
