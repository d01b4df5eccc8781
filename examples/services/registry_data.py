"""The Domain Registry's data in ninefold's key-value store: what the reTHINK
server's HypertyService, DataObjectService and storage clients do, on keys.

Keys (each id turned into one key segment by `part`):

    registry/hyperty/<hyperty>           the user the hyperty belongs to: hyperty
                                         ids are global, and creating this key
                                         only-if-absent is what makes an id one user's
    registry/user/<user>/<hyperty>       the hyperty (JSON, HypertyInstance's fields)
    registry/guid/<guid>                 the user who last registered a new hyperty
                                         with this guid (as the guid table)
    registry/email/<email>/<user>        a user whose id ends in this email
    registry/dataobject/<url>            the data object (JSON)
    registry/do-name/<name>/<url>        indexes of data objects by name and by
    registry/do-reporter/<reporter>/<url>  reporter (a stale entry is ignored)
    registry/updated/hyperty/<hyperty>   what went from some status to
    registry/updated/dataobject/<url>    `disconnected` since the last
                                         GET /registry/updated (and was not
                                         updated since), as it was then

Nothing is ever removed (the real server soft-deletes: a deleted or expired
record stays, with status `disconnected`). A record is changed by
read-modify-write with compare-and-swap on its revision, so replicas that
touch the same hyperty at once do not lose each other's writes.

Errors that the Java server turns into 404 {"message": "Not Found"} raise
NotFound here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from registry_cache import CachedKv
from registry_kv import Conflict, Item
from registry_records import (
    DEAD,
    LIVE,
    email_of,
    expired,
    matches,
    now_text,
    search_terms,
)

ROOT = "registry/"
CAS_TRIES = 20


class NotFound(Exception):
    """The Java server's DataNotFound, UserNotFound, HypertiesNotFound,
    CouldNotCreateOrUpdate... exceptions: all answered 404 Not Found."""


def part(text: str) -> str:
    """An id as one key segment: ASCII letters, digits, '-' and '.' stay (not a
    leading '.'), any other byte becomes _XX, so `user://a.com/x` ->
    `user_3A_2F_2Fa.com_2Fx`. Injective, and never contains '/'."""
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if (char.isascii() and char.isalnum()) or char == "-" or (char == "." and i > 0):
            out.append(char)
        else:
            out.append(f"_{byte:02X}")
    return "".join(out) or "_"


def owner_key(hyperty: str) -> str:
    return f"{ROOT}hyperty/{part(hyperty)}"


def user_prefix(user: str) -> str:
    return f"{ROOT}user/{part(user)}/"


def hyperty_key(user: str, hyperty: str) -> str:
    return user_prefix(user) + part(hyperty)


def guid_key(guid: str) -> str:
    return f"{ROOT}guid/{part(guid)}"


def email_prefix(email: str) -> str:
    return f"{ROOT}email/{part(email)}/"


def object_key(url: str) -> str:
    return f"{ROOT}dataobject/{part(url)}"


def index_prefix(kind: str, value: str) -> str:
    return f"{ROOT}do-{kind}/{part(value)}/"


def updated_key(kind: str, ident: str) -> str:
    return f"{ROOT}updated/{kind}/{part(ident)}"


Record = dict[str, Any]
Versioned = tuple[Record, int]


def _decode(item: Item) -> Versioned:
    return json.loads(item.value), item.revision


class Registry:
    """The operations of the REST routes, on the store."""

    def __init__(self, kv: CachedKv) -> None:
        self.kv = kv

    # --- reading -----------------------------------------------------------------------

    async def _one(self, key: str) -> Versioned | None:
        item = await self.kv.get(key)
        return None if item is None else _decode(item)

    async def owner(self, hyperty: str) -> str | None:
        item = await self.kv.get(owner_key(hyperty))
        return None if item is None else item.value

    async def user_hyperties(self, user: str) -> list[Versioned]:
        return [_decode(i) for i in await self.kv.list(user_prefix(user))]

    async def hyperty(self, hyperty: str) -> Versioned | None:
        user = await self.owner(hyperty)
        return None if user is None else await self._one(hyperty_key(user, hyperty))

    # --- changing a record -------------------------------------------------------------

    async def _change(
        self,
        key: str,
        current: Versioned | None,
        change: Callable[[Record | None], Record | None],
    ) -> tuple[Record | None, Record | None]:
        """Write change(record) over the record at key by compare-and-swap,
        starting from `current` (None: read it), re-reading after a lost race.
        change returns None to write nothing. (old, new) records."""
        for _ in range(CAS_TRIES):
            if current is None:
                current = await self._one(key)
            old, revision = current if current is not None else (None, 0)
            new = change(old)
            if new is None:
                return old, old
            try:
                await self.kv.put(key, json.dumps(new, separators=(",", ":")), cas=revision)
            except Conflict:
                current = None
                continue
            return old, new
        raise Conflict(key)

    async def _disconnect(
        self, key: str, kind: str, ident: str, current: Versioned, if_expired: bool = False
    ) -> Record:
        """The soft delete (RamClient/CassandraClient.deleteUserHyperty and
        deleteDataObject): status `disconnected`, noted for /registry/updated
        when it was something else. With if_expired, only while the record
        (as re-read after a lost race) has expired. The record after."""

        def dead(old: Record | None) -> Record | None:
            if old is None or old.get("status") == DEAD or (if_expired and not expired(old)):
                return None
            return {**old, "status": DEAD}

        old, new = await self._change(key, current, dead)
        if new is not None and old is not new:
            await self.kv.put(updated_key(kind, ident), json.dumps(new, separators=(",", ":")))
        return new if new is not None else current[0]

    async def _expire(self, key: str, kind: str, ident: str, current: Versioned) -> Record:
        """deleteExpiredHyperties / checkAndDeleteExpired for one record."""
        record = current[0]
        if record.get("status") == DEAD or not expired(record):
            return record
        return await self._disconnect(key, kind, ident, current, if_expired=True)

    async def _expire_hyperties(self, found: list[Versioned]) -> list[Record]:
        return list(
            await asyncio.gather(
                *(
                    self._expire(
                        hyperty_key(r["userID"], r["hypertyID"]), "hyperty", r["hypertyID"], (r, v)
                    )
                    for r, v in found
                )
            )
        )

    async def _forget_updated(self, kind: str, ident: str, old: Record | None) -> None:
        """An update takes a record out of /registry/updated (checkUpdatedHyperties);
        only one that was disconnected can be in it."""
        if old is not None and old.get("status") == DEAD:
            await self.kv.delete(updated_key(kind, ident))

    # --- hyperties ---------------------------------------------------------------------

    async def create_hyperty(self, user: str, hyperty: str, fields: Record) -> None:
        """PUT /hyperty/user/:user/:hyperty (HypertyService.createUserHyperty):
        a new id becomes this user's; the user's own is replaced (startingTime
        kept); another user's is NotFound."""
        now = now_text()

        def replace(old: Record | None) -> Record:
            started = old["startingTime"] if old else now
            return {
                **fields,
                "hypertyID": hyperty,
                "userID": user,
                "startingTime": started,
                "lastModified": now,
            }

        key = hyperty_key(user, hyperty)
        mine = await self._one(key)  # a re-registration, the usual case: 2 calls
        if mine is not None:
            old, _ = await self._change(key, mine, replace)
            await self._forget_updated("hyperty", hyperty, old)
            return
        for _ in range(CAS_TRIES):
            owner = await self.owner(hyperty)
            if owner is None:
                try:
                    await self.kv.put(owner_key(hyperty), user, cas=0)
                except Conflict:
                    continue  # another request took the id meanwhile
                owner = user
                indexes: list[Awaitable[int]] = [
                    self.kv.put(email_prefix(email_of(user)) + part(user), user)
                ]
                if fields.get("guid") is not None:
                    indexes.append(self.kv.put(guid_key(fields["guid"]), user))
                await asyncio.gather(*indexes)
            if owner != user:
                raise NotFound(hyperty)
            old, _ = await self._change(key, None, replace)
            await self._forget_updated("hyperty", hyperty, old)
            return
        raise Conflict(hyperty)

    async def hyperty_by_url(self, hyperty: str) -> Record:
        """GET /hyperty/url/:id (getHypertyByUrl), expired ones disconnected."""
        user = await self.owner(hyperty)
        found = None if user is None else await self._one(hyperty_key(user, hyperty))
        if found is None or user is None:
            raise NotFound(hyperty)
        return await self._expire(hyperty_key(user, hyperty), "hyperty", hyperty, found)

    async def touch_hyperty(self, hyperty: str, fields: Record | None) -> bool:
        """PUT /hyperty/url/:id: with no fields the keep-alive (status live),
        else those fields changed (updateHypertyFields). Whether the status changed."""
        user = await self.owner(hyperty)
        if user is None:
            raise NotFound(hyperty)
        now = now_text()

        def change(old: Record | None) -> Record | None:
            if old is None:
                return None
            new = {**old, "lastModified": now}
            new.update({"status": LIVE} if fields is None else fields)
            return new

        old, _ = await self._change(hyperty_key(user, hyperty), None, change)
        if old is None:
            raise NotFound(hyperty)
        await self._forget_updated("hyperty", hyperty, old)
        status = LIVE if fields is None else fields.get("status")
        return status is not None and old.get("status") != status

    async def delete_hyperty(self, user: str, hyperty: str) -> None:
        """DELETE /hyperty/user/:user/:hyperty: NotFound unless the user has
        hyperties and this is one of them; then the soft delete."""
        for record, revision in await self.user_hyperties(user):
            if record["hypertyID"] == hyperty:
                await self._disconnect(
                    hyperty_key(user, hyperty), "hyperty", hyperty, (record, revision)
                )
                return
        raise NotFound(hyperty)

    async def hyperties_of(self, user: str) -> list[Record]:
        """A user's hyperties, expired ones disconnected; NotFound for none."""
        found = await self.user_hyperties(user)
        if not found:
            raise NotFound(user)
        return await self._expire_hyperties(found)

    async def hyperties_by_guid(self, guid: str) -> list[Record]:
        item = await self.kv.get(guid_key(guid))
        if item is None:
            raise NotFound(guid)
        return await self.hyperties_of(item.value)

    async def hyperties_by_email(self, email: str) -> list[Record]:
        users = [i.value for i in await self.kv.list(email_prefix(email))]
        lists = await asyncio.gather(*(self.user_hyperties(u) for u in users))
        found = [v for one in lists for v in one]
        if not found:
            raise NotFound(email)
        return await self._expire_hyperties(found)

    # --- data objects ------------------------------------------------------------------

    async def create_data_object(self, url: str, fields: Record) -> None:
        """PUT /hyperty/dataobject/:url: create, or replace keeping startingTime."""
        now = now_text()

        def replace(old: Record | None) -> Record:
            started = old["startingTime"] if old else now
            return {**fields, "url": url, "startingTime": started, "lastModified": now}

        old, new = await self._change(object_key(url), None, replace)
        assert new is not None
        await self._index(url, old, new)
        await self._forget_updated("dataobject", url, old)

    async def _index(self, url: str, old: Record | None, new: Record) -> None:
        for kind in ("name", "reporter"):
            await self.kv.put(index_prefix(kind, str(new[kind])) + part(url), "")
            if old is not None and old.get(kind) != new[kind]:
                await self.kv.delete(index_prefix(kind, str(old[kind])) + part(url))

    async def touch_data_object(self, url: str, fields: Record | None) -> None:
        """PUT /dataobject/url/:url: keep-alive without fields, else an update."""
        now = now_text()

        def change(old: Record | None) -> Record | None:
            if old is None:
                return None
            new = {**old, "lastModified": now}
            new.update({"status": LIVE} if fields is None else fields)
            return new

        old, new = await self._change(object_key(url), None, change)
        if old is None or new is None:
            raise NotFound(url)
        if fields is not None:
            await self._index(url, old, new)
        await self._forget_updated("dataobject", url, old)

    async def data_object(self, url: str) -> Record:
        found = await self._one(object_key(url))
        if found is None:
            raise NotFound(url)
        return await self._expire(object_key(url), "dataobject", url, found)

    async def data_objects_by(self, kind: str, value: str) -> list[Record]:
        """By `name` or `reporter` (getDataObjectsByName/ByHyperty), expired
        ones disconnected; NotFound for none."""
        urls = [i.key.rsplit("/", 1)[1] for i in await self.kv.list(index_prefix(kind, value))]
        items = await asyncio.gather(*(self.kv.get(f"{ROOT}dataobject/{u}") for u in urls))
        found = [_decode(i) for i in items if i is not None]
        found = [(r, v) for r, v in found if r.get(kind) == value]
        if not found:
            raise NotFound(value)
        return list(
            await asyncio.gather(
                *(
                    self._expire(object_key(r["url"]), "dataobject", r["url"], (r, v))
                    for r, v in found
                )
            )
        )

    # --- notifications, status, expiry -------------------------------------------------

    async def take_updated(self) -> dict[str, Record]:
        """GET /registry/updated: what was disconnected since the last call
        (hyperties by id, then data objects by url), each forgotten as taken."""
        items = await self.kv.list_through(f"{ROOT}updated/")
        taken: dict[str, Record] = {}
        for kind in ("hyperty", "dataobject"):
            for item in items:
                if not item.key.startswith(f"{ROOT}updated/{kind}/"):
                    continue
                try:
                    await self.kv.delete(item.key, cas=item.revision)
                except Conflict:
                    continue  # disconnected again meanwhile: for the next call
                record = json.loads(item.value)
                ident = record["hypertyID"] if kind == "hyperty" else record["url"]
                taken[ident] = record
        return taken

    async def count_hyperties(self) -> int:
        return len(await self.kv.list(f"{ROOT}hyperty/"))

    async def sweep(self) -> int:
        """The HeartBeatThread's pass: disconnect every expired hyperty and
        data object. How many it disconnected."""
        hyperties = [_decode(i) for i in await self.kv.list(f"{ROOT}user/")]
        objects = [_decode(i) for i in await self.kv.list(f"{ROOT}dataobject/")]
        count = 0
        for record, revision in hyperties:
            if record.get("status") != DEAD and expired(record):
                key = hyperty_key(record["userID"], record["hypertyID"])
                await self._expire(key, "hyperty", record["hypertyID"], (record, revision))
                count += 1
        for record, revision in objects:
            if record.get("status") != DEAD and expired(record):
                await self._expire(object_key(record["url"]), "dataobject", record["url"],
                                   (record, revision))  # fmt: skip
                count += 1
        return count


def search(records: list[Record], params: Mapping[str, str]) -> list[Record]:
    """AdvancedSearch over records."""
    terms = search_terms(params)
    return [r for r in records if matches(r, terms)]
