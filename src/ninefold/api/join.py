"""Adding a machine with a join token: `GET /v1/ca` and `POST /v1/join`.

The new machine first fetches the cluster CA's certificate over an unverified
connection and checks it against the fingerprint it was given with its token
(as kubeadm does), so it talks to the right cluster from then on. It makes its
own key and sends a certificate request, the token and its node's name and
address; an agent that can read the CA key signs the request with the names
from the spec (never the request's), and adds the node to the stored spec
and uses the token once in one transaction. Nothing is half-applied: a token
use is spent only together with the node being added.

Asked to (`store: true`), the node also becomes a store member: etcd adds it
as a learner first (no vote, so the quorum does not change while the new
machine starts and catches up; its agent promotes it then, see
agent/store_join.py). Should the spec and token transaction fail, the learner
is removed again.
"""

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

from ninefold import operations
from ninefold.api.auth import Unauthorized
from ninefold.api.context import Context
from ninefold.api.routing import ResourceRouter
from ninefold.security import tokens
from ninefold.security.ca import fingerprint, load_ca
from ninefold.security.certs import sign_node_csr
from ninefold.security.files import TlsError
from ninefold.security.revocation import cert_serial, sign_crl
from ninefold.spec import ClusterSpec, NodeSpec, SpecError, dump_spec, parse_spec
from ninefold.state import tokens as token_records
from ninefold.state.keys import CRL_KEY, SPEC_KEY, cert_key, quarantine_key
from ninefold.state.reads import read_spec
from ninefold.state.records import CertSerials
from ninefold.store.base import Compare, Put, Store, StoreError
from ninefold.store.embedded import url
from ninefold.store.etcd import EtcdStore, StoreMember

log = logging.getLogger("ninefold.api")

ADD_MEMBER_WAIT = 20.0
"""Seconds a join waits for the store to accept one more member."""
ADD_MEMBER_LATER = ("unhealthy cluster", "too many learner")
"""etcd's refusals that pass: it takes no member while one added before is
still a learner, nor until every voter has been connected for 5 s (a member
promoted just now is not yet)."""


class CaOut(BaseModel):
    cluster: str
    ca: str = Field(description="the cluster CA's certificate, PEM")
    fingerprint: str = Field(description="sha256 of its DER form, as `join --ca-hash` takes it")


class JoinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(description="a join token (`ninefold token create --join`)")
    name: str
    address: str
    zone: str = "default"
    region: str = "default"
    labels: dict[str, str] = {}
    store: bool = Field(False, description="also make the node a member of the store (etcd)")
    csr: str = Field(description="PEM certificate request for the new node's own key")


class StoreMemberOut(BaseModel):
    member_id: int = Field(description="etcd's id of the node's member (a learner until promoted)")
    initial_cluster: str = Field(
        description="every member as `name=peer-url,...`, for the new member's first start"
    )


class JoinedOut(BaseModel):
    spec: str = Field(description="the cluster's spec, with the new node in it (YAML)")
    ca: str
    cert: str = Field(description="the new node's certificate, PEM")
    store_member: StoreMemberOut | None = Field(
        None, description="the store member added for the node (with `store: true`)"
    )
    crl: str = Field("", description="the cluster's certificate revocation list, PEM")


def with_node(spec: ClusterSpec, body: JoinIn) -> tuple[ClusterSpec, NodeSpec]:
    """The spec with the joining node added (the first node's ports; a store
    member if the body asks); Invalid or Conflict when it cannot be."""
    if any(n.name == body.name for n in spec.nodes):
        raise operations.Conflict(f"a node named {body.name!r} is in the cluster already")
    if any(n.address == body.address for n in spec.nodes):
        raise operations.Conflict(f"address {body.address} is a node's already")
    data = spec.model_dump(mode="json")
    ports = data["nodes"][0]["ports"]
    node = {
        "name": body.name,
        "address": body.address,
        "zone": body.zone,
        "region": body.region,
        "labels": body.labels,
        "store": body.store,
        "ports": ports,
    }
    data["nodes"].append(node)
    try:
        new = ClusterSpec.model_validate(data)
    except ValueError as exc:
        raise operations.Invalid(f"the node cannot join: {exc}".splitlines()[0]) from None
    return new, new.node(body.name)


router = ResourceRouter()


def signing_files(ctx: Context, what: str, how: str) -> tuple[Path, Path] | None:
    """(CA certificate, CA key) of this agent, to sign `what`; None without a
    CA; Conflict when this agent cannot read the key (`how`: what to do)."""
    files = ctx.ca_files()
    if files is None:
        return None
    ca_cert, ca_key = files
    if ca_key is None or not ca_key.exists():
        where = f" at {ca_key}" if ca_key is not None else ""
        raise operations.Conflict(
            f"this node cannot sign {what} (no CA key{where}): {how} the node that has "
            "it, or start its agent with NINEFOLD_CA_KEY"
        )
    return ca_cert, ca_key


