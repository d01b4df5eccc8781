"""Node certificates: signed by the cluster CA, for both ends of every connection.

A node certificate names the node (DNS) and its address (IP), plus `localhost`
and 127.0.0.1 when the node's address is a loopback one (on loopback every
connection comes from 127.0.0.1, and etcd checks a peer's address against its
certificate). It is good for TLS servers and clients alike (serverAuth and
clientAuth): the same file serves the API and etcd, and identifies the node
to the other members and to etcd.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ninefold.security.ca import (
    CertificateAuthority,
    load_cert,
    new_key,
    private_pem,
    utcnow,
)
from ninefold.security.files import (
    NodeTlsFiles,
    TlsError,
    read_file,
    write_private,
    write_public,
)
from ninefold.security.revocation import sign_crl
from ninefold.spec import NodeSpec

NODE_CERT_VALIDITY = dt.timedelta(days=365)
"""How long a node certificate is valid unless told otherwise."""


def node_names(node: NodeSpec) -> list[x509.GeneralName]:
    """The subject alternative names of a node's certificate."""
    names: list[x509.GeneralName] = [x509.DNSName(node.name)]
    address = ipaddress.ip_address(node.address)
    ips = [address]
    if address.is_loopback:
        names.append(x509.DNSName("localhost"))
        ips += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    names += [x509.IPAddress(ip) for ip in dict.fromkeys(ips)]
    return names


def sign_node_key(
    ca: CertificateAuthority,
    node: NodeSpec,
    public_key: ec.EllipticCurvePublicKey,
    validity: dt.timedelta = NODE_CERT_VALIDITY,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate for `node`'s public key, signed by the CA."""
    start = (now or utcnow()) - dt.timedelta(minutes=5)
    end = min(start + validity, ca.cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ninefold"),
            x509.NameAttribute(NameOID.COMMON_NAME, node.name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(node_names(node)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def sign_node_csr(
    ca: CertificateAuthority,
    node: NodeSpec,
    csr_pem: bytes,
    validity: dt.timedelta = NODE_CERT_VALIDITY,
) -> bytes:
    """PEM certificate for the key of a certificate request (for `join`: the new
    machine keeps its key and sends only the request). The names come from the
    spec's node, never from the request."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise TlsError("the certificate request is not a PEM CSR") from None
    public = csr.public_key()
    if not csr.is_signature_valid or not isinstance(public, ec.EllipticCurvePublicKey):
        raise TlsError("the certificate request is not a signed EC key request")
    cert = sign_node_key(ca, node, public, validity)
    return cert.public_bytes(serialization.Encoding.PEM)


def node_csr(node_name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM certificate request for `key` (the other half of `sign_node_csr`)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def write_node_files(files: NodeTlsFiles, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    """Install a node's files. The key goes first: a reader between the two
    renames sees the new key with the old certificate for a moment (the API
    server then keeps its old context; etcd fails that one handshake)."""
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_public(files.ca, ca_pem)
    write_private(files.key, key_pem)
    write_public(files.cert, cert_pem)


def issue_node_files(
    ca: CertificateAuthority,
    node: NodeSpec,
    data_dir: Path,
    validity: dt.timedelta = NODE_CERT_VALIDITY,
    *,
    keep_key: bool = False,
    now: dt.datetime | None = None,
) -> NodeTlsFiles:
    """Issue `node` a new certificate into `<data_dir>/tls/` (a new key unless
    `keep_key` and one is there). What `ninefold cert issue/rotate` and
    `ninefold up` call."""
    files = NodeTlsFiles.of_data_dir(data_dir)
    key = _existing_key(files) if keep_key else None
    key = key or new_key()
    cert = sign_node_key(ca, node, key.public_key(), validity, now)
    write_node_files(
        files, ca.cert_pem, cert.public_bytes(serialization.Encoding.PEM), private_pem(key)
    )
    if not files.crl.is_file():  # etcd takes its revocation flags only with the file
        write_public(files.crl, sign_crl(ca, []))
    return files


def _existing_key(files: NodeTlsFiles) -> ec.EllipticCurvePrivateKey | None:
    if not files.key.is_file():
        return None
    try:
        key = serialization.load_pem_private_key(read_file(files.key, "node key"), password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def needs_issuing(
    files: NodeTlsFiles, ca_cert: x509.Certificate, node: NodeSpec, margin: dt.timedelta
) -> str | None:
    """Why `node`'s files need a new certificate (None: they are fine): missing,
    from another CA, for other names, or expiring within `margin`."""
    if files.missing():
        return "no certificate yet"
    try:
        cert = load_cert(files.cert)
    except TlsError as exc:
        return str(exc)
    try:
        cert.verify_directly_issued_by(ca_cert)
        same_ca = files.ca.read_bytes() == ca_cert.public_bytes(serialization.Encoding.PEM)
    except (ValueError, TypeError, InvalidSignature, OSError):
        same_ca = False
    if not same_ca:
        return "issued by another CA"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if set(sans) != set(node_names(node)):
        return "names or address changed"
    if cert.not_valid_after_utc - utcnow() < margin:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return None
