"""`GET /v1/history`: the rolling history of a node's series (agent/history.py),
this node's or, with `scope=cluster`, every living node's, fetched from their
agents by this one (the dashboard's plots)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import httpx
from fastapi import Query, Request
from pydantic import BaseModel, Field

from ninefold.api.auth import bearer_token
from ninefold.api.context import ApiContext, Context
from ninefold.api.routing import ResourceRouter
from ninefold.history_math import WINDOWS, window_step
from ninefold.state.keys import NODES
from ninefold.state.records import NodeRecord
from ninefold.store.base import StoreError

router = ResourceRouter()


class HistorySeries(BaseModel):
    kind: str = Field(description="node, service or volume")
    subject: str = Field(description="the node, the service, or `service/volume to TARGET`")
    metric: str = Field(
        description="cpu_ratio, memory_ratio, requests_per_second, errors_per_second, "
        "p99_seconds, healthy_instances, lag_seconds"
    )
    values: list[float | None] = Field(description="one per time; null: no value then")


class NodeHistory(BaseModel):
    node: str
    window: str
    seconds: float = Field(description="the window's length")
    interval: float | None = Field(description="how often the node samples (null: it keeps none)")
    step: float | None = Field(description="the width of a point")
    time: float | None = Field(description="the node's clock when it answered")
    times: list[float] = Field(description="the start of each point's step, oldest first")
    series: list[HistorySeries]
    memory_bytes: int = Field(description="what the node's ring buffers take")


class Unreachable(BaseModel):
    node: str
    error: str


class ClusterHistory(BaseModel):
    window: str
    step: float
    nodes: list[NodeHistory] = Field(description="this node's first, then the others by name")
    unreachable: list[Unreachable]


FAN_OUT_TIMEOUT = 3.0
"""How long the other agents have to answer a `scope=cluster` request."""

Window = Literal["15m", "1h", "24h"]


@router.operation(
    "GET",
    "/v1/history",
    role="read",
    tag="reading",
    model=NodeHistory | ClusterHistory,
    errors=[422, 503],
)
async def history(
    ctx: Context,
    request: Request,
    window: Annotated[Window, Query(description="how far back: 15m, 1h or 24h")] = "15m",
    scope: Annotated[
        Literal["node", "cluster"],
        Query(description="node: this agent's series; cluster: every living node's"),
    ] = "node",
) -> dict[str, Any]:
    """This node's history (`scope=node`): `{"node", "window", "seconds", "interval",
    "step", "time", "times": [...], "series": [{"kind", "subject", "metric",
    "values": [...]}], "memory_bytes"}`; with `scope=cluster`, `{"window",
    "nodes": [one such answer per node], "unreachable": [{"node", "error"}]}`."""
    if scope == "node":
        return await own_window(ctx, window)
    return await cluster_window(ctx, request, window)


async def own_window(ctx: ApiContext, window: str) -> dict[str, Any]:
    if ctx.history is not None:
        return await ctx.history(window)
    seconds = WINDOWS[window]
    return {  # an agent that keeps no history (an API without its agent)
        "node": ctx.node,
        "window": window,
        "seconds": seconds,
        "interval": None,
        "step": None,
        "time": None,
        "times": [],
        "series": [],
        "memory_bytes": 0,
    }


async def cluster_window(ctx: ApiContext, request: Request, window: str) -> dict[str, Any]:
    """Every living node's answer; this one's from here, the others' over HTTP
    with the caller's token, all at once, each within FAN_OUT_TIMEOUT."""
    unreachable: list[dict[str, str]] = []
    try:
        listing = await ctx.store.list(NODES)
        records = [NodeRecord.decode(item.value) for item in listing.items]
    except StoreError as exc:
        records = []
        unreachable.append({"node": "*", "error": f"store: {exc}"})
    others = sorted((r for r in records if r.name != ctx.node), key=lambda r: r.name)
    token = bearer_token(request)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: Any = True
    scheme = "http"
    if ctx.spec.security.tls is not None:
        from ninefold.security.files import TlsError
        from ninefold.security.tls import client_context

        scheme = "https"
        files = ctx.ca_files()
        try:
            ca = files[0] if files is not None else ctx.spec.security.tls.ca_path()
            verify = await asyncio.to_thread(client_context, ca)
        except TlsError as exc:
            for record in others:
                unreachable.append({"node": record.name, "error": str(exc)})
            others = []
    answers: list[dict[str, Any]] = [await own_window(ctx, window)]
    async with httpx.AsyncClient(
        timeout=FAN_OUT_TIMEOUT, verify=verify, trust_env=False, headers=headers
    ) as client:

        async def fetch(record: NodeRecord) -> dict[str, Any]:
            host = f"[{record.address}]" if ":" in record.address else record.address
            url = f"{scheme}://{host}:{record.api_port}/v1/history"
            answer = await client.get(url, params={"window": window, "scope": "node"})
            answer.raise_for_status()
            body: dict[str, Any] = answer.json()
            return body

        results = await asyncio.gather(*(fetch(r) for r in others), return_exceptions=True)
    for record, result in zip(others, results, strict=True):
        if isinstance(result, BaseException):
            unreachable.append({"node": record.name, "error": describe(result)})
        else:
            answers.append(result)
    return {
        "window": window,
        "step": window_step(WINDOWS[window], answers[0]["interval"] or 10.0),
        "nodes": answers,
        "unreachable": unreachable,
    }


def describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"answered {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__
