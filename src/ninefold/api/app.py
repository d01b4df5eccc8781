"""The REST API of docs/api.md, served by every agent: reads come from the
store, writes go through `ninefold.operations`.

No `from __future__ import annotations` here: FastAPI reads the annotations of
the routes, which refer to names local to `create_app`."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import Body, Depends, FastAPI, Query
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from ninefold import __version__, defaults, operations
from ninefold.api.auth import document_roles, install_auth, needs
from ninefold.api.errors import documented, install
from ninefold.api.join import CaFiles, install_join
from ninefold.api.models import (
    Accepted,
    EventOut,
    HealthOut,
    InstanceOut,
    KvItemOut,
    KvPutIn,
    KvWrittenOut,
    MoveIn,
    NodeOut,
    ScaleIn,
    ServiceDetailOut,
    ServiceOut,
    SpecChangeOut,
    SpecIn,
    SpecOut,
    StatusOut,
    SwitchoverIn,
    TokenCreatedOut,
    TokenIn,
    TokenOut,
)
from ninefold.security import tokens
from ninefold.spec import ClusterSpec, dump_spec
from ninefold.state import tokens as token_records
from ninefold.state.keys import EVENTS, SPEC_KEY, status_key
from ninefold.state.reads import read_events, read_spec
from ninefold.state.records import Event
from ninefold.state.view import read_view
from ninefold.store.base import Store, StoreError
from ninefold.supervisor.logs import tail

log = logging.getLogger("ninefold.api")

STATIC_DIR = Path(__file__).parent / "static"
"""The dashboard's files; mounted at /ui/ when the directory exists."""
HEALTH_TIMEOUT = 3.0
"""Seconds /v1/health waits for the store before calling it unavailable."""
WATCH_RETRY = 1.0
"""Seconds between attempts to resume an event stream whose watch broke."""
MAX_LINES = 100_000


