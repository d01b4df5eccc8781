"""Alerts: `GET /v1/alerts` (the alerts the leader evaluated, firing and
pending first), `POST /v1/alerts/{id}/ack` (no repeat until it resolves or
the ack expires), and silences: `POST /v1/silences`, `GET /v1/silences`,
`DELETE /v1/silences/{id}`. docs/alerts.md."""

from __future__ import annotations

import re
import secrets
import time
from typing import Annotated, Any

from fastapi import Body, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter
from ninefold.decide.alerts import Ack, AlertState, Silence
from ninefold.spec.duration import parse_duration
from ninefold.state.keys import (
    ALERT_STATES,
    SILENCES,
    ack_key,
    event_key,
    silence_key,
)
from ninefold.state.records import Event
from ninefold.store.base import Compare, Put

router = ResourceRouter()

ORDER = {"firing": 0, "pending": 1, "resolved": 2}
MAX_EXPIRY = 366 * 86400.0


def _expiry(value: Any) -> float:
    seconds = parse_duration(value)
    if not 0 < seconds <= MAX_EXPIRY:
        raise ValueError("must be more than 0 and at most 366 days (8784h)")
    return seconds


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matchers: dict[str, str] = Field(
        min_length=1,
        description="label -> value (`*` and `?` wildcards); an alert whose labels match "
        "every one is silenced, e.g. {alertname: node-down, node: n2}",
    )
    expires: str | float = Field(description="how long it lasts: `2h`, `30m` or seconds")
    comment: str = ""
    by: str = Field("", description="who silenced it")

    @field_validator("matchers")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
                raise ValueError(f"{name!r} is not a label name")
        return value

    @field_validator("expires")
    @classmethod
    def _expires(cls, value: str | float) -> float:
        return _expiry(value)


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires: str | float = Field(
        "24h", description="how long repeats stop at most: `4h` or seconds"
    )
    comment: str = ""
    by: str = ""

    @field_validator("expires")
    @classmethod
    def _expires(cls, value: str | float) -> float:
        return _expiry(value)


async def _journal(ctx: Context, kind: str, subject: str, reason: str, **data: Any) -> None:
    event = Event(kind=kind, subject=subject, reason=reason, node=ctx.node, data=data)
    await ctx.store.put(event_key(event.time, ctx.node), event.encode())


@router.operation(
    "GET", "/v1/alerts", role="read", tag="alerts", model=list[AlertState], errors=[503]
)
async def alerts(
    ctx: Context,
    resolved: Annotated[bool, Query(description="also the recently resolved ones")] = False,
) -> list[AlertState]:
    """The alerts the leader evaluated: firing, then pending (then resolved)."""
    out = []
    for item in (await ctx.store.list(ALERT_STATES)).items:
        try:
            state = AlertState.decode(item.value)
        except ValueError:
            continue
        if resolved or state.state != "resolved":
            out.append(state)
    out.sort(key=lambda s: (ORDER[s.state], -(s.fired_at or s.active_since), s.rule))
    return out


async def _find_alert(ctx: Context, ident: str) -> AlertState:
    """The alert with id `ident` or the one whose id begins with it."""
    found = []
    for item in (await ctx.store.list(ALERT_STATES)).items:
        try:
            state = AlertState.decode(item.value)
        except ValueError:
            continue
        if state.id == ident:
            return state
        if len(ident) >= 4 and state.id.startswith(ident):
            found.append(state)
    if len(found) == 1:
        return found[0]
    if found:
        raise operations.Invalid(f"{ident!r} names {len(found)} alerts: give more of its id")
    raise operations.NotFound(f"no alert {ident!r} (`ninefold alerts list` shows them)")


@router.operation(
    "POST",
    "/v1/alerts/{ident}/ack",
    role="operate",
    tag="alerts",
    model=Ack,
    errors=[404, 409, 422, 503],
)
async def ack(ctx: Context, ident: str, body: Annotated[AckIn, Body()]) -> Ack:
    """Acknowledge a firing alert: no repeat notice until it resolves or `expires` passes."""
    state = await _find_alert(ctx, ident)
    if state.state != "firing":
        raise operations.Conflict(f"alert {state.id} ({state.rule}) is {state.state}, not firing")
    now = time.time()
    assert isinstance(body.expires, float)
    record = Ack(alert=state.id, until=now + body.expires, at=now, comment=body.comment, by=body.by)
    guard = Compare(f"{ALERT_STATES}{state.id}", "version", ">", 0)
    result = await ctx.store.txn([guard], [Put(ack_key(state.id), record.encode())])
    if not result.succeeded:
        raise operations.Conflict(f"alert {state.id} ended meanwhile")
    await _journal(ctx, "alert-acked", state.rule, state.text, alert=state.id, by=body.by)
    return record


@router.operation(
    "POST",
    "/v1/silences",
    role="operate",
    tag="alerts",
    model=Silence,
    status_code=201,
    errors=[422, 503],
)
async def silence(ctx: Context, body: Annotated[SilenceIn, Body()]) -> Silence:
    """Hold back the notices of every alert matching all the matchers until it expires."""
    now = time.time()
    assert isinstance(body.expires, float)
    record = Silence(
        id=secrets.token_hex(4),
        matchers=body.matchers,
        starts_at=now,
        ends_at=now + body.expires,
        comment=body.comment,
        created_by=body.by,
    )
    await ctx.store.put(silence_key(record.id), record.encode())
    said = ",".join(f"{k}={v}" for k, v in sorted(body.matchers.items()))
    await _journal(ctx, "alert-silenced", said, body.comment, silence=record.id, by=body.by)
    return record


@router.operation(
    "GET", "/v1/silences", role="read", tag="alerts", model=list[Silence], errors=[503]
)
async def silences(ctx: Context) -> list[Silence]:
    """The silences in force, the one ending first first."""
    now = time.time()
    out = []
    for item in (await ctx.store.list(SILENCES)).items:
        try:
            record = Silence.decode(item.value)
        except ValueError:
            continue
        if record.ends_at > now:
            out.append(record)
    return sorted(out, key=lambda s: s.ends_at)


@router.operation(
    "DELETE",
    "/v1/silences/{ident}",
    role="operate",
    tag="alerts",
    model=Silence,
    errors=[404, 503],
)
async def unsilence(ctx: Context, ident: str) -> Silence:
    """End a silence now."""
    item = await ctx.store.get(silence_key(ident))
    if item is None:
        raise operations.NotFound(f"no silence {ident!r} (`ninefold alerts silences` lists them)")
    record = Silence.decode(item.value)
    await ctx.store.delete(silence_key(ident))
    said = ",".join(f"{k}={v}" for k, v in sorted(record.matchers.items()))
    await _journal(ctx, "alert-unsilenced", said, "", silence=ident)
    return record
