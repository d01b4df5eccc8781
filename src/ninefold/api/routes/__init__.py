"""The API's routers, one per resource; `create_app` serves them in this order.

The dashboard's router is not here: it is served only when its files are."""

from ninefold.api import join
from ninefold.api.routes import (
    backups,
    events,
    health,
    instances,
    kv,
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
    volumes.router,
    backups.router,
    restores.router,
    spec.router,
    events.router,
    kv.router,
    tokens.router,
    metrics.router,
    join.router,
)