class EventStreams:
    """The open /v1/events/stream responses, so a stopping server can end them
    (an event stream never ends on its own)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event | None]] = set()
        self.closed = False

    def open(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._queues.add(queue)
        return queue

    def discard(self, queue: asyncio.Queue[Event | None]) -> None:
        self._queues.discard(queue)

    def close(self) -> None:
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(None)


async def _follow_events(store: Store, revision: int, queue: asyncio.Queue[Event | None]) -> None:
    """Feed queue with every event written after `revision`. A broken watch is
    resumed from the last revision seen, from a fresh listing when the store
    has forgotten that far back."""

    def offer(raw: bytes) -> None:
        with contextlib.suppress(ValueError):
            queue.put_nowait(Event.decode(raw))

    while True:
        try:
            async with contextlib.aclosing(store.watch(EVENTS, revision + 1)) as changes:
                async for change in changes:
                    revision = max(revision, change.revision)
                    if change.kind == "put" and change.value:
                        offer(change.value)
        except StoreError as exc:
            log.debug("event stream: watch broke: %s", exc)
        await asyncio.sleep(WATCH_RETRY)
        try:
            listing = await store.list(EVENTS)
        except StoreError:
            continue
        for item in listing.items:
            if item.mod_revision > revision:
                offer(item.value)
        revision = max(revision, listing.revision)


def create_app(
    store: Store,
    spec: ClusterSpec,
    node: str,
    metrics: Callable[[], bytes] | None = None,
    log_dir: Path | None = None,
    ca_files: CaFiles | None = None,
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
    streams = EventStreams()
    app.state.event_streams = streams

    # --- reading ------------------------------------------------------------------

    @app.get(
        "/v1/health",
        response_model=HealthOut,
        tags=["reading"],
        responses={503: {"model": HealthOut, "description": "the store is unavailable"}},
    )
    async def health() -> Response | HealthOut:
        """This agent answers; whether the store does too."""
        try:
            await asyncio.wait_for(store.get(SPEC_KEY), HEALTH_TIMEOUT)
        except (StoreError, TimeoutError):
            body = HealthOut(node=node, store="unavailable", version=__version__, time=time.time())
            return Response(body.model_dump_json(), 503, media_type="application/json")
        return HealthOut(node=node, store="ok", version=__version__, time=time.time())

    @app.get(
        "/v1/status",
        dependencies=[needs("read")],
        response_model=StatusOut,
        tags=["reading"],
        responses=documented(503),
    )
    async def status() -> StatusOut:
        """The whole picture, as `ninefold status -o json`."""
        return StatusOut.model_validate((await read_view(store, spec)).to_json())

    @app.get(
        "/v1/nodes",
        dependencies=[needs("read")],
        response_model=list[NodeOut],
        tags=["reading"],
        responses=documented(503),
    )
    async def nodes() -> list[NodeOut]:
        return (await status()).nodes

    @app.get(
        "/v1/nodes/{name}",
        dependencies=[needs("read")],
        response_model=NodeOut,
        tags=["reading"],
        responses=documented(404, 503),
    )
    async def one_node(name: str) -> NodeOut:
        for item in await nodes():
            if item.name == name:
                return item
        raise operations.NotFound(f"no node named {name!r}")

    @app.get(
        "/v1/services",
        dependencies=[needs("read")],
        response_model=list[ServiceOut],
        tags=["reading"],
        responses=documented(503),
    )
    async def services() -> list[ServiceOut]:
        return (await status()).services

    @app.get(
        "/v1/services/{name}",
        dependencies=[needs("read")],
        response_model=ServiceDetailOut,
        tags=["reading"],
        responses=documented(404, 503),
    )
    async def one_service(name: str) -> ServiceDetailOut:
        view = await status()
        for item in view.services:
            if item.name == name:
                mine = [i for i in view.instances if i.service == name]
                return ServiceDetailOut(**item.model_dump(), instances=mine)
        raise operations.NotFound(f"no service named {name!r}")

    @app.get(
        "/v1/instances",
        dependencies=[needs("read")],
        response_model=list[InstanceOut],
        tags=["reading"],
        responses=documented(503),
    )
    async def instances() -> list[InstanceOut]:
        return (await status()).instances

    @app.get(
        "/v1/instances/{instance}",
        dependencies=[needs("read")],
        response_model=InstanceOut,
        tags=["reading"],
        responses=documented(404, 503),
    )
    async def one_instance(instance: str) -> InstanceOut:
        for item in await instances():
            if item.instance == instance:
                return item
        raise operations.NotFound(f"no instance named {instance!r}")

    @app.get(
        "/v1/instances/{instance}/log",
        dependencies=[needs("read")],
        response_class=PlainTextResponse,
        tags=["reading"],
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "the last lines of the instance's log",
            },
            **documented(404, 422, 503, json_route=False),
        },
    )
    async def instance_log(
        instance: str,
        lines: Annotated[int, Query(ge=1, le=MAX_LINES)] = 100,
    ) -> PlainTextResponse:
        """Answered only by the agent of the node the instance runs on."""
        here = await store.get(status_key(node, instance)) is not None
        if not here:
            where = await operations.instance_node(store, instance)
            if where != node:
                cluster = await read_spec(store, spec)
                try:
                    target = cluster.node(where)
                    agent = f" at http://{target.host_port(target.ports.api)}"
                except KeyError:
                    agent = ""
                raise operations.NotFound(
                    f"{instance} runs on node {where}: its log is served by {where}'s agent{agent}"
                )
        if log_dir is None:
            raise operations.NotFound(f"node {node} keeps no instance logs")
        path = log_dir / f"{instance}.log"
        text = await asyncio.to_thread(tail, path, lines, backups=defaults.LOG_BACKUPS)
        return PlainTextResponse("".join(f"{line}\n" for line in text))

    @app.get(
        "/v1/spec",
        dependencies=[needs("read")],
        response_model=SpecOut,
        tags=["reading"],
        responses=documented(503),
    )
    async def get_spec() -> SpecOut:
        item = await store.get(SPEC_KEY)
        if item is None:
            return SpecOut(yaml=dump_spec(spec), revision=0)
        return SpecOut(yaml=item.value.decode(errors="replace"), revision=item.mod_revision)

    @app.get(
        "/v1/events",
        dependencies=[needs("read")],
        response_model=list[EventOut],
        tags=["reading"],
        responses=documented(422, 503),
    )
    async def events(
        limit: Annotated[int, Query(ge=1, le=defaults.EVENTS_KEEP * 10)] = 100,
    ) -> list[EventOut]:
        """The newest `limit` events, oldest first."""
        return [EventOut.model_validate(e.model_dump()) for e in await read_events(store, limit)]

    async def events_now() -> int:
        # In a dependency, so a store that does not answer gives a 503 rather
        # than a stream that breaks after its headers.
        return (await store.list(EVENTS)).revision

    @app.get(
        "/v1/events/stream",
        dependencies=[needs("read")],
        response_class=EventSourceResponse,
        tags=["reading"],
        responses=documented(503, json_route=False),
    )
    async def event_stream(
        revision: Annotated[int, Depends(events_now)],
    ) -> AsyncIterable[EventOut]:
        """Server-sent events: one `data: {event}` per new event, a `: ping`
        comment every 15 s of quiet."""
        queue = streams.open()
        follower = asyncio.create_task(_follow_events(store, revision, queue))
        try:
            while (event := await queue.get()) is not None:
                yield EventOut.model_validate(event.model_dump())
        finally:
            streams.discard(queue)
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    # --- changing -----------------------------------------------------------------

    @app.put(
        "/v1/spec",
        dependencies=[needs("admin")],
        response_model=SpecChangeOut,
        tags=["changing"],
        responses=documented(409, 422, 503),
    )
    async def put_spec(body: SpecIn, dry_run: bool = False) -> SpecChangeOut:
        """Validate a spec and, unless dry_run, make it the desired state."""
        change = await operations.apply_spec(store, body.yaml, dry_run)
        return SpecChangeOut(diff=change.diff, applied=change.applied, revision=change.revision)

    @app.post(
        "/v1/services/{name}/scale",
        dependencies=[needs("operate")],
        status_code=202,
        response_model=Accepted,
        tags=["changing"],
        responses=documented(404, 409, 422, 503),
    )
    async def scale(name: str, body: ScaleIn) -> Accepted:
        revision = await operations.update_service(store, spec, name, {"replicas": body.replicas})
        return Accepted(message=f"{name} scaled to {body.replicas} (spec revision {revision})")

    @app.post(
        "/v1/services/{name}/restart",
        dependencies=[needs("operate")],
        status_code=202,
        response_model=Accepted,
        tags=["changing"],
        responses=documented(404, 503),
    )
    async def restart(name: str) -> Accepted:
        """Rolling restart, one instance at a time."""
        await operations.request_restart(store, spec, name)
        return Accepted(message=f"{name}: rolling restart asked")

    @app.post(
        "/v1/instances/{instance}/move",
        dependencies=[needs("operate")],
        status_code=202,
        response_model=Accepted,
        tags=["changing"],
        responses=documented(404, 409, 422, 503),
    )
    async def move(instance: str, body: MoveIn) -> Accepted:
        source = await operations.request_move(store, spec, instance, body.node)
        return Accepted(message=f"{instance}: move from {source} to {body.node} asked")

    @app.post(
        "/v1/services/{name}/switchover",
        dependencies=[needs("operate")],
        status_code=202,
        response_model=Accepted,
        tags=["changing"],
        responses=documented(404, 409, 422, 503),
    )
    async def switchover(
        name: str, body: Annotated[SwitchoverIn | None, Body()] = None
    ) -> Accepted:
        """Active-passive only: the active steps down for a standby."""
        to = body.to if body is not None else None
        holder = await operations.request_switchover(store, spec, name, to)
        target = to or "the best standby"
        return Accepted(message=f"{name}: switchover from {holder} to {target} asked")

    @app.post(
        "/v1/nodes/{name}/drain",
        dependencies=[needs("operate")],
        status_code=202,
        response_model=Accepted,
        tags=["changing"],
        responses=documented(404, 503),
    )
    async def drain(name: str) -> Accepted:
        await operations.drain(store, spec, name)
        return Accepted(message=f"{name}: drain asked; its instances move away")

    @app.post(
        "/v1/nodes/{name}/undrain",
        dependencies=[needs("operate")],
        status_code=202,
        response_model=Accepted,
        tags=["changing"],
        responses=documented(404, 503),
    )
    async def undrain(name: str) -> Accepted:
        await operations.undrain(store, spec, name)
        return Accepted(message=f"{name}: takes instances again")

    # --- key-value ----------------------------------------------------------------

    @app.get(
        "/v1/kv",
        dependencies=[needs("read")],
        response_model=list[KvItemOut],
        tags=["key-value"],
        responses=documented(503),
    )
    async def kv_list(prefix: str = "") -> list[KvItemOut]:
        items = await operations.kv_list(store, prefix)
        return [KvItemOut(key=i.key, value=i.value, revision=i.revision) for i in items]

    @app.get(
        "/v1/kv/{key:path}",
        dependencies=[needs("read")],
        response_model=KvItemOut,
        tags=["key-value"],
        responses=documented(404, 422, 503),
    )
    async def kv_get(key: str) -> KvItemOut:
        item = await operations.kv_get(store, key)
        return KvItemOut(key=item.key, value=item.value, revision=item.revision)

    @app.put(
        "/v1/kv/{key:path}",
        dependencies=[needs("operate")],
        response_model=KvWrittenOut,
        tags=["key-value"],
        responses=documented(409, 422, 503),
    )
    async def kv_put(
        key: str,
        body: KvPutIn,
        cas: Annotated[int | None, Query(ge=0, description="0: only if absent")] = None,
    ) -> KvWrittenOut:
        revision = await operations.kv_put(store, key, body.value, cas)
        return KvWrittenOut(key=key, revision=revision)

    @app.delete(
        "/v1/kv/{key:path}",
        dependencies=[needs("operate")],
        response_model=KvWrittenOut,
        tags=["key-value"],
        responses=documented(404, 409, 422, 503),
    )
    async def kv_delete(
        key: str,
        cas: Annotated[int | None, Query(ge=0)] = None,
    ) -> KvWrittenOut:
        revision = await operations.kv_delete(store, key, cas)
        return KvWrittenOut(key=key, revision=revision)

    # --- metrics and dashboard ----------------------------------------------------

    # --- tokens ---------------------------------------------------------------------

    @app.post(
        "/v1/bootstrap",
        response_model=TokenCreatedOut,
        status_code=201,
        tags=["tokens"],
        responses=documented(409, 503),
    )
    async def token_bootstrap() -> TokenCreatedOut:
        """The cluster's first admin token; refused (409) once it exists. From
        then on every route but /v1/health needs a token."""
        token = await token_records.bootstrap(store)
        if token is None:
            raise operations.Conflict("this cluster was bootstrapped already: ask an admin")
        record = await token_records.authenticate(store, token)
        return TokenCreatedOut(token=token, **record.public())

    @app.post(
        "/v1/tokens",
        dependencies=[needs("admin")],
        response_model=TokenCreatedOut,
        status_code=201,
        tags=["tokens"],
        responses=documented(422, 503),
    )
    async def token_create(body: Annotated[TokenIn, Body()]) -> TokenCreatedOut:
        """A new API token with a role, or a join token with a number of uses."""
        if body.kind == "api" and body.uses is not None:
            raise operations.Invalid("uses applies to join tokens (kind: join)")
        token, record = tokens.new_token(body.kind, body.role, body.name, body.ttl, body.uses)
        await token_records.store_token(store, record)
        return TokenCreatedOut(token=token, **record.public())

    @app.get(
        "/v1/tokens",
        dependencies=[needs("admin")],
        response_model=list[TokenOut],
        tags=["tokens"],
        responses=documented(503),
    )
    async def token_list() -> list[TokenOut]:
        """Every token's record; never a token or its hash."""
        return [TokenOut(**r.public()) for r in await token_records.list_records(store)]

    @app.delete(
        "/v1/tokens/{ident}",
        dependencies=[needs("admin")],
        status_code=204,
        tags=["tokens"],
        responses=documented(404, 503),
    )
    async def token_revoke(ident: str) -> Response:
        """Revoke a token: it stops working at once."""
        if not await token_records.revoke(store, ident):
            raise operations.NotFound(f"no token with id {ident!r}")
        return Response(status_code=204)

    @app.get(
        "/metrics",
        dependencies=[needs("read")],
        response_class=Response,
        tags=["metrics"],
        responses={
            200: {
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                "description": "this node's gateway metrics, in Prometheus' text format",
            },
            **documented(503, json_route=False),
        },
    )
    async def prometheus() -> Response:
        body = metrics() if metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    if STATIC_DIR.is_dir():
        app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

    install_join(app, store, spec, ca_files or (lambda: None))
    document_roles(app)
    return app
