"""Access policies judged without a gateway: keys from PEM files and JWK Sets,
every refusal (no token, bad signature, alg none, HS256 with the public key,
expired, not yet valid, wrong issuer or audience, missing role, a role for
another prefix) and every success, by `authorize` directly.

`Issuer` and `policy_spec` are shared with the gateway tests (test_access_gateway.py).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ninefold.gateway import access
from ninefold.gateway.access import AccessPolicy, Allow, Deny, authorize, has_prefix
from ninefold.gateway.jwt_keys import KeyFileError, load_keys
from ninefold.spec.access import AccessSpec, JwtSpec

ISSUER = "https://login.example"
AUDIENCE = "shop"


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """A token issuer: an RSA 2048 and an EC P-256 key (generated once per test
    run), their public keys as PEM files in `directory`, and tokens signed with
    them, or forged."""

    def __init__(self, directory: Path) -> None:
        self.rsa = _rsa_key()
        self.ec = _ec_key()
        self.rsa_pem = directory / "issuer-rsa.pem"
        self.ec_pem = directory / "issuer-ec.pem"
        self.rsa_pem.write_bytes(public_pem(self.rsa))
        self.ec_pem.write_bytes(public_pem(self.ec))
        self.directory = directory

    def claims(self, **claims: Any) -> dict[str, Any]:
        """Valid claims for the test policy, changed by `claims` (None drops one)."""
        now = int(time.time())
        base: dict[str, Any] = {
            "sub": "alice",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "authorities": ["ROLE_USER"],
        }
        base.update(claims)
        return {k: v for k, v in base.items() if v is not None}

    def token(
        self, alg: str = "RS256", headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        key = self.rsa if alg.startswith("RS") else self.ec
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers=headers)

    def unsigned(self, **claims: Any) -> str:
        """alg none: no signature at all."""
        head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        return f"{head}.{body}."

    def hs256_with_public_key(self, **claims: Any) -> str:
        """Algorithm confusion: HMAC-SHA256 keyed with the issuer's public PEM."""
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        mac = hmac.new(self.rsa_pem.read_bytes(), f"{head}.{body}".encode(), hashlib.sha256)
        return f"{head}.{body}.{_b64(mac.digest())}"

    def forged(self, **claims: Any) -> str:
        """RS256 signed by another key."""
        return jwt.encode(self.claims(**claims), _other_rsa_key(), algorithm="RS256")

    def jwks(self, name: str = "jwks.json", extra: list[dict[str, Any]] | None = None) -> Path:
        keys = []
        for kid, key, alg in (("r1", self.rsa, "RS256"), ("e1", self.ec, "ES256")):
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        path = self.directory / name
        path.write_text(json.dumps({"keys": keys + (extra or [])}))
        return path


