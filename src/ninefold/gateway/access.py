"""Judging a request by a service's access policy: pure, no I/O.

`AccessPolicy.load` reads the keys (gateway/jwt_keys.py) once per policy
change; `authorize(policy, authorization, path)` then decides each request:

- ``Allow(subject)``: pass it on, with the token's verified ``sub`` (or None)
  in the policy's subject header;
- ``Deny``: answer it from the gateway: 400 (a malformed request or a path
  the rules could be fooled by), 401 (no token, or a token that is not
  valid), 403 (a valid token without a role the path needs), 503 (the policy
  could not be loaded: fail closed).

The token is verified with PyJWT against the policy's own list of algorithms
(never ``none`` nor an HMAC one, so a public key can never be used as a shared
secret), its keys, ``exp`` (required), ``nbf`` and ``iat`` if present,
``iss`` and ``aud`` when the policy names them, all with the policy's leeway.
Descriptions are a fixed set of short phrases, the same in both engines
(docs/gateway.md lists them).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from ninefold import defaults
from ninefold.gateway.jwt_keys import KeyFileError, VerifyKey, load_keys
from ninefold.spec.access import AccessRule, AccessSpec

BAD_PATH = re.compile(
    r"(^|/)\.{1,2}(/|;|$)|//|\\|%(00|2[dDeEfF]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[cCfF]|7[eE])"
)
"""Paths refused (400) on a service with a policy: dot segments (also `..;`),
`//`, backslashes, and percent-encoded `/`, `\\`, NUL or characters that need no
encoding. An instance could read any of them as another path than the one
the rules judged (`/public/../admin`, `/%61dmin`, `//admin`). HAProxy uses
the same expression (PCRE reads it the same way)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Descriptions of refusals: the same words in both engines.
NO_TOKEN = "no bearer token"
MANY_TOKENS = "more than one Authorization header"
MALFORMED = "malformed token"
BAD_ALGORITHM = "algorithm not allowed"
BAD_SIGNATURE = "bad signature"
EXPIRED = "token expired"
NOT_YET_VALID = "token not yet valid"
WRONG_ISSUER = "wrong issuer"
WRONG_AUDIENCE = "wrong audience"
MISSING_ROLE = "missing role"
BAD_PATH_TEXT = "path not allowed (dot segment, //, backslash or needless %-encoding)"
UNAVAILABLE = "access policy unavailable"


def missing_claim(claim: str) -> str:
    return f"missing claim: {claim}"


def bad_claim(claim: str) -> str:
    return f"bad claim: {claim}"


@dataclass(frozen=True, slots=True)
class Allow:
    subject: str | None
    """The token's verified `sub`, for the subject header (None: the token has none)."""


@dataclass(frozen=True, slots=True)
class Deny:
    status: int
    description: str
    error: str | None = None
    """RFC 6750 error code: invalid_request, invalid_token, insufficient_scope;
    None when the request carried no token at all (RFC 6750 section 3.1)."""
    scope: tuple[str, ...] = ()
    """For 403: the roles the path accepts."""


Decision = Allow | Deny


@dataclass(slots=True)
class Verified:
    """A token that passed every check once: its claims, and the times that
    decide whether it still does."""

    claims: dict[str, Any]
    exp: int
    not_before: int
    """The later of nbf and iat (0 without either)."""
    roles: frozenset[str]
    """The roles in the policy's roles claim (read once, not per request)."""


@dataclass(frozen=True, eq=False)
class AccessPolicy:
    """A service's policy with its keys loaded (or why they could not be)."""

    service: str
    spec: AccessSpec
    keys: tuple[VerifyKey, ...] = ()
    error: str | None = None
    """Why the keys could not be loaded; every request is refused then (503)."""
    rules: tuple[AccessRule, ...] = field(init=False)
    """Longest prefix first."""
    verified: dict[str, Verified] = field(init=False)
    """Tokens verified already (at most ACCESS_TOKEN_CACHE, oldest dropped
    first); only successes are kept."""

    def __post_init__(self) -> None:
        ordered = sorted(self.spec.rules, key=lambda r: -len(r.prefix))
        object.__setattr__(self, "rules", tuple(ordered))
        object.__setattr__(self, "verified", {})

    @classmethod
    def load(cls, service: str, spec: AccessSpec) -> AccessPolicy:
        """Read the keys (blocking file I/O); a key problem gives a policy that
        refuses everything, with `error` saying why in one line."""
        try:
            return cls(service, spec, load_keys(spec.jwt))
        except KeyFileError as exc:
            return cls(service, spec, (), str(exc))

    def _identity(self) -> tuple[object, ...]:
        return (self.service, self.spec, self.keys, self.error)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccessPolicy) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((self.service, self.error, self.keys))

    def rule_for(self, path: str) -> AccessRule | None:
        """The rule of the longest prefix `path` starts with (None: no rule)."""
        for rule in self.rules:
            if has_prefix(path, rule.prefix):
                return rule
        return None


def has_prefix(path: str, prefix: str) -> bool:
    """`/admin` takes `/admin`, `/admin/...`, `/admin?...` and `/admin;...`,
    not `/administrator`; `/` takes everything."""
    if prefix == "/":
        return True
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or path[len(prefix)] in "/?;"


