"""Certificate revocation: a revocation list (CRL) signed by the cluster CA.

Why a CRL rather than short-lived certificates with renewal: every mTLS port
ninefold runs can check one file. etcd reads `--client-crl-file` and
`--peer-crl-file` on every handshake; OpenSSL (the agent's API, the mesh, the
volume listener) checks a CRL loaded next to the CA, and the servers load it
again when the file changes. Short-lived certificates would need the CA key
online on every renewal path and make a dead CA-holding node a cluster-wide
outage within one certificate lifetime; a CRL needs the key only at the
moment someone is quarantined.

The list is kept in the store (`security/crl`, state/keys.py); every agent
writes it into its node's `tls/crl.pem`. A node's files get an empty list when
its certificate is issued, so etcd starts with the flags from the first boot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ninefold.security.ca import CertificateAuthority, utcnow
from ninefold.security.files import TlsError

CRL_VALIDITY = dt.timedelta(days=3650)
"""A CRL's next update: OpenSSL refuses every handshake once a loaded CRL is
past it, so it is as far out as the CA itself (a new list replaces it anyway)."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """One revoked certificate."""

    serial: int
    at: float
    """When (unix seconds)."""


def sign_crl(
    ca: CertificateAuthority, revoked: Iterable[Revoked], now: dt.datetime | None = None
) -> bytes:
    """A PEM revocation list of `revoked`, signed by the CA (empty: none revoked)."""
    start = (now or utcnow()) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(start)
        .next_update(start + CRL_VALIDITY)
    )
    for item in sorted(revoked, key=lambda r: r.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.serial)
            .revocation_date(dt.datetime.fromtimestamp(item.at, dt.UTC))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def revoked_serials(crl_pem: bytes) -> set[int]:
    """The serial numbers a PEM CRL lists (TlsError if it is not one)."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise TlsError("the revocation list is not a PEM CRL") from None
    return {item.serial_number for item in crl}


def check_crl(crl_pem: bytes, ca_cert: x509.Certificate) -> None:
    """TlsError unless `crl_pem` is a CRL signed by `ca_cert` (what an agent
    checks before it writes one from the store over its node's file)."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise TlsError("the revocation list is not a PEM CRL") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise TlsError("the revocation list is not signed by the cluster CA")


def cert_serial(cert_pem: bytes) -> int:
    """The serial number of a PEM certificate (TlsError if it is not one)."""
    try:
        return x509.load_pem_x509_certificate(cert_pem).serial_number
    except ValueError:
        raise TlsError("not a PEM certificate") from None