def policy_spec(source: Issuer, /, **jwt_fields: Any) -> AccessSpec:
    """The test policy: both keys, issuer and audience checked; /admin needs
    ROLE_ADMIN, /orders ROLE_USER or ROLE_ADMIN, anything else any valid token."""
    fields: dict[str, Any] = {
        "keys": [str(source.rsa_pem), str(source.ec_pem)],
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    fields.update(jwt_fields)
    return AccessSpec.model_validate(
        {
            "jwt": {k: v for k, v in fields.items() if v is not None},
            "rules": [
                {"path": "/admin", "roles": ["ROLE_ADMIN"]},
                {"path": "/orders", "roles": ["ROLE_USER", "ROLE_ADMIN"]},
            ],
        }
    )


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


@pytest.fixture
def policy(issuer: Issuer) -> AccessPolicy:
    loaded = AccessPolicy.load("shop", policy_spec(issuer))
    assert loaded.error is None
    return loaded


def bearer(token: str) -> list[bytes]:
    return [f"Bearer {token}".encode()]


# --- refusals ------------------------------------------------------------------------


def refusal(issuer: Issuer, case: str) -> tuple[list[bytes], str, Deny]:
    """(Authorization values, path, expected refusal) of each refusal case."""
    expired = int(time.time()) - 100  # beyond the 30 s leeway
    cases: dict[str, tuple[list[bytes], str, Deny]] = {
        "no token": ([], "/", Deny(401, access.NO_TOKEN)),
        "basic auth": ([b"Basic YTpi"], "/", Deny(401, access.NO_TOKEN)),
        "two tokens": (
            bearer(issuer.token()) * 2,
            "/",
            Deny(400, access.MANY_TOKENS, "invalid_request"),
        ),
        "not a jwt": (bearer("abc"), "/", Deny(401, access.MALFORMED, "invalid_token")),
        "bad signature": (
            bearer(issuer.forged()),
            "/",
            Deny(401, access.BAD_SIGNATURE, "invalid_token"),
        ),
        "alg none": (
            bearer(issuer.unsigned()),
            "/",
            Deny(401, access.BAD_ALGORITHM, "invalid_token"),
        ),
        "hs256 with the public key": (
            bearer(issuer.hs256_with_public_key()),
            "/",
            Deny(401, access.BAD_ALGORITHM, "invalid_token"),
        ),
        "expired": (
            bearer(issuer.token(exp=expired)),
            "/",
            Deny(401, access.EXPIRED, "invalid_token"),
        ),
        "not yet valid": (
            bearer(issuer.token(nbf=int(time.time()) + 100)),
            "/",
            Deny(401, access.NOT_YET_VALID, "invalid_token"),
        ),
        "issued in the future": (
            bearer(issuer.token(iat=int(time.time()) + 100)),
            "/",
            Deny(401, access.NOT_YET_VALID, "invalid_token"),
        ),
        "no exp": (
            bearer(issuer.token(exp=None)),
            "/",
            Deny(401, access.missing_claim("exp"), "invalid_token"),
        ),
        "wrong issuer": (
            bearer(issuer.token(iss="https://evil.example")),
            "/",
            Deny(401, access.WRONG_ISSUER, "invalid_token"),
        ),
        "no issuer": (
            bearer(issuer.token(iss=None)),
            "/",
            Deny(401, access.missing_claim("iss"), "invalid_token"),
        ),
        "wrong audience": (
            bearer(issuer.token(aud="other")),
            "/",
            Deny(401, access.WRONG_AUDIENCE, "invalid_token"),
        ),
        "wrong audiences": (
            bearer(issuer.token(aud=["a", "b"])),
            "/",
            Deny(401, access.WRONG_AUDIENCE, "invalid_token"),
        ),
        "subject with a newline": (
            bearer(issuer.token(sub="alice\r\nX-Admin: yes")),
            "/",
            Deny(401, access.bad_claim("sub"), "invalid_token"),
        ),
        "missing role": (
            bearer(issuer.token()),
            "/admin/users",
            Deny(403, access.MISSING_ROLE, "insufficient_scope", ("ROLE_ADMIN",)),
        ),
        "no roles at all": (
            bearer(issuer.token(authorities=None)),
            "/orders",
            Deny(403, access.MISSING_ROLE, "insufficient_scope", ("ROLE_USER", "ROLE_ADMIN")),
        ),
        "role for another prefix": (
            bearer(issuer.token(authorities=["ROLE_USER"])),
            "/admin",
            Deny(403, access.MISSING_ROLE, "insufficient_scope", ("ROLE_ADMIN",)),
        ),
        "dot segments": (
            bearer(issuer.token()),
            "/orders/../admin",
            Deny(400, access.BAD_PATH_TEXT, "invalid_request"),
        ),
        "encoded letter": (
            bearer(issuer.token()),
            "/%61dmin",
            Deny(400, access.BAD_PATH_TEXT, "invalid_request"),
        ),
        "double slash": (
            bearer(issuer.token()),
            "//admin",
            Deny(400, access.BAD_PATH_TEXT, "invalid_request"),
        ),
    }
    return cases[case]


REFUSALS = [
    "no token",
    "basic auth",
    "two tokens",
    "not a jwt",
    "bad signature",
    "alg none",
    "hs256 with the public key",
    "expired",
    "not yet valid",
    "issued in the future",
    "no exp",
    "wrong issuer",
    "no issuer",
    "wrong audience",
    "wrong audiences",
    "subject with a newline",
    "missing role",
    "no roles at all",
    "role for another prefix",
    "dot segments",
    "encoded letter",
    "double slash",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals(issuer: Issuer, policy: AccessPolicy, case: str) -> None:
    authorization, path, expected = refusal(issuer, case)
    assert authorize(policy, authorization, path) == expected


@pytest.mark.parametrize(
    ("token", "description"),
    [
        (lambda issuer: issuer.token(sub=42), access.bad_claim("sub")),
        (lambda issuer: issuer.token(jti=7), access.bad_claim("jti")),
        (lambda issuer: _b64(b'{"alg": "RS256"}') + ".@@@.abc", access.MALFORMED),
    ],
    ids=["subject not a string", "jti not a string", "payload not base64url"],
)
def test_pyjwt_errors_without_a_top_level_name_are_described(
    issuer: Issuer, policy: AccessPolicy, token: Any, description: str
) -> None:
    """PyJWT raises these from jwt.exceptions only: they once reached an
    AttributeError (jwt.InvalidSubjectError) instead of a 401."""
    assert authorize(policy, bearer(token(issuer)), "/") == Deny(401, description, "invalid_token")


def test_alg_none_is_refused_even_when_pyjwt_would_accept_it(
    issuer: Issuer, policy: AccessPolicy
) -> None:
    # the token itself is well formed: PyJWT decodes it when told to skip checks
    token = issuer.unsigned()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "alice"
    assert authorize(policy, bearer(token), "/") == Deny(401, access.BAD_ALGORITHM, "invalid_token")


def test_hs256_confusion_is_refused_even_if_hs256_were_listed_internally(
    issuer: Issuer, policy: AccessPolicy
) -> None:
    """The HMAC token verifies with the public PEM as secret; only the policy's
    algorithm list (never HS*) and key types stand in the way."""
    token = issuer.hs256_with_public_key()
    head, body, sig = token.split(".")
    mac = hmac.new(issuer.rsa_pem.read_bytes(), f"{head}.{body}".encode(), hashlib.sha256)
    assert _b64(mac.digest()) == sig
    # no key of the policy is for HS256, whatever a forged policy might list
    assert {k.algorithm for k in policy.keys} == {"RS256", "ES256"}
    assert authorize(policy, bearer(token), "/").status == 401  # type: ignore[union-attr]


def test_expired_within_leeway_passes_beyond_fails(issuer: Issuer, policy: AccessPolicy) -> None:
    now = int(time.time())
    assert isinstance(authorize(policy, bearer(issuer.token(exp=now - 10)), "/"), Allow)
    strict = AccessPolicy.load("shop", policy_spec(issuer, leeway=0))
    assert authorize(strict, bearer(issuer.token(exp=now - 10)), "/").description == "token expired"  # type: ignore[union-attr]


# --- successes -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_valid_tokens_pass_with_their_subject(
    issuer: Issuer, policy: AccessPolicy, alg: str
) -> None:
    token = issuer.token(alg, sub=f"user-{alg}")
    assert authorize(policy, bearer(token), "/anything") == Allow(f"user-{alg}")


def test_roles_any_of_and_the_longest_prefix_decides(issuer: Issuer, policy: AccessPolicy) -> None:
    admin = bearer(issuer.token(authorities=["ROLE_ADMIN"]))
    user = bearer(issuer.token(authorities=["ROLE_USER", "ROLE_OTHER"]))
    assert isinstance(authorize(policy, admin, "/orders/1"), Allow)  # any of two
    assert isinstance(authorize(policy, user, "/orders/1"), Allow)
    assert isinstance(authorize(policy, admin, "/admin?x=1"), Allow)
    assert isinstance(authorize(policy, user, "/administrator"), Allow)  # not /admin
    assert isinstance(authorize(policy, user, "/admin;jsessionid=1"), Deny)  # /admin


def test_no_matching_rule_takes_any_valid_token(issuer: Issuer, policy: AccessPolicy) -> None:
    assert isinstance(authorize(policy, bearer(issuer.token(authorities=[])), "/public"), Allow)


def test_role_claim_layouts(issuer: Issuer) -> None:
    spec = policy_spec(issuer, roles_claim="realm_access.roles")
    nested = AccessPolicy.load("shop", spec)
    token = issuer.token(realm_access={"roles": ["ROLE_ADMIN"]}, authorities=None)
    assert isinstance(authorize(nested, bearer(token), "/admin"), Allow)
    single = AccessPolicy.load("shop", policy_spec(issuer))
    one = issuer.token(authorities="ROLE_ADMIN")
    assert isinstance(authorize(single, bearer(one), "/admin"), Allow)


def test_scheme_is_case_insensitive(issuer: Issuer, policy: AccessPolicy) -> None:
    assert isinstance(authorize(policy, [b"bearer  " + issuer.token().encode()], "/"), Allow)


def test_audience_and_issuer_optional(issuer: Issuer) -> None:
    loose = AccessPolicy.load("shop", policy_spec(issuer, issuer=None, audience=None))
    token = issuer.token(iss="anyone", aud="anything")
    assert isinstance(authorize(loose, bearer(token), "/"), Allow)
    assert isinstance(authorize(loose, bearer(issuer.token(aud=["x", AUDIENCE])), "/"), Allow)


def test_jwks_keys_and_kid_hint(issuer: Issuer) -> None:
    path = issuer.jwks(extra=[{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}])
    policy = AccessPolicy.load("shop", policy_spec(issuer, keys=None, jwks=str(path)))
    assert policy.error is None
    assert sorted((k.kid, k.algorithm) for k in policy.keys) == [("e1", "ES256"), ("r1", "RS256")]
    for alg, kid in (("RS256", "r1"), ("ES256", "e1"), ("RS256", "unknown")):
        token = issuer.token(alg, headers={"kid": kid})
        assert isinstance(authorize(policy, bearer(token), "/"), Allow), (alg, kid)


# --- loading keys ------------------------------------------------------------------------


def test_key_problems_are_one_line_and_fail_closed(issuer: Issuer, tmp_path: Path) -> None:
    missing = AccessPolicy.load("shop", policy_spec(issuer, keys=[str(tmp_path / "nope.pem")]))
    assert missing.error == f"{tmp_path / 'nope.pem'}: no such file on this node"
    assert authorize(missing, bearer(issuer.token()), "/") == Deny(503, access.UNAVAILABLE)
    assert access.challenge("shop", Deny(503, access.UNAVAILABLE)) is None

    private = tmp_path / "private.pem"
    private.write_bytes(
        issuer.rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    weak = tmp_path / "weak.pem"
    weak.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(public_pem(ec.generate_private_key(ec.SECP384R1())))
    expected = {
        private: "is a private key; give the issuer's public key",
        garbage: "not a PEM public key or certificate",
        weak: "RSA key of 1024 bits, at least 2048 needed",
        p384: "EC key on secp384r1; ES256 needs P-256",
    }
    for path, message in expected.items():
        with pytest.raises(KeyFileError) as info:
            load_keys(JwtSpec(keys=[str(path)]))
        assert str(info.value) == f"{path}: {message}"
        assert "\n" not in str(info.value)
    with pytest.raises(KeyFileError, match="a key for ES256, but algorithms allows only RS256"):
        load_keys(JwtSpec(keys=[str(issuer.ec_pem)], algorithms=["RS256"]))
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    with pytest.raises(KeyFileError, match="no usable key"):
        load_keys(JwtSpec(jwks=str(empty)))


def test_certificate_files_are_keys_too(issuer: Issuer, tmp_path: Path) -> None:
    from tests.unit.test_gateway_tls import self_signed

    cert, _ = self_signed(tmp_path, "issuer", key=issuer.rsa)
    policy = AccessPolicy.load("shop", policy_spec(issuer, keys=[str(cert)]))
    assert policy.error is None
    assert isinstance(authorize(policy, bearer(issuer.token()), "/"), Allow)


def test_policies_compare_by_spec_and_keys(issuer: Issuer) -> None:
    one = AccessPolicy.load("shop", policy_spec(issuer))
    two = AccessPolicy.load("shop", policy_spec(issuer))
    assert one == two
    assert one != AccessPolicy.load("shop", policy_spec(issuer, audience="other"))


# --- answers -------------------------------------------------------------------------------


def test_challenges_follow_rfc_6750() -> None:
    assert access.challenge("shop", Deny(401, access.NO_TOKEN)) == 'Bearer realm="shop"'
    assert (
        access.challenge("shop", Deny(401, access.EXPIRED, "invalid_token"))
        == 'Bearer realm="shop", error="invalid_token", error_description="token expired"'
    )
    deny = Deny(403, access.MISSING_ROLE, "insufficient_scope", ("ROLE_A", "ROLE_B"))
    assert access.challenge("shop", deny) == (
        'Bearer realm="shop", error="insufficient_scope", error_description="missing role", '
        'scope="ROLE_A ROLE_B"'
    )
    assert access.body("shop", deny) == {
        "error": "forbidden",
        "service": "shop",
        "detail": "missing role",
    }
    for text in (access.BAD_PATH_TEXT, access.MANY_TOKENS, access.MALFORMED):
        assert '"' not in text and "\\" not in text  # fits a quoted-string as is


def test_prefix_boundaries() -> None:
    assert has_prefix("/admin", "/admin")
    assert has_prefix("/admin/x", "/admin")
    assert has_prefix("/admin?x", "/admin")
    assert has_prefix("/admin;x", "/admin")
    assert not has_prefix("/administrator", "/admin")
    assert has_prefix("/anything", "/")


@pytest.mark.parametrize(
    "path",
    ["/a/./b", "/a/..", "/..;/admin", "/a//b", "/a\\b", "/%2e%2e/x", "/a%2Fb", "/%5c", "/%7e"],
)
def test_ambiguous_paths_are_refused(issuer: Issuer, policy: AccessPolicy, path: str) -> None:
    deny = authorize(policy, bearer(issuer.token()), path)
    assert deny == Deny(400, access.BAD_PATH_TEXT, "invalid_request")


@pytest.mark.parametrize("path", ["/a.b/c", "/..a", "/a/...", "/%20x", "/%3F", "/a?x=..//"])
def test_ordinary_paths_pass(issuer: Issuer, policy: AccessPolicy, path: str) -> None:
    assert isinstance(authorize(policy, bearer(issuer.token()), path), Allow)


# --- verified tokens ---------------------------------------------------------------------


def test_a_token_is_verified_once_then_only_its_times(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = AccessPolicy.load("shop", policy_spec(issuer, leeway=0))
    calls = []
    decode = jwt.decode
    monkeypatch.setattr(access.jwt, "decode", lambda *a, **kw: calls.append(1) or decode(*a, **kw))
    now = time.time()
    token = issuer.token(exp=int(now) + 2)
    assert authorize(strict, bearer(token), "/") == Allow("alice")
    assert authorize(strict, bearer(token), "/orders") == Allow("alice")
    assert authorize(strict, bearer(token), "/admin").status == 403  # type: ignore[union-attr]
    assert len(calls) == 1  # the signature was checked once
    monkeypatch.setattr(access.time, "time", lambda: now + 10)
    assert authorize(strict, bearer(token), "/") == Deny(401, access.EXPIRED, "invalid_token")
    assert token not in strict.verified


def test_only_successes_are_kept_and_at_most_so_many(
    issuer: Issuer, policy: AccessPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access.defaults, "ACCESS_TOKEN_CACHE", 3)
    for case in (
        "bad signature",
        "alg none",
        "expired",
        "wrong audience",
        "subject with a newline",
    ):
        authorization, path, _ = refusal(issuer, case)
        authorize(policy, authorization, path)
    assert policy.verified == {}
    tokens = [issuer.token(sub=f"user-{i}") for i in range(5)]
    for token in tokens:
        assert isinstance(authorize(policy, bearer(token), "/"), Allow)
    assert list(policy.verified) == tokens[2:]
