"""Tokens in the store: their records under `tokens/<id>` and the one-time
bootstrap mark. What a token may do is decided in security/tokens.py."""

from __future__ import annotations

from ninefold.security.tokens import Kind, TokenError, TokenRecord, check, new_token, parse_token
from ninefold.state.keys import BOOTSTRAPPED, TOKENS, token_key
from ninefold.store.base import Compare, KeyValue, Put, Store


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
