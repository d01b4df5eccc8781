"""TLS termination at the builtin gateway, against real sockets: a client that
trusts the CA gets 200 over https; plain HTTP on the TLS port gets nothing; TLS
below 1.2 is refused; the HTTP port redirects when asked; the node's own
certificate is used when the spec names none, and a missing or mismatched
one is one clear error; a rotated certificate is served without a restart.
The haproxy engine's rendering of the same settings is checked too (and
validated by `haproxy -c` when the binary exists).

`self_signed` and `issued` are shared with other tests."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import stat
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ninefold import defaults
from ninefold.gateway.builtin import BuiltinEngine
from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.haproxy import haproxy_binary, render
from ninefold.gateway.routes import RoutingTable, ServiceRoutes
from ninefold.gateway.tls import (
    GatewayTlsError,
    TlsSettings,
    combined_pem,
    resolve_tls,
    server_context,
    write_private,
)
from ninefold.spec.routing import BalanceSpec, GatewayTlsSpec, RouteSpec
from tests.helpers import free_port
from tests.unit.test_builtin_gateway import HOST, Upstream

# --- certificates ------------------------------------------------------------------------

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _write(directory: Path, name: str, cert: x509.Certificate, key: Key) -> tuple[Path, Path]:
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _builder(subject: str, issuer: str, public: Any, days: int = 1) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _server_names() -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    )


def self_signed(directory: Path, name: str, key: Key | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (EC P-256 unless
    `key` is given): (certificate file, key file)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(_server_names(), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key)


def issued(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it issued for 127.0.0.1: (ca, cert, key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _builder(f"{name}-ca", f"{name}-ca", ca_key.public_key(), days=10)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = _write(directory, f"{name}-ca", ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, f"{name}-ca", key.public_key())
        .add_extension(_server_names(), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = _write(directory, name, cert, key)
    return ca_path, cert_path, key_path


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream("web-0").start()
    yield up
    up.kill()


def routes(upstream: Upstream) -> RoutingTable:
    web = ServiceRoutes("web", RouteSpec(http="/web"), BalanceSpec(), (upstream.backend(),))
    return RoutingTable({"web": web})


async def started(settings: GatewaySettings, upstream: Upstream) -> BuiltinEngine:
    engine = BuiltinEngine(settings)
    await engine.start()
    await engine.apply(routes(upstream))
    return engine


def settings_with(tls: GatewayTlsSpec | None, **kw: Any) -> GatewaySettings:
    return GatewaySettings("n1", HOST, 0, Path("/nonexistent"), Path("/nonexistent"), tls=tls, **kw)


def trusting(ca: Path, **kw: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    for name, value in kw.items():
        setattr(context, name, value)
    return context


# --- the builtin engine ------------------------------------------------------------------


async def test_https_with_a_ca_issued_certificate(tmp_path: Path, upstream: Upstream) -> None:
    ca, cert, key = issued(tmp_path, "gw")
    tls = GatewayTlsSpec(cert=str(cert), key=str(key), port=free_port())
    engine = await started(settings_with(tls), upstream)
    try:
        assert engine.tls_port == tls.port
        async with httpx.AsyncClient(verify=trusting(ca), timeout=10) as c:
            r = await c.get(f"https://{HOST}:{tls.port}/web/x")
        assert r.status_code == 200
        assert r.json()["path"] == "/x"
        assert r.json()["headers"]["x-forwarded-proto"] == "https"
        async with httpx.AsyncClient(timeout=10) as c:  # plain HTTP goes on as before
            r = await c.get(f"http://{HOST}:{engine.port}/web/x")
        assert r.status_code == 200
        assert r.json()["headers"]["x-forwarded-proto"] == "http"
        # a client that does not trust the CA refuses the gateway
        async with httpx.AsyncClient(timeout=10) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"https://{HOST}:{tls.port}/web/x")
    finally:
        await engine.stop()


async def test_plain_http_and_old_tls_on_the_tls_port_fail(
    tmp_path: Path, upstream: Upstream
) -> None:
    ca, cert, key = issued(tmp_path, "gw")
    tls = GatewayTlsSpec(cert=str(cert), key=str(key), port=free_port())
    engine = await started(settings_with(tls), upstream)
    try:
        reader, writer = await asyncio.open_connection(HOST, tls.port)
        writer.write(b"GET /web/x HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert not answer.startswith(b"HTTP/")
        assert upstream.requests == []
        old = trusting(ca)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.TLSv1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _, writer = await asyncio.open_connection(HOST, tls.port, ssl=old)
            writer.close()
    finally:
        await engine.stop()


async def test_redirect_http_to_https(tmp_path: Path, upstream: Upstream) -> None:
    ca, cert, key = issued(tmp_path, "gw")
    tls = GatewayTlsSpec(cert=str(cert), key=str(key), port=free_port(), redirect_http=True)
    engine = await started(settings_with(tls), upstream)
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            get = await c.get(f"http://{HOST}:{engine.port}/web/a?b=1")
            post = await c.post(f"http://localhost:{engine.port}/web/a", content=b"x")
            bare = await c.get(f"http://{HOST}:{engine.port}/nothing", headers={"Host": "bad host"})
        assert get.status_code == 301
        assert get.headers["location"] == f"https://{HOST}:{tls.port}/web/a?b=1"
        assert post.status_code == 308
        assert post.headers["location"] == f"https://localhost:{tls.port}/web/a"
        assert bare.headers["location"] == f"https://{HOST}:{tls.port}/nothing"
        assert upstream.requests == []
        async with httpx.AsyncClient(verify=trusting(ca), timeout=10) as c:
            r = await c.get(get.headers["location"])
        assert r.status_code == 200
    finally:
        await engine.stop()


async def test_node_certificate_when_the_spec_names_none(
    tmp_path: Path, upstream: Upstream
) -> None:
    ca, cert, key = issued(tmp_path, "node")
    tls = GatewayTlsSpec(port=free_port())
    engine = await started(settings_with(tls, node_cert=cert, node_key=key), upstream)
    try:
        assert engine.tls is not None and engine.tls.node_certificate
        async with httpx.AsyncClient(verify=trusting(ca), timeout=10) as c:
            assert (await c.get(f"https://{HOST}:{tls.port}/web/")).status_code == 200
    finally:
        await engine.stop()


async def test_missing_node_certificate_is_one_clear_error(tmp_path: Path) -> None:
    tls = GatewayTlsSpec(port=free_port())
    engine = BuiltinEngine(
        settings_with(tls, node_cert=tmp_path / "tls/node.crt", node_key=tmp_path / "tls/node.key")
    )
    with pytest.raises(GatewayTlsError) as info:
        await engine.start()
    message = str(info.value)
    assert message == (
        f"gateway.tls: the node's certificate {tmp_path / 'tls/node.crt'} is missing (issue "
        "the node's certificate from the cluster CA, or give gateway.tls.cert and key)"
    )
    await engine.stop()
    with pytest.raises(GatewayTlsError, match="knows no node certificate"):
        await BuiltinEngine(settings_with(tls)).start()


def test_mismatched_or_unreadable_files_are_one_line(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "a")
    _, other_key = self_signed(tmp_path, "b")
    bad = TlsSettings(8443, cert, other_key)
    with pytest.raises(GatewayTlsError) as info:
        server_context(bad)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"gateway.tls: {cert} and {other_key} are not a PEM")
    junk = tmp_path / "junk.crt"
    junk.write_text("junk\n")
    with pytest.raises(GatewayTlsError, match="are not a PEM certificate and its key"):
        server_context(TlsSettings(8443, junk, other_key))
    with pytest.raises(GatewayTlsError, match="is missing"):
        server_context(TlsSettings(8443, tmp_path / "none.crt", other_key))


async def test_rotated_certificate_is_served_without_restart(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "GATEWAY_TLS_CHECK_INTERVAL", 0.02)
    _, cert, key = issued(tmp_path, "old")
    tls = GatewayTlsSpec(cert=str(cert), key=str(key), port=free_port())
    engine = await started(settings_with(tls), upstream)

    async def served_serial() -> int:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection(HOST, tls.port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number

    try:
        assert await served_serial() == serial_of(cert)
        (tmp_path / "new").mkdir()
        _, new_cert, new_key = issued(tmp_path / "new", "new")
        new_key.replace(key)  # the key first: a moment of mismatch is kept out
        new_cert.replace(cert)
        wanted = serial_of(cert)
        seen: list[int] = []

        async def poll() -> None:
            while not seen or seen[-1] != wanted:
                seen.append(await served_serial())

        await asyncio.wait_for(poll(), 10)
    finally:
        await engine.stop()


# --- files ---------------------------------------------------------------------------------


def test_combined_pem_is_private(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "gw")
    pem = combined_pem(TlsSettings(8443, cert, key))
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 1
    assert pem.count(b"PRIVATE KEY-----") == 2
    target = tmp_path / "run" / "gateway-tls.pem"
    target.parent.mkdir()
    write_private(target, pem)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == pem


def test_resolve_tls() -> None:
    assert resolve_tls(None, None, None) is None
    given = resolve_tls(GatewayTlsSpec(cert="/c", key="/k", port=9443), Path("/n"), Path("/m"))
    assert given == TlsSettings(9443, Path("/c"), Path("/k"))
    node = resolve_tls(GatewayTlsSpec(redirect_http=True), Path("/n"), Path("/m"))
    assert node == TlsSettings(8443, Path("/n"), Path("/m"), True, node_certificate=True)


# --- the haproxy engine's configuration ------------------------------------------------------


def test_haproxy_renders_tls_binds_and_redirect(tmp_path: Path) -> None:
    tls = GatewayTlsSpec(cert="/c.pem", key="/k.pem", port=8443, redirect_http=True)
    settings = GatewaySettings(
        "n1", "10.0.0.1", 8080, tmp_path / "run", tmp_path / "log", ("10.0.0.9",), tls=tls
    )
    web = ServiceRoutes("web", RouteSpec(http="/web"), BalanceSpec(), ())
    cfg = render(RoutingTable({"web": web}), settings)
    pem = tmp_path / "run" / "gateway-tls.pem"
    assert f"    bind 10.0.0.1:8443 ssl crt '{pem}' ssl-min-ver TLSv1.2 alpn http/1.1" in cfg
    assert (
        f"    bind 10.0.0.9:8443 transparent ssl crt '{pem}' ssl-min-ver TLSv1.2 alpn http/1.1"
    ) in cfg
    assert "    http-request set-header X-Forwarded-Proto https if { ssl_fc }" in cfg
    assert "    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }" in cfg
    assert "code 301 if !{ ssl_fc } { method GET HEAD }" in cfg
    assert "code 308 if !{ ssl_fc }" in cfg
    plain = render(RoutingTable({"web": web}), settings_with(None))
    assert "ssl" not in plain
    assert "X-Forwarded-Proto http\n" in plain


@pytest.mark.process
@pytest.mark.skipif(haproxy_binary() is None, reason="no haproxy binary")
def test_haproxy_accepts_the_tls_configuration(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "gw")
    run = tmp_path / "run"
    run.mkdir()
    write_private(run / "gateway-tls.pem", combined_pem(TlsSettings(8443, cert, key)))
    tls = GatewayTlsSpec(cert=str(cert), key=str(key), port=8443, redirect_http=True)
    settings = GatewaySettings("n1", HOST, 8080, run, tmp_path / "log", tls=tls)
    web = ServiceRoutes("web", RouteSpec(http="/web"), BalanceSpec(), ())
    path = run / "haproxy.cfg"
    path.write_text(render(RoutingTable({"web": web}), settings))
    out = subprocess.run(
        [str(haproxy_binary()), "-c", "-q", "-f", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
