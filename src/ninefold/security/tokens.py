"""Bearer tokens: API tokens with a role, and join tokens with a number of uses.

A token reads `nf1.<id>.<secret>`: `id` names its record in the store
(`tokens/<id>`), `secret` is 32 random bytes that are never stored, only their
SHA-256. The secret is random, so a plain hash is enough (no password
stretching); comparisons are constant-time. Deciding (roles, expiry, uses) is
pure and lives here; reading and writing the records is state/tokens.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict

Role = Literal["read", "operate", "admin"]
ROLES: tuple[Role, ...] = ("read", "operate", "admin")
"""Each role may do what the ones before it may."""
Kind = Literal["api", "join"]

PREFIX = "nf1"
_FORMAT = re.compile(r"nf1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")


class TokenError(Exception):
    """A token that does not let its bearer in; the message says why, without
    repeating the token."""


class PublicToken(TypedDict):
    """A token's record without its digest."""

    id: str
    kind: Kind
    role: Role
    name: str
    created: float
    expires: float | None
    uses: int | None
    node: str


class TokenRecord(BaseModel):
    """What the store keeps of a token: never the token itself."""

    model_config = ConfigDict(extra="ignore")

    id: str
    kind: Kind = "api"
    role: Role = "read"
    name: str = ""
    digest: str
    created: float
    expires: float | None = None
    uses: int | None = None
    """Join tokens: uses left (None: unlimited)."""
    node: str = ""
    """The node the token was made for (a pool machine's join token): deleted
    when that node is quarantined."""

    def public(self) -> PublicToken:
        """The record as `token list` shows it: no digest."""
        return PublicToken(
            id=self.id,
            kind=self.kind,
            role=self.role,
            name=self.name,
            created=self.created,
            expires=self.expires,
            uses=self.uses,
            node=self.node,
        )


def role_allows(have: Role, need: Role) -> bool:
    return ROLES.index(have) >= ROLES.index(need)


def new_token(
    kind: Kind = "api",
    role: Role = "read",
    name: str = "",
    ttl: float | None = None,
    uses: int | None = None,
    now: float | None = None,
) -> tuple[str, TokenRecord]:
    """A fresh token and the record to store for it."""
    if ttl is not None and ttl <= 0:
        raise ValueError("a token's ttl must be positive")
    if uses is not None and uses < 1:
        raise ValueError("a token's uses must be at least 1")
    now = time.time() if now is None else now
    ident = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(
        id=ident,
        kind=kind,
        role=role,
        name=name,
        digest=_digest(secret),
        created=now,
        expires=now + ttl if ttl is not None else None,
        uses=uses,
    )
    return f"{PREFIX}.{ident}.{secret}", record


def parse_token(text: str) -> tuple[str, str]:
    """(id, secret) of a token; TokenError if it is not one."""
    match = _FORMAT.fullmatch(text.strip())
    if match is None:
        raise TokenError("not a ninefold token (they look like nf1.<16 hex>.<43 characters>)")
    return match.group(1), match.group(2)


def check(record: TokenRecord | None, secret: str, kind: Kind, now: float | None = None) -> None:
    """TokenError unless `secret` is the record's, of `kind`, unexpired, with uses left."""
    if record is None or not hmac.compare_digest(record.digest, _digest(secret)):
        raise TokenError("unknown or revoked token")
    if record.kind != kind:
        raise TokenError(f"a {record.kind} token cannot be used as a {kind} token")
    now = time.time() if now is None else now
    if record.expires is not None and now >= record.expires:
        raise TokenError("the token has expired")
    if record.uses is not None and record.uses < 1:
        raise TokenError("the token has been used up")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
