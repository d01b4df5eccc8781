"""A service's access policy (`services.<name>.access`): which requests the
gateways let through to it, judged by a JSON Web Token and roles per path.

```yaml
access:
  jwt:
    keys: [/etc/shop/issuer.pem]     # or jwks: /etc/shop/jwks.json
    issuer: https://login.example
    audience: shop
  rules:
    - {path: /admin, roles: [ROLE_ADMIN]}
    - {path: /, roles: [ROLE_USER, ROLE_ADMIN]}
```

Only the shape is checked here: the key files are read by each gateway when it
loads the policy (the spec is also validated on machines that do not have
them). How requests are judged is in gateway/access.py and docs/gateway.md.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic import model_validator as _model_validator

from ninefold import defaults

from .duration import Duration
from .errors import Problem

if TYPE_CHECKING:
    from .routing import RouteSpec

ALGORITHMS = ("RS256", "ES256")
"""Signature algorithms a policy may accept: public-key ones only."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _absolute_path(value: str) -> str:
    if "\0" in value:
        raise ValueError("a file path must not contain a NUL character")
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path (the gateways read it on every node)")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
"""A file on the nodes that use it, named by its absolute path."""

_PLAIN = re.compile(r"[!$-&(-\[\]-~]+")  # printable ASCII but space " # ' and \


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a string, got {str(value).lower()} (quote it)")
    if isinstance(value, int | float):
        return str(value)
    return value


def _plain(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not _PLAIN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid {what} (printable, no spaces, quotes, '#' or '\\')"
            )
        return value

    return AfterValidator(check)


Role = Annotated[str, BeforeValidator(_text), _plain("role")]
Issuer = Annotated[str, _plain("issuer")]
Audience = Annotated[str, _plain("audience")]

_CLAIM = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")
_HEADER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "cookie",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)


def _claim(value: str) -> str:
    if not _CLAIM.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a claim name (letters, digits, '_' and '-'; "
            "'a.b' for claim b inside claim a)"
        )
    return value


def _header(value: str) -> str:
    if not _HEADER.fullmatch(value):
        raise ValueError(f"{value!r} is not a header name (letters, digits and '-')")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{value} is a header the gateway sets or reads itself; pick another")
    return value


def _rule_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not a path prefix (start it with /)")
    if not _PLAIN.fullmatch(value) or "?" in value:
        raise ValueError(f"{value!r} is not a path prefix (no spaces, quotes, '?', '#' or '\\')")
    return value


class JwtSpec(_Model):
    """How a request's bearer token is verified."""

    keys: list[AbsolutePath] | None = None
    """PEM files, each a public key or a certificate (RSA for RS256, EC P-256 for ES256)."""
    jwks: AbsolutePath | None = None
    """A JSON Web Key Set file (RFC 7517), instead of `keys`."""
    algorithms: list[str] = Field(default_factory=lambda: list(ALGORITHMS))
    """Accepted `alg` values of the token's header."""
    issuer: Issuer | None = None
    """Required `iss`; None: not checked."""
    audience: Audience | None = None
    """Required in `aud`; None: `aud` is not checked."""
    leeway: Duration = defaults.ACCESS_JWT_LEEWAY
    """Clock skew allowed on exp, nbf and iat."""
    roles_claim: Annotated[str, AfterValidator(_claim)] = defaults.ACCESS_ROLES_CLAIM
    subject_header: Annotated[str, AfterValidator(_header)] = defaults.ACCESS_SUBJECT_HEADER

    @field_validator("keys")
    @classmethod
    def _some_keys(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("name at least one key file (or use jwks)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"name at least one algorithm ({', '.join(ALGORITHMS)})")
        seen: set[str] = set()
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("'none' is never accepted: tokens must be signed")
            if alg.upper().startswith("HS"):
                raise ValueError(
                    f"{alg} is refused: a shared secret would be the key every gateway "
                    f"holds; use {' or '.join(ALGORITHMS)}"
                )
            if alg not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg!r} (allowed: {', '.join(ALGORITHMS)})")
            if alg in seen:
                raise ValueError(f"{alg} is listed twice")
            seen.add(alg)
        return value

    @_model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.keys is None) == (self.jwks is None):
            raise ValueError("give either keys (PEM files) or jwks (a JWK Set file)")
        return self

    def key_files(self) -> list[str]:
        """The files the gateway reads: the PEM files, or the JWK Set."""
        return list(self.keys) if self.keys is not None else [self.jwks or ""]


class AccessRule(_Model):
    """Requests whose path starts with `path` need one of `roles`."""

    path: Annotated[str, AfterValidator(_rule_path)]
    roles: list[Role] = Field(min_length=1)

    @property
    def prefix(self) -> str:
        """The path without a trailing slash (`/` stays `/`)."""
        return self.path.rstrip("/") or "/"


class AccessSpec(_Model):
    """A JWT required on every request to the service, and roles per path prefix
    (the longest matching prefix decides; no matching rule: any valid token)."""

    jwt: JwtSpec
    rules: list[AccessRule] = []

    def problems(self, route: RouteSpec | None) -> list[Problem]:
        """Rules spanning the policy and its service's route (locations are
        relative to the service)."""
        out: list[Problem] = []
        if route is None or route.mode != "http":
            what = "has no route" if route is None else "has a tcp route"
            out.append(
                Problem(
                    ("access",),
                    f"access needs an http route (route: {{http: /...}}); the service {what}",
                )
            )
        first: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.prefix in first:
                msg = f"prefix {rule.prefix} is also rules[{first[rule.prefix]}]"
                out.append(Problem(("access", "rules", i, "path"), msg))
            first.setdefault(rule.prefix, i)
        return out
