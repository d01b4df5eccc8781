"""The API's routers, one per resource; `create_app` serves them in this order.

The dashboard's router is not here: it is served only when its files are."""

from ninefold.api import join
from ninefold.api.routes import (
    alerts,
    availability,
    backups,
    events,
    health,
    history,
    instances,
    kv,
    logs,
    metrics,
    nodes,
    restores,
    services,
    spec,
    status,
    tokens,
    volumes,
)
from ninefold.api.routing import ResourceRouter

ROUTERS: tuple[ResourceRouter, ...] = (
    health.router,
    status.router,
    nodes.router,
    services.router,
    instances.router,
    logs.router,
    volumes.router,
    backups.router,
    restores.router,
    availability.router,
    alerts.router,
    spec.router,
    events.router,
    kv.router,
    tokens.router,
    metrics.router,
    history.router,
    join.router,
)
