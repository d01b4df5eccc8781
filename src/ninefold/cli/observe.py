"""`ninefold prometheus-config`: a Prometheus scrape configuration for the
cluster (docs/observability.md#prometheus-and-grafana).

Prometheus finds the agents through `file_sd_configs`: a JSON file listing
every node's API address and port with the labels `node`, `zone`, `region`
and `cluster`; the scrape job reads `/metrics` there, over HTTPS trusting the
cluster CA when the spec has `security.tls`, with a bearer token file when
the cluster uses tokens. The configuration and the targets are built by pure
functions here (`scrape_config`, `file_sd_targets`), from the spec."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ninefold.cli.common import DEFAULT_SPEC, SpecOption, calling, client_for, load
from ninefold.cli.console import EXIT_USAGE, err, fail
from ninefold.spec import ClusterSpec, parse_spec


def file_sd_targets(spec: ClusterSpec) -> list[dict[str, Any]]:
    """Prometheus' file_sd format: one target group per node (its labels differ)."""
    return [
        {
            "targets": [node.host_port(node.ports.api)],
            "labels": {
                "node": node.name,
                "zone": node.zone,
                "region": node.region,
                "cluster": spec.cluster,
            },
        }
        for node in spec.nodes
    ]


def scrape_config(
    spec: ClusterSpec,
    targets_file: str,
    *,
    job: str = "ninefold",
    interval: str = "15s",
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    token_file: str | None = None,
) -> dict[str, Any]:
    """A Prometheus configuration (`scrape_configs:` with one job) for `spec`'s
    agents, found in `targets_file`; with `security.tls`, HTTPS trusting
    `ca_file` (and presenting `cert_file`/`key_file` if given)."""
    job_config: dict[str, Any] = {
        "job_name": job,
        "scrape_interval": interval,
        "metrics_path": "/metrics",
        # The instance series carry ninefold's own `instance` label (docs/operations.md#metrics).
        "honor_labels": True,
        "scheme": "https" if spec.security.tls is not None else "http",
    }
    if spec.security.tls is not None:
        tls: dict[str, Any] = {"ca_file": ca_file or str(spec.security.tls.ca_path())}
        if cert_file is not None:
            tls["cert_file"] = cert_file
            tls["key_file"] = key_file or cert_file
        job_config["tls_config"] = tls
    if token_file is not None:
        job_config["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    job_config["file_sd_configs"] = [{"files": [targets_file], "refresh_interval": "1m"}]
    return {"scrape_configs": [job_config]}


def render_config(spec: ClusterSpec, config: dict[str, Any]) -> str:
    head = (
        f"# Prometheus scrape configuration of ninefold cluster {spec.cluster}\n"
        "# (ninefold prometheus-config; docs/observability.md). Merge its job into\n"
        "# prometheus.yml's scrape_configs, or load it as it is.\n"
    )
    return head + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def absolute(path: Path | None) -> str | None:
    """What Prometheus is given: absolute paths (it reads them relative to its own file)."""
    return str(path.absolute()) if path is not None else None


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` at once: Prometheus never reads half a targets file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prometheus_config(
    spec: SpecOption = DEFAULT_SPEC,
    file_sd: Annotated[
        Path | None,
        typer.Option(
            "--file-sd",
            help="Write the targets (every node's API address:port) to this file, and "
            "point the configuration at it. Default: the configuration names "
            "ninefold-CLUSTER.json, beside prometheus.yml; write it with --targets.",
            show_default=False,
        ),
    ] = None,
    targets: Annotated[
        bool,
        typer.Option(
            "--targets", help="Print only the targets file (file_sd JSON), not the configuration."
        ),
    ] = False,
    from_cluster: Annotated[
        bool,
        typer.Option(
            "--from-cluster",
            help="Take the nodes from the cluster's stored spec (nodes that joined "
            "included), through the API, not from --spec.",
        ),
    ] = False,
    job: Annotated[str, typer.Option("--job", help="The scrape job's name.")] = "ninefold",
    interval: Annotated[
        str, typer.Option("--scrape-interval", help="How often Prometheus scrapes.")
    ] = "15s",
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca",
            help="The cluster CA's certificate on the Prometheus machine. Default: the spec's "
            "security.tls.ca.",
            show_default=False,
        ),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert", help="A client certificate for Prometheus to present.", show_default=False
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The key of --cert (default: in --cert).", show_default=False),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="A file with an API token of role read, sent as bearer token (once "
            "the cluster uses tokens).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print a Prometheus scrape configuration for every node's /metrics
    (file_sd with each node's API address, labels node, zone, region, cluster)."""
    cluster = load(spec)
    if from_cluster:
        with calling(), client_for(cluster) as client:
            stored = client.spec_text()
        if stored.get("revision"):
            tls = cluster.security.tls
            cluster = parse_spec(stored["yaml"], "<stored spec>")
            if tls is not None and cluster.security.tls is not None:
                cluster.security.tls.ca = tls.ca  # this machine's path, not the writer's
    if key is not None and cert is None:
        raise fail("--key needs --cert", EXIT_USAGE)
    listing = json.dumps(file_sd_targets(cluster), indent=2) + "\n"
    if targets:
        sys.stdout.write(listing)
        return
    where = str(file_sd.absolute()) if file_sd is not None else f"ninefold-{cluster.cluster}.json"
    config = scrape_config(
        cluster,
        where,
        job=job,
        interval=interval,
        ca_file=absolute(ca),
        cert_file=absolute(cert),
        key_file=absolute(key),
        token_file=absolute(token_file),
    )
    if file_sd is not None:
        try:
            write_atomically(file_sd, listing)
        except OSError as exc:
            raise fail(f"cannot write {file_sd}: {exc.strerror or exc}") from None
        err.print(
            f"wrote {len(cluster.nodes)} target(s) to {file_sd}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    else:
        err.print(
            f"the configuration reads the targets from {where}, beside prometheus.yml: "
            f"write it with `ninefold prometheus-config --targets > {where}` or use --file-sd",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    sys.stdout.write(render_config(cluster, config))
