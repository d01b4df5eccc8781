"""What the routes work with: one `ApiContext` per app, set by `create_app` on
`app.state.context` and handed to a route that asks for it with a parameter
annotated `Context`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from ninefold.api.streams import EventStreams
from ninefold.spec import ClusterSpec
from ninefold.store.base import Store

CaFiles = Callable[[], tuple[Path, Path | None] | None]
"""(CA certificate, CA key or None) of this agent, or None without TLS."""
HistoryWindow = Callable[[str], Awaitable[dict[str, Any]]]
"""This node's history for a window (`15m`, `1h`, `24h`) as `GET /v1/history` answers it."""


@dataclass(frozen=True)
class ApiContext:
    """The arguments of `create_app`, for the routes of one agent's API."""

    store: Store
    spec: ClusterSpec
    """The agent's own spec: it stands in while the store holds none."""
    node: str
    """The node of the agent serving the API."""
    metrics: Callable[[], bytes] | None
    """This node's gateway metrics in Prometheus' text format, for /metrics."""
    log_dir: Path | None
    """Where this node keeps its instances' logs; None: it keeps none."""
    ca_files: CaFiles
    streams: EventStreams
    history: HistoryWindow | None = None
    """This node's history of its series (`GET /v1/history`); None: it keeps none."""


def app_context(request: Request) -> ApiContext:
    """The dependency behind `Context`."""
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(app_context)]
"""A route's parameter `ctx: Context` receives its app's ApiContext."""
