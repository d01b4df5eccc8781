"""The REST API of docs/api.md, served by every agent: reads come from the
store, writes go through `ninefold.operations`.

Each resource has its router in api/routes/ (and api/join.py); what their
routes work with comes from the app's `ApiContext` (api/context.py)."""

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from ninefold import __version__
from ninefold.api.auth import install_auth
from ninefold.api.context import ApiContext, CaFiles, HistoryWindow
from ninefold.api.errors import install
from ninefold.api.routes import ROUTERS
from ninefold.api.routes.dashboard import mount_dashboard
from ninefold.api.routing import add_routes
from ninefold.api.streams import EventStreams
from ninefold.spec import ClusterSpec
from ninefold.store.base import Store

STATIC_DIR = Path(__file__).parent / "static"
"""The dashboard's files; mounted at /ui/ when the directory exists."""


def create_app(
    store: Store,
    spec: ClusterSpec,
    node: str,
    metrics: Callable[[], bytes] | None = None,
    log_dir: Path | None = None,
    ca_files: CaFiles | None = None,
    history: HistoryWindow | None = None,
) -> FastAPI:
    """The API of one agent (`node`); `spec` stands in while the store holds none."""
    app = FastAPI(
        title="ninefold",
        version=__version__,
        description="Control a ninefold cluster from any of its nodes.",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    install(app)
    install_auth(app, store)
    context = ApiContext(
        store=store,
        spec=spec,
        node=node,
        metrics=metrics,
        log_dir=log_dir,
        ca_files=ca_files or (lambda: None),
        streams=EventStreams(),
        history=history,
    )
    app.state.context = context
    app.state.event_streams = context.streams  # what ApiServer.stop ends
    for router in ROUTERS:
        add_routes(app, router)
    mount_dashboard(app, STATIC_DIR)
    return app
