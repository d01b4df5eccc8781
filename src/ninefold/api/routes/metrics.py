"""`GET /metrics`: this node's gateway metrics, in Prometheus' text format."""

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter

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
            "description": "this node's gateway metrics, in Prometheus' text format",
        }
    },
    errors=[503],
)
async def prometheus(ctx: Context) -> Response:
    body = ctx.metrics() if ctx.metrics is not None else b""
    return Response(body, media_type=CONTENT_TYPE_LATEST)
