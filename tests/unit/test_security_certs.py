"""The cluster CA and node certificates: names, usages, expiry, file modes, overwrites."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from ninefold.cli.console import EXIT_FAILED, EXIT_USAGE
from ninefold.cli.main import app
from ninefold.security.ca import create_ca, load_ca, new_key, write_ca
from ninefold.security.certs import (
    issue_node_files,
    load_cert,
    needs_issuing,
    node_csr,
    sign_node_csr,
)
from ninefold.security.files import NodeTlsFiles, TlsError
from ninefold.spec import NodeSpec, load_spec, parse_spec

runner = CliRunner()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


def test_ca_is_a_p256_ca_and_its_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    ca = create_ca("shop")
    assert ca.key.curve.name == "secp256r1"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key, cert = tmp_path / "ca" / "ca.key", tmp_path / "ca" / "ca.crt"
    write_ca(ca, key, cert)
    assert mode(key) == 0o600
    assert load_ca(cert, key).cert == ca.cert
    with pytest.raises(TlsError, match="exists; not overwriting"):
        write_ca(create_ca("shop"), key, cert)
    assert load_ca(cert, key).cert == ca.cert  # the first CA is intact
    other = create_ca("other")
    write_ca(other, tmp_path / "o.key", tmp_path / "o.crt")
    with pytest.raises(TlsError, match="is not the key of"):
        load_ca(cert, tmp_path / "o.key")


def test_node_certificate_names_usages_expiry_and_files(tmp_path: Path) -> None:
    ca = create_ca("shop")
    node = NodeSpec(name="db1", address="10.0.0.7")
    files = issue_node_files(ca, node, tmp_path, dt.timedelta(days=30))
    assert files == NodeTlsFiles(tmp_path / "tls")
    assert mode(files.key) == 0o600 and mode(files.directory) == 0o700
    cert = load_cert(files.cert)
    assert sans(cert) == ({"db1"}, {"10.0.0.7"})  # no localhost for a real address
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, minutes=10)
    cert.verify_directly_issued_by(ca.cert)
    assert files.ca.read_bytes() == ca.cert_pem


def test_loopback_node_also_names_localhost(tmp_path: Path) -> None:
    files = issue_node_files(create_ca("c"), NodeSpec(name="n2", address="127.0.0.2"), tmp_path)
    dns, ips = sans(load_cert(files.cert))
    assert dns == {"n2", "localhost"} and {"127.0.0.2", "127.0.0.1"} <= ips
    life = load_cert(files.cert).not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < life <= dt.timedelta(days=365)


def test_rotation_keeps_or_replaces_the_key(tmp_path: Path) -> None:
    ca = create_ca("c")
    node = NodeSpec(name="n1", address="127.0.0.1")
    files = issue_node_files(ca, node, tmp_path)
    key, cert = files.key.read_bytes(), files.cert.read_bytes()
    issue_node_files(ca, node, tmp_path, keep_key=True)
    assert files.key.read_bytes() == key and files.cert.read_bytes() != cert
    issue_node_files(ca, node, tmp_path)
    assert files.key.read_bytes() != key and mode(files.key) == 0o600


def test_needs_issuing_says_why(tmp_path: Path) -> None:
    ca = create_ca("c")
    node = NodeSpec(name="n1", address="127.0.0.1")
    files = NodeTlsFiles.of_data_dir(tmp_path)
    margin = dt.timedelta(days=30)
    assert needs_issuing(files, ca.cert, node, margin) == "no certificate yet"
    issue_node_files(ca, node, tmp_path)
    assert needs_issuing(files, ca.cert, node, margin) is None
    assert needs_issuing(files, create_ca("c").cert, node, margin) == "issued by another CA"
    moved = NodeSpec(name="n1", address="127.0.0.5")
    assert needs_issuing(files, ca.cert, moved, margin) == "names or address changed"
    issue_node_files(ca, node, tmp_path, dt.timedelta(days=10))
    assert "expires" in (needs_issuing(files, ca.cert, node, margin) or "")


def test_expired_certificate_can_be_made_for_tests(tmp_path: Path) -> None:
    ca = create_ca("c")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    files = issue_node_files(
        ca, NodeSpec(name="n1", address="127.0.0.1"), tmp_path, dt.timedelta(days=1), now=past
    )
    assert load_cert(files.cert).not_valid_after_utc < dt.datetime.now(dt.UTC)


def test_csr_signing_takes_names_from_the_spec_only() -> None:
    ca = create_ca("c")
    key = new_key()
    pem = sign_node_csr(ca, NodeSpec(name="n4", address="10.1.2.3"), node_csr("evil", key))
    cert = x509.load_pem_x509_certificate(pem)
    assert sans(cert) == ({"n4"}, {"10.1.2.3"})
    assert cert.public_key() == key.public_key()
    with pytest.raises(TlsError, match="not a PEM CSR"):
        sign_node_csr(ca, NodeSpec(name="n4", address="10.1.2.3"), b"junk")


# --- the CLI -------------------------------------------------------------------------


def test_init_makes_a_ca_and_a_tls_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NINEFOLD_CONFIG_ROOT", str(tmp_path / "cfg"))
    path = tmp_path / "ninefold.yaml"
    result = runner.invoke(app, ["init", str(path), "--cluster", "shop"])
    assert result.exit_code == 0, result.output
    key = tmp_path / "cfg" / "shop" / "ca.key"
    assert mode(key) == 0o600
    spec = load_spec(path)
    assert spec.security.tls is not None
    assert spec.security.tls.ca == str(key.with_suffix(".crt"))
    load_ca(key.with_suffix(".crt"), key)

    # Another init of the same cluster must not replace the CA...
    other = tmp_path / "other.yaml"
    result = runner.invoke(app, ["init", str(other), "--cluster", "shop"])
    assert result.exit_code == EXIT_FAILED and "not overwriting" in result.output
    assert not other.exists()
    # ...with --force it keeps and uses it.
    before = key.read_bytes()
    result = runner.invoke(app, ["init", str(path), "--cluster", "shop", "--force"])
    assert result.exit_code == 0, result.output
    assert key.read_bytes() == before


def test_init_with_a_ca_key_path_and_without_tls(tmp_path: Path) -> None:
    key = tmp_path / "secret" / "shop-ca.key"
    path = tmp_path / "a.yaml"
    assert runner.invoke(app, ["init", str(path), "--ca-key", str(key)]).exit_code == 0
    assert mode(key) == 0o600 and (tmp_path / "secret" / "shop-ca.crt").is_file()
    plain = tmp_path / "b.yaml"
    assert runner.invoke(app, ["init", str(plain), "--no-tls"]).exit_code == 0
    assert load_spec(plain).security.tls is None


def test_cert_issue_and_rotate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NINEFOLD_CONFIG_ROOT", str(tmp_path / "cfg"))
    monkeypatch.setenv("NINEFOLD_DATA_ROOT", str(tmp_path / "data"))
    path = tmp_path / "c.yaml"
    assert runner.invoke(app, ["init", str(path), "--cluster", "shop"]).exit_code == 0
    result = runner.invoke(app, ["cert", "issue", "n2", "-s", str(path), "--days", "10"])
    assert result.exit_code == 0, result.output
    files = NodeTlsFiles.of_data_dir(tmp_path / "data" / "shop" / "n2")
    first = load_cert(files.cert)
    assert sans(first)[1] >= {"127.0.0.2"}
    result = runner.invoke(app, ["cert", "rotate", "-s", str(path)])
    assert result.exit_code == 0, result.output
    assert "n2: certificate issued" in result.output and "n1" not in result.output
    assert load_cert(files.cert).serial_number != first.serial_number

    assert runner.invoke(app, ["cert", "issue", "n9", "-s", str(path)]).exit_code == EXIT_USAGE
    result = runner.invoke(
        app, ["cert", "issue", "n1", "-s", str(path), "--ca-key", str(tmp_path / "nope.key")]
    )
    assert result.exit_code == EXIT_FAILED
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_cert_rotate_without_data_directories_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NINEFOLD_CONFIG_ROOT", str(tmp_path / "cfg"))
    monkeypatch.setenv("NINEFOLD_DATA_ROOT", str(tmp_path / "data"))
    path = tmp_path / "c.yaml"
    assert runner.invoke(app, ["init", str(path), "--cluster", "shop"]).exit_code == 0
    for args, says in (([], "no node of cluster shop"), (["n2"], "no data directory of n2")):
        result = runner.invoke(app, ["cert", "rotate", *args, "-s", str(path)])
        assert result.exit_code == EXIT_FAILED and says in result.output, result.output
        assert "Traceback" not in result.output


def test_cert_commands_need_a_tls_spec(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    assert runner.invoke(app, ["init", str(path), "--no-tls"]).exit_code == 0
    result = runner.invoke(app, ["cert", "issue", "n1", "-s", str(path)])
    assert result.exit_code == EXIT_USAGE and "no security.tls" in result.output


def test_spec_security_section_is_strict() -> None:
    base = "cluster: c\nnodes: [{name: n1, address: 127.0.0.1, store: true}]\n"
    assert parse_spec(base).security.tls is None
    assert parse_spec(base + "security: {tls: {ca: ca.crt}}\n").security.tls is not None
    for bad in ("security: {tls: {ca: ''}}", "security: {tls: {cert: x}}", "security: {x: 1}"):
        with pytest.raises(Exception):  # noqa: B017 - SpecError, with the line
            parse_spec(base + bad + "\n")
