"""`ninefold token ...` and the token the CLI sends, against a real API server
(in-memory store) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ninefold.cli.console import EXIT_USAGE
from ninefold.cli.main import app
from tests.helpers import api_in_thread, free_port

EXIT_DENIED = 4
runner = CliRunner()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A one-node spec whose API runs in a background thread; its path."""
    for name in ("NINEFOLD_TOKEN", "NINEFOLD_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/ninefold/token here
    port = free_port()
    text = (
        "cluster: shop\n"
        f"nodes: [{{name: n1, address: 127.0.0.1, store: true, ports: {{api: {port}}}}}]\n"
        "services: {web: {command: [web, '{port}']}}\n"
    )
    path = tmp_path / "ninefold.yaml"
    path.write_text(text)
    with api_in_thread(text, port):
        yield path


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_tokens_from_bootstrap_to_revoke(cluster: Path, tmp_path: Path) -> None:
    spec = ["--spec", str(cluster)]
    code, _, _ = cli("status", *spec)
    assert code == 0  # not bootstrapped: open

    admin_file = tmp_path / "config" / "ninefold" / "token"  # its directory is made
    code, out, err = cli("token", "bootstrap", *spec, "--out", str(admin_file))
    assert code == 0, err
    assert admin_file.stat().st_mode & 0o777 == 0o600
    admin = admin_file.read_text().strip()
    assert admin not in out

    code, out, err = cli("status", *spec)
    assert code == EXIT_DENIED
    assert "needs a token" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    code, _, err = cli("token", "bootstrap", *spec)
    assert code == 1 and "bootstrapped already" in err

    as_admin = {"NINEFOLD_TOKEN_FILE": str(admin_file)}
    code, reader, err = cli(
        "token", "create", "--role", "read", "--name", "ci", *spec, env=as_admin
    )
    assert code == 0, err
    reader = reader.strip()
    as_reader = {"NINEFOLD_TOKEN": reader}
    assert cli("status", *spec, env=as_reader)[0] == 0
    code, _, err = cli("scale", "web", "3", *spec, env=as_reader)
    assert code == EXIT_DENIED and "needs role operate" in err and reader not in err

    code, listing, _ = cli("token", "list", *spec, "-o", "json", env=as_admin)
    assert code == 0 and '"role": "read"' in listing
    assert reader.split(".")[2] not in listing and admin.split(".")[2] not in listing
    ident = reader.split(".")[1]
    assert cli("token", "list", *spec, env=as_reader)[0] == EXIT_DENIED

    assert cli("token", "revoke", ident, *spec, env=as_admin)[0] == 0
    code, _, err = cli("status", *spec, env=as_reader)
    assert code == EXIT_DENIED and "unknown or revoked" in err


def test_token_option_errors_are_usage_errors(cluster: Path, tmp_path: Path) -> None:
    spec = ["--spec", str(cluster)]
    assert cli("token", "create", "--role", "root", *spec)[0] == EXIT_USAGE
    assert cli("token", "create", "--uses", "2", *spec)[0] == EXIT_USAGE
    code, _, err = cli("token", "create", "--join", "--ttl", "soon", *spec)
    assert code == EXIT_USAGE and "--ttl" in err
    missing = {"NINEFOLD_TOKEN_FILE": str(tmp_path / "nope")}
    code, _, err = cli("status", *spec, env=missing)
    assert code == EXIT_USAGE and "does not exist" in err


def test_a_join_token_with_uses_and_ttl(cluster: Path, tmp_path: Path) -> None:
    spec = ["--spec", str(cluster)]
    admin_file = tmp_path / "admin.token"
    assert cli("token", "bootstrap", *spec, "--out", str(admin_file))[0] == 0
    env = {"NINEFOLD_TOKEN_FILE": str(admin_file)}
    code, _, err = cli("token", "create", "--join", "--uses", "2", "--ttl", "1h", *spec, env=env)
    assert code == 0, err
    code, listing, _ = cli("token", "list", *spec, env=env)
    assert code == 0 and "join" in listing


def test_token_out_never_overwrites_a_file(cluster: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    code, _, err = cli("token", "bootstrap", "--spec", str(cluster), "--out", str(taken))
    assert code == EXIT_USAGE and "exists already" in err
    assert taken.read_text() == "keep me\n"
    assert cli("status", "--spec", str(cluster))[0] == 0  # no token was made: still open
    unwritable = tmp_path / "file" / "token"
    (tmp_path / "file").write_text("")
    code, _, err = cli("token", "bootstrap", "--spec", str(cluster), "--out", str(unwritable))
    assert code == EXIT_USAGE and "cannot write" in err
    code, _, err = cli("token", "bootstrap", "--spec", str(cluster), "--out", str(tmp_path / "ok"))
    assert code == 0, err


def test_join_to_an_address_nobody_answers_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    code, _, err = cli(
        "join", f"127.0.0.1:{port}", "--token", "nf1.x", "--ca-hash", "sha256:0",
        "--name", "n9", "--address", "127.0.0.9", "--data-dir", str(tmp_path / "n9"),
    )  # fmt: skip
    assert code == 3, err
    assert f"cannot reach https://127.0.0.1:{port}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n9").exists()


def test_a_join_label_without_a_value_is_refused_before_anything_is_asked(
    tmp_path: Path,
) -> None:
    port = free_port()
    code, _, err = cli(
        "join", f"127.0.0.1:{port}", "--token", "nf1.x", "--ca-hash", "sha256:0",
        "--name", "n9", "--address", "127.0.0.9", "--label", "pool",
        "--data-dir", str(tmp_path / "n9"),
    )  # fmt: skip
    assert code == 2, err
    assert "--label 'pool': expected KEY=VALUE" in err
    assert "cannot reach" not in err and len(err.strip().splitlines()) == 1
