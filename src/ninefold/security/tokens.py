"""Bearer tokens: API tokens with a role, and join tokens with a number of uses.

A token reads `nf1.<id>.<secret>`: `id` names its record in the store
(`tokens/<id>`), `secret` is 32 random bytes that are never stored, only their
SHA-256. The secret is random, so a plain hash is enough (no password
stretching); comparisons are constant-time. Deciding (roles, expiry, uses) is
pure; the store functions at the end do the reading and writing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ninefold.store.base import Compare, KeyValue, Put, Store

Role = Literal["read", "operate", "admin"]
ROLES: tuple[Role, ...] = ("read", "operate", "admin")
"""Each role may do what the ones before it may."""
Kind = Literal["api", "join"]

TOKENS = "tokens/"
BOOTSTRAPPED = "tokens-bootstrapped"
"""Set once, with the first admin token: `bootstrap` works only before it."""
PREFIX = "nf1"
_FORMAT = re.compile(r"nf1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")


class TokenError(Exception):
    """A token that does not let its bearer in; the message says why, without
    repeating the token."""


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

    def public(self) -> dict[str, object]:
        """The record as `token list` shows it: no digest."""
        return self.model_dump(exclude={"digest"})


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


def token_key(ident: str) -> str:
    return f"{TOKENS}{ident}"


# --- in the store -------------------------------------------------------------------------


async def read_record(store: Store, ident: str) -> TokenRecord | None:
    return _record(await store.get(token_key(ident)))


def _record(item: KeyValue | None) -> TokenRecord | None:
    """A stored record; None for none, or one that is not a record (refused as unknown)."""
    if item is None:
        return None
    try:
        return TokenRecord.model_validate_json(item.value)
    except ValueError:
        return None


async def store_token(store: Store, record: TokenRecord) -> None:
    await store.put(token_key(record.id), record.model_dump_json().encode())


async def bootstrap(store: Store, name: str = "bootstrap") -> str | None:
    """The first admin token, or None when the cluster was bootstrapped before."""
    token, record = new_token("api", "admin", name)
    result = await store.txn(
        [Compare(BOOTSTRAPPED, "create", "==", 0)],
        [Put(BOOTSTRAPPED, b"1"), Put(token_key(record.id), record.model_dump_json().encode())],
    )
    return token if result.succeeded else None


async def authenticate(store: Store, token: str, kind: Kind = "api") -> TokenRecord:
    """The record of a valid token; TokenError otherwise."""
    return (await read_token(store, token, kind))[0]


async def read_token(store: Store, token: str, kind: Kind) -> tuple[TokenRecord, int]:
    """The record of a valid token of `kind` and its mod revision (to spend a
    use with `spend`); TokenError otherwise."""
    ident, secret = parse_token(token)
    item = await store.get(token_key(ident))
    record = _record(item)
    check(record, secret, kind)
    assert record is not None and item is not None
    return record, item.mod_revision


def spend(record: TokenRecord, mod_revision: int) -> tuple[TokenRecord, Compare, Put]:
    """A join token's record with one use less, and the compare and put that
    store it unless the record changed since `mod_revision` (so two joins at
    once cannot both take the last use). A used-up token stays, with 0 uses,
    so that it is refused as such."""
    left = record if record.uses is None else record.model_copy(update={"uses": record.uses - 1})
    key = token_key(record.id)
    return (
        left,
        Compare(key, "mod", "==", mod_revision),
        Put(key, left.model_dump_json().encode()),
    )


async def consume_join_token(store: Store, token: str, attempts: int = 5) -> TokenRecord:
    """Check a join token and use it once."""
    for _ in range(attempts):
        record, revision = await read_token(store, token, "join")
        if record.uses is None:
            return record
        left, compare, put = spend(record, revision)
        if (await store.txn([compare], [put])).succeeded:
            return left
    raise TokenError("the token is being used by other joins; try again")


async def list_records(store: Store) -> list[TokenRecord]:
    records = [_record(item) for item in (await store.list(TOKENS)).items]
    return [r for r in records if r is not None]


async def revoke(store: Store, ident: str) -> bool:
    return bool(await store.delete(token_key(ident)))
