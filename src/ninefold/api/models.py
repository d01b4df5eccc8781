"""What the REST API reads and answers, as pydantic models (docs/api.md).

The models are the OpenAPI description: every field here is in the contract
the CLI and the dashboard are built against."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ninefold.state.records import Health, InstanceState, Role


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -----------------------------------------------------------------------


class ErrorDetail(_Out):
    code: str = Field(
        description="not_found, conflict, invalid or store_unavailable "
        "(method_not_allowed and bad_request for requests outside the API)",
        examples=["not_found"],
    )
    message: str = Field(examples=["no service named 'shop'"])
    issues: list[str] = Field(
        default_factory=list,
        description="One line per problem, for a bad spec or body: 'file:line path: message'",
    )


class ErrorBody(_Out):
    error: ErrorDetail


# --- reading ----------------------------------------------------------------------


class HealthOut(_Out):
    node: str
    store: Literal["ok", "unavailable"]
    version: str
    time: float = Field(
        description="The agent's wall clock when it answered, in seconds since the epoch "
        "(`ninefold doctor` compares the nodes' clocks with it)",
        examples=[1767225600.125],
    )


class NodeOut(_Out):
    name: str
    address: str
    zone: str
    state: Literal["up", "down", "drained"]
    leader: bool
    store_member: bool
    role: Literal["worker", "witness"] = Field(
        default="worker", description="witness: a store member that runs no instances"
    )


class ServiceOut(_Out):
    name: str
    mode: Literal["replicated", "active-passive", "external"]
    desired: int = Field(description="replicas asked for in the spec (external: endpoints)")
    healthy: int = Field(
        description="instances running and healthy (or unchecked); external: endpoints "
        "every checking node finds healthy"
    )
    active: str | None = Field(
        default=None, description="holder of the active lock ('node/instance'), active-passive only"
    )
    fencing_token: int | None = None


class InstanceOut(_Out):
    instance: str
    service: str
    node: str
    state: InstanceState | Literal["lost", "pending"] = Field(
        description="as the node reports it; 'pending' before its first report, "
        "'lost' when its node is down"
    )
    health: Health | Literal["unknown"]
    role: Role | Literal[""]
    address: str
    ports: dict[str, int] = {}
    restarts: int = 0
    fencing_token: int | None = None
    pid: int | None = None
    draining: bool = False
    detail: str = Field(
        default="", description="what it waits for, e.g. a seeding instance's first copy"
    )


class ServiceDetailOut(ServiceOut):
    instances: list[InstanceOut]


class VipOut(_Out):
    address: str = Field(description="the floating address with its prefix, as in the spec")
    service: str = Field(description="the service it follows, or `gateway`")
    holder: str | None = Field(description="the node holding it now (None: nobody)")


class EndpointOut(_Out):
    service: str
    endpoint: str = Field(description="`host:port`, as the spec's `external:` lists it")
    health: Literal["healthy", "partial", "unhealthy", "starting", "unknown"] = Field(
        description="`healthy`: every node checking it finds it healthy; `unhealthy`: "
        "none does; `partial`: some do (the others' gateways route around it); "
        "`starting`: no check settled yet; `unknown`: no node reports it"
    )
    nodes: dict[str, Literal["starting", "healthy", "unhealthy"]] = Field(
        default={}, description="each node's own verdict (its gateway routes by it)"
    )
    detail: str = Field(default="", description="why a node finds it unhealthy")


class StatusOut(_Out):
    cluster: str
    leader: str | None
    nodes: list[NodeOut]
    services: list[ServiceOut]
    instances: list[InstanceOut]
    vips: list[VipOut] = []
    external: list[EndpointOut] = Field(
        default=[], description="the external services' endpoints (docs/spec.md)"
    )


class CopyOut(_Out):
    node: str
    role: Literal["source", "copy"] = Field(
        description="`source`: the copy the others are made from (the active's)"
    )
    state: Literal["source", "in-sync", "behind", "seeding", "failing", "down"] = Field(
        description="the first that applies: `down` (its node is not alive), `failing` "
        "(the last transfer to it failed), `seeding` (its first transfer is under way), "
        "`source`, `behind` (changes at the source not in it yet), `in-sync`"
    )
    alive: bool = Field(description="whether its node is alive")
    sent_by: str = Field(description="the node whose active sent its last transfer")
    token: int = Field(description="fencing token of the active that sent it")
    seq: int = Field(description="that active's transfer count: with `token`, its generation")
    lag_seconds: float = Field(
        description="how long the oldest change at the source not in it has waited (0: none)"
    )
    bytes_behind: int = Field(description="size of the files changed at the source, not in it")
    last_sync: float | None = Field(
        description="when the last transfer into it completed (the source: when its last "
        "round started), seconds since the epoch; null: never"
    )
    seeding: bool
    seed_done: int = Field(description="bytes of the first transfer done so far")
    seed_total: int = Field(description="bytes of the first transfer in all (0: not known yet)")
    verified_at: float | None = Field(
        description="when a checksum comparison with the source last completed; null: never"
    )
    diverged: int = Field(description="files that comparison found different (and repaired)")
    error: str = Field(description="why the last transfer to it failed ('' when it succeeded)")
    written_at: float = Field(description="when its record was last written")


class VolumeOut(_Out):
    service: str
    volume: str
    source: str | None = Field(description="the node the copies are made from (null: none yet)")
    copies: list[CopyOut] = Field(description="the source's first, then by node")


class VolumesOut(_Out):
    time: float = Field(
        description="the agent's wall clock the lags were computed at, seconds since the epoch "
        "(ages are relative to it)"
    )
    volumes: list[VolumeOut] = Field(
        description="every volume with `replicate: continuous`, by service then volume"
    )


class SpecOut(_Out):
    yaml: str
    revision: int = Field(description="the store revision of the spec (0: none stored yet)")


class EventOut(_Out):
    time: float = Field(description="seconds since the epoch")
    kind: str
    subject: str
    reason: str = ""
    node: str = ""
    data: dict[str, Any] = {}


# --- changing ---------------------------------------------------------------------


class SpecIn(_In):
    yaml: str


class SpecChangeOut(_Out):
    diff: list[str] = Field(description="unified diff, stored spec to new spec")
    applied: bool = Field(description="false for a dry run or an unchanged spec")
    revision: int


class ScaleIn(_In):
    replicas: int = Field(ge=1)


class MoveIn(_In):
    node: str = Field(min_length=1)


class SwitchoverIn(_In):
    to: str | None = Field(
        default=None, description="node of the standby to promote; none: the best standby"
    )


class Accepted(_Out):
    accepted: Literal[True] = True
    message: str


# --- key-value --------------------------------------------------------------------


class KvItemOut(_Out):
    key: str
    value: str
    revision: int


class KvPutIn(_In):
    value: str


class KvWrittenOut(_Out):
    key: str
    revision: int


class TokenIn(_In):
    role: Literal["read", "operate", "admin"] = "read"
    name: str = Field(
        "", max_length=200, description="what the token is for (shown by `token list`)"
    )
    kind: Literal["api", "join"] = "api"
    ttl: float | None = Field(None, gt=0, description="seconds until it expires (none: never)")
    uses: int | None = Field(None, ge=1, description="join tokens: how many joins it allows")


class TokenOut(_Out):
    id: str
    kind: str
    role: str
    name: str
    created: float
    expires: float | None
    uses: int | None
    node: str = Field("", description="the node it was made for (deleted at its quarantine)")


class TokenCreatedOut(TokenOut):
    token: str = Field(description="the token itself: shown once, never stored")
