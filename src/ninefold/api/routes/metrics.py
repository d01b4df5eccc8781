"""`GET /metrics`: this node's gateway metrics, and the backups this node ran
last, in Prometheus' text format."""

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter
from ninefold.backup.metrics import render as render_backups
from ninefold.state.keys import BACKUP_LAST
from ninefold.state.reads import read_spec
from ninefold.state.records import BackupResultRecord
from ninefold.store.base import StoreError

router = ResourceRouter()


@router.operation(
    "GET",
    "/metrics",
    role="read",
    tag="metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "this node's gateway and backup metrics, in Prometheus' text format",
        }
    },
    errors=[503],
)
async def prometheus(ctx: Context) -> Response:
    body = ctx.metrics() if ctx.metrics is not None else b""
    try:
        spec = await read_spec(ctx.store, ctx.spec)
        if spec.backups.repositories:  # a store read per scrape only with backups
            listing = await ctx.store.list(BACKUP_LAST)
            records = [BackupResultRecord.decode(i.value) for i in listing.items]
            body += render_backups(ctx.node, records)
    except StoreError:
        pass  # without the store (no quorum): the gateway's series still, when they matter
    return Response(body, media_type=CONTENT_TYPE_LATEST)