def bearer_token(authorization: Sequence[bytes]) -> str | Deny:
    """The token of the request's `Authorization: Bearer ...` header (scheme in
    any case), or why there is none."""
    if not authorization:
        return Deny(401, NO_TOKEN)
    if len(authorization) > 1:
        return Deny(400, MANY_TOKENS, "invalid_request")
    scheme, _, token = authorization[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return Deny(401, NO_TOKEN)
    return token


def authorize(policy: AccessPolicy, authorization: Sequence[bytes], path: str) -> Decision:
    """Judge a request to `policy`'s service: its Authorization header values
    and its path (query included or not) as the instance would receive it."""
    if policy.error is not None:
        return Deny(503, UNAVAILABLE)
    bare = path.split("?", 1)[0]
    if BAD_PATH.search(bare):
        return Deny(400, BAD_PATH_TEXT, "invalid_request")
    token = bearer_token(authorization)
    if isinstance(token, Deny):
        return token
    verified = verify(policy, token)
    if isinstance(verified, Deny):
        return verified
    rule = policy.rule_for(bare)
    if rule is not None and verified.roles.isdisjoint(rule.roles):
        return Deny(403, MISSING_ROLE, "insufficient_scope", tuple(rule.roles))
    return Allow(verified.claims.get("sub"))


def verify(policy: AccessPolicy, token: str) -> Verified | Deny:
    """The token once its algorithm, signature and claims pass. A token
    verified before is only checked for its times again."""
    spec = policy.spec.jwt
    known = policy.verified.get(token)
    if known is not None:
        now = time.time()
        if known.exp <= now - spec.leeway:
            del policy.verified[token]
            return _invalid(EXPIRED)
        if known.not_before > now + spec.leeway:
            return _invalid(NOT_YET_VALID)
        return known
    claims = _verify_token(policy, token)
    if isinstance(claims, Deny):
        return claims
    subject = claims.get("sub")
    if subject is not None and _CONTROL.search(subject):
        return _invalid(bad_claim("sub"))
    cache = policy.verified
    if len(cache) >= defaults.ACCESS_TOKEN_CACHE:
        del cache[next(iter(cache))]
    times = [int(claims[c]) for c in ("nbf", "iat") if claims.get(c) is not None]
    roles = frozenset(roles_of(claims, spec.roles_claim))
    known = cache[token] = Verified(claims, int(claims["exp"]), max(times, default=0), roles)
    return known


def _verify_token(policy: AccessPolicy, token: str) -> dict[str, Any] | Deny:
    spec = policy.spec.jwt
    header = unverified_header(token)
    if header is None:
        return _invalid(MALFORMED)
    alg = header.get("alg")
    if not isinstance(alg, str):
        return _invalid(MALFORMED)
    if alg not in spec.algorithms:
        return _invalid(BAD_ALGORITHM)
    candidates = [k for k in policy.keys if k.algorithm == alg]
    kid = header.get("kid")
    if kid is not None:  # a hint: the named key first, every trusted key still counts
        candidates.sort(key=lambda k: k.kid != kid)
    required = ["exp"] + (["iss"] if spec.issuer else []) + (["aud"] if spec.audience else [])
    options: dict[str, Any] = {"require": required, "verify_aud": spec.audience is not None}
    for key in candidates:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=spec.issuer,
                audience=spec.audience,
                leeway=spec.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError as exc:
            return _invalid(_describe(exc))
    return _invalid(BAD_SIGNATURE)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def unverified_header(token: str) -> dict[str, Any] | None:
    """The token's JOSE header, only to pick its algorithm and key (PyJWT
    reads it again when it verifies); None if it is not base64url JSON.
    PyJWT's own reader checks every character in Python: twice the cost."""
    segment = token.split(".", 1)[0]
    if not _SEGMENT.fullmatch(segment):
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return None
    return header if isinstance(header, dict) else None


def _invalid(description: str) -> Deny:
    return Deny(401, description, "invalid_token")


def _describe(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return EXPIRED
    if isinstance(exc, jwt.ImmatureSignatureError):
        return NOT_YET_VALID
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return missing_claim(exc.claim)
    if isinstance(exc, jwt.InvalidIssuerError):
        return WRONG_ISSUER
    if isinstance(exc, jwt.InvalidAudienceError):
        return WRONG_AUDIENCE
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return bad_claim("iat")
    # not exported by the top-level `jwt` package (PyJWT 2.10+)
    if isinstance(exc, jwt.exceptions.InvalidSubjectError):
        return bad_claim("sub")
    if isinstance(exc, jwt.exceptions.InvalidJTIError):
        return bad_claim("jti")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return BAD_ALGORITHM
    return MALFORMED


def roles_of(claims: dict[str, Any], claim: str) -> set[str]:
    """The roles in `claim` (`a.b`: claim b inside object a): a list of
    strings, or one string for one role."""
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


# --- answers -------------------------------------------------------------------------


def challenge(service: str, deny: Deny) -> str | None:
    """The WWW-Authenticate value of a refusal (None for 503)."""
    if deny.status == 503:
        return None
    parts = [f'Bearer realm="{service}"']
    if deny.error is not None:
        parts.append(f'error="{deny.error}"')
        parts.append(f'error_description="{deny.description}"')
    if deny.scope:
        parts.append(f'scope="{" ".join(deny.scope)}"')
    return ", ".join(parts)


ERROR_WORDS = {400: "bad request", 401: "unauthorized", 403: "forbidden", 503: UNAVAILABLE}


def body(service: str, deny: Deny) -> dict[str, str]:
    """The JSON body of a refusal, like the gateway's other answers."""
    out = {"error": ERROR_WORDS[deny.status], "service": service}
    if deny.status != 503:
        out["detail"] = deny.description
    return out


def body_text(service: str, deny: Deny) -> str:
    return json.dumps(body(service, deny), separators=(", ", ": "))