@router.operation("GET", "/v1/ca", role=None, tag="joining", model=CaOut, errors=[404])
async def cluster_ca(ctx: Context) -> CaOut:
    """The cluster CA's certificate (public), for a machine about to join."""
    files = ctx.ca_files()
    if files is None:
        raise operations.NotFound("this cluster has no CA (no security.tls in its spec)")
    pem = await asyncio.to_thread(files[0].read_bytes)
    cluster = (await read_spec(ctx.store, ctx.spec)).cluster
    return CaOut(cluster=cluster, ca=pem.decode(), fingerprint=fingerprint(pem))


# Open: the join token in the body is what authenticates the request.
@router.operation(
    "POST",
    "/v1/join",
    role=None,
    tag="joining",
    model=JoinedOut,
    status_code=201,
    errors=[404, 409, 422, 503],
)
async def join(ctx: Context, body: Annotated[JoinIn, Body()]) -> JoinedOut:
    """Add a machine as a node: the join token pays for it (once)."""
    store = ctx.store
    files = signing_files(ctx, "certificates", "join through")
    if files is None:
        raise operations.NotFound("this cluster has no CA (no security.tls in its spec)")
    ca_cert, ca_key = files
    try:
        record, token_revision = await token_records.read_token(store, body.token, "join")
    except tokens.TokenError as exc:
        raise Unauthorized(str(exc)) from None
    if await store.get(quarantine_key(body.name)) is not None:
        raise operations.Conflict(f"{body.name} is quarantined: it cannot join again")
    spec_item = await store.get(SPEC_KEY)
    spec = await read_spec(store, ctx.spec)
    new_spec, node = with_node(spec, body)
    try:
        ca = await asyncio.to_thread(load_ca, ca_cert, ca_key)
        cert = await asyncio.to_thread(sign_node_csr, ca, node, body.csr.encode())
        crl_item = await store.get(CRL_KEY)
        crl = crl_item.value if crl_item else await asyncio.to_thread(sign_crl, ca, [])
        serial = format(cert_serial(cert), "x")
    except TlsError as exc:
        raise operations.Invalid(str(exc)) from None
    text = dump_spec(new_spec)
    try:
        parse_spec(text)
    except SpecError as exc:
        raise operations.Invalid("the node cannot join", [str(i) for i in exc.issues]) from None
    member = await _add_learner(store, new_spec, node) if body.store else None
    _, token_compare, token_put = token_records.spend(record, token_revision)
    # a name that joins again keeps its earlier certificates on record (a
    # quarantine must revoke them too)
    known = await store.get(cert_key(node.name))
    serials = CertSerials.decode(known.value) if known else CertSerials(node=node.name)
    serials.serials = [*[s for s in serials.serials if s != serial], serial]
    spec_revision = spec_item.mod_revision if spec_item else 0
    compares = [
        token_compare,
        Compare(SPEC_KEY, "mod", "==", spec_revision),
        Compare(cert_key(node.name), "mod", "==", known.mod_revision if known else 0),
        Compare(quarantine_key(node.name), "create", "==", 0),
    ]
    puts = [token_put, Put(SPEC_KEY, text.encode()), Put(cert_key(node.name), serials.encode())]
    try:
        result = await store.txn(compares, puts)
    except BaseException:
        await _remove_learner(store, member)
        raise
    if not result.succeeded:
        await _remove_learner(store, member)
        raise operations.Conflict("the spec or the token changed meanwhile: join again")
    pem = await asyncio.to_thread(ca_cert.read_bytes)
    return JoinedOut(
        spec=text, ca=pem.decode(), cert=cert.decode(), store_member=member, crl=crl.decode()
    )


def initial_cluster(members: list[StoreMember], new_name: str, new_peer: str) -> str:
    """etcd's --initial-cluster for a member just added: the added one has no
    name until it starts, so it goes by the name it will start with."""
    pairs = []
    for member in members:
        name = member.name or (new_name if new_peer in member.peer_urls else "")
        pairs += [f"{name}={peer}" for peer in member.peer_urls if name]
    return ",".join(pairs)


async def _add_learner(store: Store, spec: ClusterSpec, node: NodeSpec) -> StoreMemberOut:
    if spec.store.mode != "embedded" or not isinstance(store, EtcdStore):
        raise operations.Conflict(
            "the cluster's store is not embedded: a joining node cannot become a store member"
        )
    scheme = "https" if spec.security.tls is not None else "http"
    peer = url(node.address, node.ports.store_peer, scheme)
    deadline = time.monotonic() + ADD_MEMBER_WAIT
    while True:
        try:
            member_id, members = await store.add_learner(peer)
            break
        except StoreError as exc:
            busy = any(why in str(exc) for why in ADD_MEMBER_LATER)
            if busy and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                continue
            hint = " (a member that joined before is still catching up)" if busy else ""
            message = f"the store did not add a member for {node.name}{hint}: {exc}"
            raise operations.Conflict(message) from None
    return StoreMemberOut(
        member_id=member_id, initial_cluster=initial_cluster(members, node.name, peer)
    )


async def _remove_learner(store: Store, member: StoreMemberOut | None) -> None:
    """Undo _add_learner when the join did not go through."""
    if member is None or not isinstance(store, EtcdStore):
        return
    with contextlib.suppress(StoreError):
        await store.remove_member(member.member_id)
        return
    log.error("a join failed and its store learner %x could not be removed", member.member_id)
