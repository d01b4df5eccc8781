"""Forwarding to Debian's rsyslog: the agent's records and an instance's
output, RFC 5424 over TCP (octet counting), plain and with TLS (gtls),
arrive parsed with the node as hostname, the app-name and the message."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ninefold.logs.syslog import start_forwarding
from ninefold.spec.logging import SyslogSpec
from tests.helpers import free_port, port_open

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not os.access(RSYSLOGD, os.X_OK), reason="rsyslogd is not installed"),
]

TEMPLATE = "%HOSTNAME%|%APP-NAME%|%PROCID%|%MSGID%|%STRUCTURED-DATA%|%msg%\\n"


def _pem_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test syslog CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _config(tmp: Path, port: int, out: Path, tls: bool) -> str:
    lines = [f'global(workDirectory="{tmp}")']
    if tls:
        ca, cert, key = _pem_files(tmp)
        lines += [
            f'global(DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}" '
            f'DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")',
            'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
            'StreamDriver.AuthMode="anon")',
        ]
    else:
        lines.append('module(load="imtcp")')
    lines += [
        f'input(type="imtcp" port="{port}" address="127.0.0.1")',
        f'template(name="fields" type="string" string="{TEMPLATE}")',
        f'*.* action(type="omfile" file="{out}" template="fields")',
    ]
    return "\n".join(lines) + "\n"


def _until(what: str, check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Rsyslog:
    def __init__(self, tmp: Path, tls: bool) -> None:
        self.port = free_port("127.0.0.1")
        self.out = tmp / "received.log"
        conf = tmp / "rsyslog.conf"
        conf.write_text(_config(tmp, self.port, self.out, tls))
        self.log = (tmp / "rsyslogd.out").open("wb")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp / "rsyslogd.pid")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.tmp = tmp

    def wait_listening(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                text = (self.tmp / "rsyslogd.out").read_text(errors="replace")
                raise AssertionError(f"rsyslogd exited {self.proc.returncode}: {text}")
            return port_open("127.0.0.1", self.port)

        _until("rsyslogd to listen", up)

    def received(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        return [line.split("|", 5) for line in self.out.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(params=["tcp", "tls"])
def rsyslog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rsyslog]:
    tls = request.param == "tls"
    if tls and not GTLS.exists():
        pytest.skip("rsyslog-gnutls is not installed")
    server = Rsyslog(tmp_path, tls)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


async def test_rsyslog_receives_agent_records_and_instance_output(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    tls = (tmp_path / "ca.pem").exists()
    spec = SyslogSpec(
        address=f"127.0.0.1:{rsyslog.port}",
        tls=tls,
        ca=str(tmp_path / "ca.pem") if tls else None,
        app_name="ninefold-test",
        facility="local4",
    )
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    instance_log = log_dir / "web-0.log"
    instance_log.write_text("")
    forwarding = start_forwarding(spec, "n7", log_dir)
    logger = logging.getLogger("ninefold.test.rsyslog")
    try:
        logger.warning("disk is %d%% full", 93)
        with instance_log.open("a") as f:
            f.write("GET /web/ 200\n")

        def arrived() -> bool:
            texts = [fields[-1] for fields in rsyslog.received() if len(fields) == 6]
            return "disk is 93% full" in texts and "GET /web/ 200" in texts

        await asyncio.to_thread(_until, "both lines at rsyslog", arrived)
    finally:
        await forwarding.stop()
    by_msg = {fields[-1]: fields for fields in rsyslog.received() if len(fields) == 6}
    host, app, procid, msgid, data, _ = by_msg["disk is 93% full"]
    assert (host, app, procid, msgid) == ("n7", "ninefold-test", str(os.getpid()), "agent")
    assert 'node="n7"' in data and 'logger="ninefold.test.rsyslog"' in data
    host, app, procid, msgid, data, _ = by_msg["GET /web/ 200"]
    assert (host, app, procid, msgid) == ("n7", "ninefold-test", "-", "web-0")
    assert 'instance="web-0"' in data and 'service="web"' in data
    assert forwarding.forwarder.stats.dropped == 0
