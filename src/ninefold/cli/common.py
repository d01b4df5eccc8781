"""What the `ninefold` commands share besides printing (`cli.console`): the
options most of them take, loading the spec, checking `--output`, and talking
to the cluster's API with its errors turned into one line and an exit code.

Every command module imports this one and `cli.console`, never another
command module; `cli.main` puts the commands together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ninefold.cli.console import EXIT_USAGE, err, exit_code, fail
from ninefold.client import ApiError, ClusterClient, Conflict, Invalid, NotFound
from ninefold.logs.formats import LogFormat
from ninefold.spec import ClusterSpec, SpecError, load_spec

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


def known_node(cluster: ClusterSpec, spec: Path, node: str) -> None:
    """Exit 2 with one line unless the spec (loaded from `spec`) has a node named `node`."""
    if not any(n.name == node for n in cluster.nodes):
        names = ", ".join(n.name for n in cluster.nodes)
        raise fail(f"{spec}: no node named {node!r} (nodes: {names})", EXIT_USAGE)


def check_output(output: str, *choices: str) -> None:
    """Exit 2 unless `--output` is one of `choices`."""
    if output not in choices:
        raise fail(f"--output must be {' or '.join(choices)}, not {output!r}", EXIT_USAGE)


def connect(spec_path: Path) -> ClusterClient:
    """A client of the cluster of the spec at `spec_path` (see `load`, `client_for`)."""
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


LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        help="The agent's log lines: text, or json (one object a line; docs/logs.md).",
    ),
]


def checked_log_format(value: str) -> LogFormat:
    """`value` if it is a log format; else one line and exit 2."""
    if value == "json":
        return "json"
    if value == "text":
        return "text"
    raise fail(f"--log-format {value!r}: choose text or json", EXIT_USAGE)
