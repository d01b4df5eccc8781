"""The public keys an access policy verifies tokens with, read from the files
its spec names: PEM public keys or certificates, or a JSON Web Key Set.

Reading is blocking file I/O: the gateway does it in a thread, once per
policy change. Every problem is a `KeyFileError` with a one-line message that
names the file (never a key's bytes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ninefold.spec.access import JwtSpec

RSA_MIN_BITS = 2048
KEY_FILE_MAX = 1 << 20
"""Larger key files are refused (a JWK Set of a few keys is a few KiB)."""

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyFileError(ValueError):
    """A key file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class VerifyKey:
    """One public key and the algorithm it verifies."""

    algorithm: str
    """RS256 or ES256."""
    pem: bytes = field(repr=False)
    """SubjectPublicKeyInfo PEM (what HAProxy's jwt_verify reads)."""
    kid: str | None = None
    source: str = ""
    """The file it came from, for messages."""
    key: Any = field(default=None, compare=False, repr=False)
    """The cryptography public key object."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.pem).hexdigest()[:16]


def load_keys(spec: JwtSpec) -> tuple[VerifyKey, ...]:
    """The keys of `spec` that verify one of its algorithms (KeyFileError if none
    does, or a file cannot be read or used)."""
    if spec.keys is not None:
        keys = tuple(_pem_key(Path(path), spec.algorithms) for path in spec.keys)
    else:
        keys = _jwks_keys(Path(spec.jwks or ""), spec.algorithms)
    return keys


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > KEY_FILE_MAX:
            raise KeyFileError(f"{path}: {size} bytes, too large for a key file")
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file on this node") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except PermissionError:
        raise KeyFileError(f"{path}: not readable by the agent (permission denied)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None


def _pem_key(path: Path, algorithms: list[str]) -> VerifyKey:
    data = _read(path)
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path}: is a private key; give the issuer's public key")
    key: Any
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM public key or certificate") from None
    return _verify_key(key, algorithms, str(path), None)


def _verify_key(key: Any, algorithms: list[str], source: str, kid: str | None) -> VerifyKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise KeyFileError(
                f"{source}: RSA key of {key.key_size} bits, at least {RSA_MIN_BITS} needed"
            )
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"{source}: EC key on {key.curve.name}; ES256 needs P-256")
        alg = "ES256"
    else:
        raise KeyFileError(f"{source}: a {type(key).__name__}; only RSA and EC P-256 keys")
    if alg not in algorithms:
        raise KeyFileError(
            f"{source}: a key for {alg}, but algorithms allows only {', '.join(algorithms)}"
        )
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return VerifyKey(alg, pem, kid, source, key)


def _jwks_keys(path: Path, algorithms: list[str]) -> tuple[VerifyKey, ...]:
    try:
        doc = json.loads(_read(path))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f'{path}: not JSON (a JWK Set is {{"keys": [...]}})') from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'{path}: not a JWK Set (no "keys" list)')
    keys: list[VerifyKey] = []
    for i, entry in enumerate(entries):
        key = _jwk(entry, f"{path} keys[{i}]", algorithms)
        if key is not None:
            keys.append(key)
    if not keys:
        raise KeyFileError(
            f"{path}: no usable key (RSA or EC P-256, use 'sig', for {', '.join(algorithms)})"
        )
    return tuple(keys)


def _jwk(entry: Any, source: str, algorithms: list[str]) -> VerifyKey | None:
    """The entry's public key, or None for entries that are not for verifying
    one of `algorithms` (other key types, encryption keys, other algorithms)."""
    if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", None) not in (None, *algorithms):
        return None
    public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    try:
        key = jwt.PyJWK(public).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        raise KeyFileError(f"{source}: not a valid {entry.get('kty')} key") from None
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):  # pragma: no cover
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        return None
    kid = entry.get("kid")
    try:
        return _verify_key(key, algorithms, source, kid if isinstance(kid, str) else None)
    except KeyFileError:
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_BITS:
            raise
        return None  # a key for an algorithm the policy does not accept
