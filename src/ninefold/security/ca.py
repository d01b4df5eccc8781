"""The cluster's certificate authority: one EC P-256 key and a self-signed
certificate, made by `ninefold init` and kept where the operator says.

Only the CLI generates keys (never the agent's event loop)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ninefold.security.files import TlsError, read_file, write_private, write_public

CA_VALIDITY = dt.timedelta(days=3650)
"""How long a cluster CA is valid (ten years: rotating it is not supported yet)."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The cluster CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_pem(self.key)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(
    cluster: str, validity: dt.timedelta = CA_VALIDITY, now: dt.datetime | None = None
) -> CertificateAuthority:
    """A new CA named after the cluster."""
    key = new_key()
    start = (now or utcnow()) - dt.timedelta(minutes=5)  # a little clock skew
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ninefold"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ninefold {cluster} cluster CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def ca_cert_path(key_path: Path) -> Path:
    """Where the CA certificate goes next to its key: `ca.key` -> `ca.crt`."""
    return key_path.with_suffix(".crt")


def ca_key_path(cert_path: Path) -> Path:
    """Where the CA key is looked for by default: `ca.crt` -> `ca.key`."""
    return cert_path.with_suffix(".key")


def write_ca(ca: CertificateAuthority, key_path: Path, cert_path: Path) -> None:
    """Write the key (mode 0600, never over an existing file) and the certificate."""
    write_private(key_path, ca.key_pem, overwrite=False)
    write_public(cert_path, ca.cert_pem)


def load_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(read_file(path, what))
    except ValueError:
        raise TlsError(f"{path} is not a PEM certificate") from None


def load_ca_cert(cert_path: Path) -> x509.Certificate:
    return load_cert(cert_path, "cluster CA certificate")


def load_ca(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """The CA from its files; TlsError (one line) when they are missing or do not match."""
    cert = load_ca_cert(cert_path)
    data = read_file(key_path, "cluster CA key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{key_path} is not an EC key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise TlsError(f"{key_path} is not the key of the CA certificate {cert_path}")
    return CertificateAuthority(cert, key)


def fingerprint(pem: bytes) -> str:
    """`sha256:<hex>` of a certificate's DER form: what `join --ca-hash` checks.
    ValueError if `pem` is not a PEM certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
