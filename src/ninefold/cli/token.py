"""`ninefold token ...`: API tokens with a role, join tokens with a number of uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ninefold.cli.common import (
    DEFAULT_SPEC,
    SpecOption,
    TableOutput,
    calling,
    check_output,
    connect,
)
from ninefold.cli.console import EXIT_USAGE, err, fail, out, print_json, say
from ninefold.spec import SpecError, parse_duration

token_app = typer.Typer(
    name="token",
    help="Tokens: API tokens with a role (read, operate, admin), join tokens for new nodes.",
    no_args_is_help=True,
)

OutFile = Annotated[
    Path | None,
    typer.Option("--out", help="Write the token to this file (mode 0600) instead of printing it."),
]


@contextlib.contextmanager
def delivery(out_file: Path | None) -> Iterator[Callable[[str], None]]:
    """Where a new token goes: stdout (once), or a new file only its owner can
    read. The file is created before the token is asked for, so a token is
    never made that cannot be delivered (a bootstrap token could not be made
    again)."""
    if out_file is None:
        yield lambda token: print(token, flush=True)
        return
    try:
        out_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot write {out_file}: {exc.strerror}", EXIT_USAGE) from None
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise fail(f"{out_file} exists already: not overwriting a token file", EXIT_USAGE) from None
    except OSError as exc:
        raise fail(f"cannot write {out_file}: {exc.strerror}", EXIT_USAGE) from None
    written = False

    def write(token: str) -> None:
        nonlocal written
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        written = True
        say(f"token written to {out_file}; use it with: export NINEFOLD_TOKEN_FILE={out_file}")

    try:
        yield write
    finally:
        if not written:
            os.close(fd)
            out_file.unlink(missing_ok=True)


@token_app.command("bootstrap")
def bootstrap(spec: SpecOption = DEFAULT_SPEC, out_file: OutFile = None) -> None:
    """Create the cluster's first admin token. From then on every API request
    but /v1/health needs a token; this works once per cluster."""
    with delivery(out_file) as deliver, connect(spec) as client, calling():
        deliver(client.bootstrap_token()["token"])


@token_app.command("create")
def create(
    role: Annotated[
        str, typer.Option("--role", help="read, operate or admin (API tokens).")
    ] = "read",
    name: Annotated[str, typer.Option("--name", help="What the token is for.")] = "",
    join: Annotated[
        bool, typer.Option("--join", help="A join token, for `ninefold join` on a new node.")
    ] = False,
    uses: Annotated[
        int | None, typer.Option("--uses", help="Join tokens: how many joins it allows.")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Lifetime, e.g. 1h or 30m (default: none).")
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    out_file: OutFile = None,
) -> None:
    """Create a token (needs an admin token). It is shown once and stored only as a hash."""
    if role not in ("read", "operate", "admin"):
        raise fail(f"--role must be read, operate or admin, not {role!r}", EXIT_USAGE)
    if uses is not None and not join:
        raise fail("--uses applies to join tokens (--join)", EXIT_USAGE)
    if uses is not None and uses < 1:
        raise fail("--uses must be at least 1", EXIT_USAGE)
    seconds = None
    if ttl is not None:
        try:
            seconds = parse_duration(ttl)
        except (SpecError, ValueError) as exc:
            raise fail(f"--ttl: {exc}", EXIT_USAGE) from None
        if seconds <= 0:
            raise fail("--ttl must be positive", EXIT_USAGE)
    kind = "join" if join else "api"
    with delivery(out_file) as deliver, connect(spec) as client, calling():
        deliver(client.create_token(role, name, kind, seconds, uses)["token"])
    if join:
        _join_hint(spec, client.url)


def _join_hint(spec_path: Path, url: str | None) -> None:
    """How to use a join token: the command, with the CA's fingerprint."""
    from ninefold.security.ca import fingerprint
    from ninefold.spec import load_spec

    tls = load_spec(spec_path).security.tls
    if tls is None:
        err.print("note: this cluster has no CA (security.tls): `ninefold join` needs one")
        return
    try:
        ca_hash = fingerprint(tls.ca_path(spec_path.resolve().parent).read_bytes())
    except (OSError, ValueError) as exc:
        err.print(f"note: cannot read the cluster CA to print its fingerprint: {exc}")
        return
    where = (url or "<node address>").split("://", 1)[-1]
    err.print(
        f"on the new machine: ninefold join {where} --token <token> --ca-hash {ca_hash} "
        "--name <node> --address <its address>",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@token_app.command("list")
def list_tokens(spec: SpecOption = DEFAULT_SPEC, output: TableOutput = "table") -> None:
    """Every token: id, kind, role, name, expiry, uses left. Never the tokens themselves."""
    check_output(output, "table", "json")
    with connect(spec) as client, calling():
        records: list[dict[str, Any]] = client.tokens()
    if output == "json":
        print_json(records)
        return
    table = Table(title="tokens", title_justify="left")
    for col in ("ID", "KIND", "ROLE", "NAME", "EXPIRES", "USES LEFT"):
        table.add_column(col)
    import time

    for r in sorted(records, key=lambda r: r.get("created", 0)):
        expires = r.get("expires")
        when = "never"
        if expires:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires))
            if expires <= time.time():
                when += " (expired)"
        uses = r.get("uses")
        table.add_row(
            r["id"],
            r.get("kind", ""),
            r.get("role", "") if r.get("kind") == "api" else "",
            r.get("name", ""),
            when,
            "" if uses is None else str(uses),
        )
    out.print(table)


@token_app.command("revoke")
def revoke(
    ident: Annotated[str, typer.Argument(help="The token's id (see `token list`).")],
    spec: SpecOption = DEFAULT_SPEC,
) -> None:
    """Revoke a token: it stops working at once."""
    with connect(spec) as client, calling():
        client.revoke_token(ident)
    say(f"token {ident} revoked")
