"""Certificate revocation (security/revocation.py, security/tls.py): a CRL
signed by the cluster CA, and the servers' contexts refusing a revoked
client certificate from the next handshake on, while others still pass; a
quarantine (ninefold/quarantine.py) revokes a node's certificates and
tokens and drains it in one transaction."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from ninefold.operations import Conflict, NotFound
from ninefold.quarantine import quarantine
from ninefold.security.ca import create_ca
from ninefold.security.certs import issue_node_files, load_cert
from ninefold.security.files import NodeTlsFiles, TlsError, write_public
from ninefold.security.revocation import Revoked, check_crl, revoked_serials, sign_crl
from ninefold.security.tls import ReloadingServerContext, client_context
from ninefold.security.tokens import new_token
from ninefold.spec import parse_spec
from ninefold.state.keys import CRL_KEY, cert_key, drain_key, quarantine_key, token_key
from ninefold.state.reads import read_events
from ninefold.state.records import CertSerials, QuarantineRecord
from ninefold.state.tokens import store_token
from ninefold.store.memory import MemoryStore

SPEC = """\
cluster: c
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n2, address: 127.0.0.2}
security:
  tls: {ca: /nonexistent/ca.crt}
"""


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """A TLS handshake in memory; ssl.SSLError when either side refuses."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_hostname="n1")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, (obj, out, peer_in) in enumerate(((cli, c_out, s_in), (srv, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done):
            # TLS 1.3: the server's verdict on the client certificate comes after
            # the client thinks it is done; a read makes it arrive
            srv.write(b"x")
            c_in.write(s_out.read())
            cli.read(1)
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    spec = parse_spec(SPEC)
    ca = create_ca("c")
    server = issue_node_files(ca, spec.node("n1"), tmp_path / "n1")
    victim = issue_node_files(ca, spec.node("n2"), tmp_path / "n2")
    other = issue_node_files(ca, spec.node("n2"), tmp_path / "n2b")
    return {"ca": ca, "spec": spec, "server": server, "victim": victim, "other": other}


def test_a_node_gets_an_empty_signed_list_with_its_certificate(pki: dict[str, object]) -> None:
    server = pki["server"]
    assert isinstance(server, NodeTlsFiles)
    pem = server.crl.read_bytes()
    assert revoked_serials(pem) == set()
    check_crl(pem, pki["ca"].cert)  # type: ignore[attr-defined]


def test_a_list_from_another_ca_or_not_a_list_is_refused(pki: dict[str, object]) -> None:
    stranger = sign_crl(create_ca("other"), [Revoked(5, 0.0)])
    with pytest.raises(TlsError, match="not signed by the cluster CA"):
        check_crl(stranger, pki["ca"].cert)  # type: ignore[attr-defined]
    with pytest.raises(TlsError, match="not a PEM CRL"):
        check_crl(b"junk", pki["ca"].cert)  # type: ignore[attr-defined]


def test_a_revoked_client_certificate_is_refused_from_the_next_handshake(
    pki: dict[str, object],
) -> None:
    server, victim, other = pki["server"], pki["victim"], pki["other"]
    assert isinstance(server, NodeTlsFiles) and isinstance(victim, NodeTlsFiles)
    assert isinstance(other, NodeTlsFiles)
    reloading = ReloadingServerContext(server, require_client_cert=True)
    as_victim = client_context(victim.ca, victim.cert, victim.key)
    as_other = client_context(other.ca, other.cert, other.key)
    handshake(reloading.context, as_victim)

    serial = load_cert(victim.cert).serial_number
    write_public(server.crl, sign_crl(pki["ca"], [Revoked(serial, 1.0)]))  # type: ignore[arg-type]
    assert reloading.reload()
    with pytest.raises(ssl.SSLError):
        handshake(reloading.context, as_victim)
    handshake(reloading.context, as_other)  # the same node's other certificate: not revoked


async def test_quarantine_revokes_the_known_certificates_deletes_tokens_and_drains(
    pki: dict[str, object],
) -> None:
    store = MemoryStore()
    spec = pki["spec"]
    victim = pki["victim"]
    assert isinstance(victim, NodeTlsFiles)
    serial = load_cert(victim.cert).serial_number
    await store.put(cert_key("n2"), CertSerials(node="n2", serials=[f"{serial:x}"]).encode())
    _, mine = new_token(kind="join", name="for n2")
    await store_token(store, mine.model_copy(update={"node": "n2"}))
    _, others = new_token(kind="api", role="admin", name="operator")
    await store_token(store, others)

    done = await quarantine(store, spec, "n2", pki["ca"], None, "stolen", by="n1")  # type: ignore[arg-type]
    assert not done.unknown_certificate
    crl = await store.get(CRL_KEY)
    assert crl is not None and revoked_serials(crl.value) == {serial}
    assert await store.get(token_key(mine.id)) is None
    assert await store.get(token_key(others.id)) is not None
    assert await store.get(drain_key("n2")) is not None
    record = await store.get(quarantine_key("n2"))
    assert record is not None and QuarantineRecord.decode(record.value).tokens == [mine.id]
    events = await read_events(store)
    assert [(e.kind, e.subject, e.node) for e in events] == [("node-quarantined", "n2", "n1")]
    assert "stolen" in events[0].reason

    with pytest.raises(Conflict, match="quarantined already"):
        await quarantine(store, spec, "n2", pki["ca"], None)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no node named 'n9'"):
        await quarantine(store, spec, "n9", pki["ca"], None)  # type: ignore[arg-type]
    # a second node's quarantine keeps the first one's serials on the list
    await store.put(cert_key("n1"), CertSerials(node="n1", serials=["abc"]).encode())
    await quarantine(store, spec, "n1", pki["ca"], None)  # type: ignore[arg-type]
    crl = await store.get(CRL_KEY)
    assert crl is not None and revoked_serials(crl.value) == {serial, 0xABC}


async def test_quarantine_of_a_node_with_no_known_certificate_says_so(
    pki: dict[str, object],
) -> None:
    store = MemoryStore()
    done = await quarantine(store, pki["spec"], "n2", pki["ca"], None)  # type: ignore[arg-type]
    assert done.unknown_certificate and done.record.serials == []
