"""Measured availability: `GET /v1/availability` (every routed service) and
`GET /v1/availability/{service}`: over 1 h, 24 h and 30 days, in % and in
nines, the downtime, and the incidents with their causes, from the nodes'
route probes and their gateways' counts (docs/availability.md)."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter
from ninefold.decide.availability import (
    DownInterval,
    NodeObservation,
    ServiceAvailability,
    Traffic,
    coverage,
    service_availability,
)
from ninefold.spec import ClusterSpec
from ninefold.state.keys import (
    AVAILABILITY,
    AVAILABILITY_DOWN,
    AVAILABILITY_PROBING,
    AVAILABILITY_TRAFFIC,
    NODES,
    last_segment,
)
from ninefold.state.reads import read_events, read_spec
from ninefold.state.records import DownRecord, ProbingRecord, TrafficRecord
from ninefold.store.base import KeyValue

router = ResourceRouter()


class WindowOut(BaseModel):
    availability_percent: float | None = Field(description="null: nothing observed in it")
    nines: float | None = Field(
        description="-log10(unavailability), at most log10(observed_seconds / 0.5)"
    )
    downtime_seconds: float
    observed_seconds: float = Field(description="how much of the window a node was probing")
    requests_answered: int = Field(description="client requests the gateways answered")
    requests_failed: int = Field(description="client requests answered 5xx or not at all")
    request_success_percent: float | None = Field(description="null: no client request")


class IncidentOut(BaseModel):
    start: float
    end: float | None = Field(description="null: it goes on")
    duration_seconds: float
    cause: str
    ongoing: bool


class ServiceAvailabilityOut(BaseModel):
    service: str
    windows: dict[str, WindowOut] = Field(description="by window: 1h, 24h, 30d")
    incidents: list[IncidentOut] = Field(description="the last 30 days', oldest first")
    observers: list[str] = Field(description="the nodes probing it now")


class AvailabilityOut(BaseModel):
    time: float
    services: list[ServiceAvailabilityOut]


def _routed(spec: ClusterSpec) -> list[str]:
    return sorted(name for name, service in spec.services.items() if service.route is not None)


@router.operation(
    "GET", "/v1/availability", role="read", tag="reading", model=AvailabilityOut, errors=[503]
)
async def availability(ctx: Context) -> AvailabilityOut:
    """Every service with a route: its availability over 1 h, 24 h, 30 d and its incidents."""
    spec = await read_spec(ctx.store, ctx.spec)
    return await _measure(ctx, _routed(spec))


@router.operation(
    "GET",
    "/v1/availability/{service}",
    role="read",
    tag="reading",
    model=AvailabilityOut,
    errors=[404, 409, 503],
)
async def service_availability_route(ctx: Context, service: str) -> AvailabilityOut:
    """One service's availability (404: no such service; 409: it has no route to measure)."""
    spec = await read_spec(ctx.store, ctx.spec)
    if service not in spec.services:
        known = ", ".join(sorted(spec.services)) or "none"
        raise operations.NotFound(f"no service named {service!r} (services: {known})")
    if spec.services[service].route is None:
        raise operations.Conflict(
            f"service {service!r} has no route: availability is measured on routes "
            "(route: in the spec)"
        )
    return await _measure(ctx, [service])


async def _measure(ctx: Context, services: list[str]) -> AvailabilityOut:
    if len(services) == 1:  # only its records
        items = []
        for prefix in (AVAILABILITY_DOWN, AVAILABILITY_PROBING, AVAILABILITY_TRAFFIC):
            items += (await ctx.store.list(f"{prefix}{services[0]}/")).items
    else:
        items = (await ctx.store.list(AVAILABILITY)).items
    alive = {last_segment(i.key) for i in (await ctx.store.list(NODES)).items}
    events = await read_events(ctx.store, 0)
    now = time.time()
    out = []
    for service in services:
        observations, traffic = _records(items, service, alive, now)
        measured = service_availability(service, observations, events, traffic, now)
        out.append(_out(measured, now))
    return AvailabilityOut(time=now, services=out)


def _records(
    items: list[KeyValue], service: str, alive: set[str], now: float
) -> tuple[list[NodeObservation], list[Traffic]]:
    spans: dict[str, ProbingRecord] = {}
    downs: dict[str, list[DownInterval]] = {}
    traffic: list[Traffic] = []
    for item in items:
        for prefix in (AVAILABILITY_DOWN, AVAILABILITY_PROBING, AVAILABILITY_TRAFFIC):
            if item.key.startswith(prefix):
                rest = item.key[len(prefix) :]
                break
        else:
            continue
        if not rest.startswith(f"{service}/"):
            continue
        try:
            if prefix == AVAILABILITY_PROBING:
                probing = ProbingRecord.decode(item.value)
                spans[probing.node] = probing
            elif prefix == AVAILABILITY_DOWN:
                down = DownRecord.decode(item.value)
                downs.setdefault(down.node, []).append(
                    DownInterval(
                        node=down.node, first_failed=down.first_failed,
                        last_failed=down.last_failed, last_ok=down.last_ok,
                        first_ok=down.first_ok, error=down.error,
                    )
                )  # fmt: skip
            else:
                counted = TrafficRecord.decode(item.value)
                traffic += [
                    Traffic(start, answered, failed, seconds)
                    for start, seconds, answered, failed in counted.buckets()
                ]
        except ValueError:
            continue
    observations = [
        NodeObservation(
            node,
            coverage(record.spans, record.open, node in alive, now, record.written_at),
            tuple(downs.get(node, [])),
        )
        for node, record in sorted(spans.items())
    ]
    return observations, traffic


def _out(measured: ServiceAvailability, now: float) -> ServiceAvailabilityOut:
    windows = {
        name: WindowOut(
            availability_percent=w.availability_percent,
            nines=w.nines,
            downtime_seconds=w.downtime_seconds,
            observed_seconds=w.observed_seconds,
            requests_answered=w.requests_answered,
            requests_failed=w.requests_failed,
            request_success_percent=w.request_success_percent,
        )
        for name, w in measured.windows.items()
    }
    incidents = [
        IncidentOut(
            start=round(i.start, 3),
            end=None if i.end is None else round(i.end, 3),
            duration_seconds=round(i.duration(now), 3),
            cause=i.cause,
            ongoing=i.end is None,
        )
        for i in measured.incidents
    ]
    return ServiceAvailabilityOut(
        service=measured.service, windows=windows, incidents=incidents,
        observers=measured.observers,
    )  # fmt: skip
