"""The Domain Registry's records and rules, as pure functions (no I/O).

What the reTHINK server (github.com/reTHINK-project/dev-registry-domain,
server/src/main/java/domainregistry) decides, written out so that
registry_data.py only has to read and write the store:

- the fields of a hyperty and of a data object, in the order Gson writes them,
  and which of them a creation must carry (RequestValidParams.java);
- when a record has expired (Dates.java: whole seconds, strictly more than
  `expires` since `lastModified`);
- the advanced search (AdvancedSearch.java: a record matches when it holds
  every listed resource and data scheme);
- how the Java server cuts a request URL into ids (`req.url().split("/")`,
  Java's split dropping trailing empty strings, URLDecoder per segment).
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

DEAD = "disconnected"
LIVE = "live"

HYPERTY_FIELDS = (
    "resources",
    "dataSchemes",
    "descriptor",
    "startingTime",
    "hypertyID",
    "userID",
    "lastModified",
    "status",
    "expires",
    "guid",
    "runtime",
    "p2pRequester",
    "p2pHandler",
)
"""HypertyInstance.java's fields, in Gson's order (it leaves out nulls)."""
HYPERTY_REQUIRED = ("expires", "dataSchemes", "resources", "runtime", "status", "descriptor")
"""A hyperty creation without one of these is answered 400 (extra keys are fine)."""
HYPERTY_SETTABLE = (
    "descriptor",
    "expires",
    "resources",
    "dataSchemes",
    "status",
    "runtime",
    "p2pRequester",
    "p2pHandler",
    "guid",
)
"""What a client may set; ids and times come from the path and the clock."""

DATA_OBJECT_FIELDS = (
    "schema",
    "url",
    "reporter",
    "name",
    "status",
    "startingTime",
    "resources",
    "dataSchemes",
    "lastModified",
    "expires",
    "runtime",
    "p2pRequester",
)
"""DataObjectInstance.java's fields, in Gson's order."""
DATA_OBJECT_REQUIRED = (
    "schema",
    "name",
    "reporter",
    "resources",
    "dataSchemes",
    "status",
    "expires",
    "runtime",
)
DATA_OBJECT_SETTABLE = (*DATA_OBJECT_REQUIRED, "p2pRequester")

LISTS = frozenset({"resources", "dataSchemes"})
EXPIRES_DEFAULT_MAX = 3600


def expires_max() -> int:
    """EXPIRES_MAX as the Java server reads it: a larger `expires` is cut to it."""
    raw = os.environ.get("EXPIRES_MAX", "").strip()
    return int(raw) if raw.lstrip("-").isdigit() else EXPIRES_DEFAULT_MAX


# --- dates: "yyyy-MM-dd'T'HH:mm:ss'Z'", whole seconds, UTC --------------------------------


def now_text(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def seconds_of(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def expired(record: Mapping[str, Any], now: float | None = None) -> bool:
    """Dates.dateCompare(now, lastModified) > expires, in whole seconds; so
    `expires: 0` lasts until the next second."""
    current = int(time.time() if now is None else now)
    try:
        age = current - seconds_of(record["lastModified"])
    except (KeyError, TypeError, ValueError):
        return True
    return age > int(record.get("expires") or 0)


def all_disconnected(records: Iterable[Mapping[str, Any]]) -> bool:
    """HypertyService.allHypertiesAreUnavailable (true for none at all)."""
    return all(r.get("status") == DEAD for r in records)


# --- bodies ------------------------------------------------------------------------------


def parse_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None."""
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _bad_value(name: str, value: Any) -> bool:
    if name == "expires":
        return isinstance(value, bool) or not isinstance(value, int)
    if name in LISTS:
        return not isinstance(value, list) or not all(isinstance(v, str) for v in value)
    return not isinstance(value, str)


def problems(
    body: Mapping[str, Any], required: Iterable[str], settable: Iterable[str]
) -> list[str]:
    """What is wrong with a body: missing required keys (the Java server's
    400), then values of the wrong JSON type (where Gson would fail: 500 there)."""
    missing = [f"missing {name}" for name in required if name not in body]
    wrong = [
        f"{name} has the wrong type"
        for name in settable
        if name in body and body[name] is not None and _bad_value(name, body[name])
    ]
    return missing + wrong


def settable_fields(body: Mapping[str, Any], settable: Iterable[str]) -> dict[str, Any]:
    """The settable keys of a body that are not null (Gson drops nulls)."""
    return {name: body[name] for name in settable if body.get(name) is not None}


def capped(fields: dict[str, Any]) -> dict[str, Any]:
    """A creation's `expires` cut to EXPIRES_MAX (0 and negatives stay)."""
    limit = expires_max()
    if isinstance(fields.get("expires"), int) and fields["expires"] > limit:
        return {**fields, "expires": limit}
    return fields


def ordered(record: Mapping[str, Any], order: Iterable[str]) -> dict[str, Any]:
    return {name: record[name] for name in order if record.get(name) is not None}


def hyperty_view(record: Mapping[str, Any], with_user: bool = True) -> dict[str, Any]:
    """A hyperty as the Java server writes it. The Cassandra store it runs on
    fills `userID` when it reads one hyperty by id (GET /hyperty/url/..., the
    email search) and not in a user's list (user, guid, /registry/updated)."""
    view = ordered(record, HYPERTY_FIELDS)
    if not with_user:
        view.pop("userID", None)
    return view


def data_object_view(record: Mapping[str, Any]) -> dict[str, Any]:
    return ordered(record, DATA_OBJECT_FIELDS)


# --- advanced search ---------------------------------------------------------------------


def java_split(text: str, sep: str) -> list[str]:
    """Java's String.split: no match gives [text]; trailing empty strings go."""
    if sep not in text:
        return [text]
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def search_terms(params: Mapping[str, str]) -> set[str]:
    """AdvancedSearch.getQueryParams: `r.<resource>` and `s.<scheme>` terms."""
    terms = set()
    if "resources" in params:
        terms |= {"r." + v for v in java_split(params["resources"], ",")}
    if "dataSchemes" in params:
        terms |= {"s." + v for v in java_split(params["dataSchemes"], ",")}
    return terms


def matches(record: Mapping[str, Any], terms: set[str]) -> bool:
    held = {"r." + v for v in record.get("resources") or []}
    held |= {"s." + v for v in record.get("dataSchemes") or []}
    return terms <= held


def valid_search(params: Mapping[str, str]) -> bool:
    """HypertyController.validateQueryParams: `resources`, `dataSchemes` or
    both, nothing else, and at least one."""
    names = set(params)
    return names in ({"resources"}, {"dataSchemes"}, {"resources", "dataSchemes"})


# --- URLs --------------------------------------------------------------------------------


def query_params(target: str) -> dict[str, str]:
    """Each query parameter's first value (Spark's req.queryParams(name)),
    blank ones kept."""
    parsed = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def segments(raw_path: str) -> list[str]:
    """The decoded parts of `http://host` + raw_path as the Java server splits
    the URL: [scheme, "", host, *path parts], trailing empty parts dropped. Its
    length is what HypertyController compares with ALL_HYPERTIES_PATH_SIZE (6)."""
    parts = java_split("http://host" + raw_path, "/")
    return parts[:3] + [unquote_plus(p) for p in parts[3:]]


def email_of(user_id: str) -> str:
    """RamClient/CassandraClient.getUserEmail: the last `/` part of a user id."""
    parts = java_split(user_id, "/")
    return parts[-1] if parts else ""
