"""The cluster CA under `ninefold init` and `ninefold cert` (security/cluster_ca.py),
without the CLI, and the one-line errors the CLI makes of its exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ninefold.cli.console import EXIT_FAILED
from ninefold.cli.main import app
from ninefold.security.ca import load_ca
from ninefold.security.cluster_ca import (
    CaKeyExists,
    init_cluster_ca,
    issue_dir,
    issue_node,
    load_cluster_ca,
    node_data_dir,
)
from ninefold.security.files import TlsError
from ninefold.spec import parse_spec

runner = CliRunner()
SPEC = (
    "cluster: shop\n"
    "nodes: [{name: n1, address: 127.0.0.1, store: true}, {name: n2, address: 127.0.0.2}]\n"
)


def test_init_cluster_ca_makes_one_and_never_overwrites_it(tmp_path: Path) -> None:
    key = tmp_path / "cfg" / "ca.key"
    made = init_cluster_ca("shop", key, reuse=False)
    assert (made.key, made.cert, made.kept) == (key, tmp_path / "cfg" / "ca.crt", False)
    before = key.read_bytes()
    with pytest.raises(CaKeyExists) as caught:
        init_cluster_ca("shop", key, reuse=False)
    assert caught.value.key_path == key
    kept = init_cluster_ca("shop", key, reuse=True)
    assert kept.kept and key.read_bytes() == before
    load_ca(kept.cert, key)


def test_init_cluster_ca_checks_the_ca_it_keeps(tmp_path: Path) -> None:
    key = tmp_path / "ca.key"
    key.write_text("not a key")
    with pytest.raises(TlsError) as caught:
        init_cluster_ca("shop", key, reuse=True)
    assert not isinstance(caught.value, CaKeyExists)


def test_load_cluster_ca_finds_the_key_next_to_the_certificate(tmp_path: Path) -> None:
    made = init_cluster_ca("shop", tmp_path / "ca.key", reuse=False)
    assert load_cluster_ca(made.cert).cert == load_cluster_ca(made.cert, made.key).cert
    with pytest.raises(TlsError):
        load_cluster_ca(made.cert, tmp_path / "nope.key")


def test_node_data_dir_prefers_that_of_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NINEFOLD_DATA_ROOT", str(tmp_path))
    cluster = parse_spec(SPEC)
    assert node_data_dir(cluster, "n1") is None
    assert issue_dir(cluster, "n1") == tmp_path / "shop" / "n1"
    (tmp_path / "shop" / "n1").mkdir(parents=True)
    assert node_data_dir(cluster, "n1") == tmp_path / "shop" / "n1"
    (tmp_path / "local" / "shop" / "n1").mkdir(parents=True)
    assert node_data_dir(cluster, "n1") == tmp_path / "local" / "shop" / "n1"
    assert issue_dir(cluster, "n1") == tmp_path / "local" / "shop" / "n1"


def test_issue_node_writes_the_node_s_files(tmp_path: Path) -> None:
    made = init_cluster_ca("shop", tmp_path / "ca.key", reuse=False)
    files = issue_node(load_cluster_ca(made.cert), parse_spec(SPEC), "n2", tmp_path / "n2", 3)
    assert files.directory == tmp_path / "n2" / "tls" and not files.missing()


def test_the_cli_makes_one_line_of_each_ca_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NINEFOLD_CONFIG_ROOT", str(tmp_path / "cfg"))
    key = tmp_path / "cfg" / "shop" / "ca.key"
    spec = tmp_path / "a.yaml"
    assert runner.invoke(app, ["init", str(spec), "--cluster", "shop"]).exit_code == 0
    result = runner.invoke(app, ["init", str(tmp_path / "b.yaml"), "--cluster", "shop"])
    assert result.exit_code == EXIT_FAILED
    assert " ".join(result.output.split()) == (
        f"error: {key} exists (the CA of an earlier init?); not overwriting it "
        "(--force keeps and uses it, or give another --ca-key)"
    )
    result = runner.invoke(app, ["init", str(spec), "--cluster", "shop", "--force"])
    assert f"(keeping the cluster CA {key.with_suffix('.crt')})" in result.output
    key.unlink()
    result = runner.invoke(app, ["cert", "issue", "n1", "-s", str(spec)])
    assert result.exit_code == EXIT_FAILED
    line = " ".join(result.output.split())
    assert line.startswith("error: ") and line.endswith(
        "(issuing certificates needs the CA key: --ca-key)"
    )
