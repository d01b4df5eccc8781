"""Quarantining a node (Hydra's S5, a compromised server): revoke its
certificates, delete its tokens and drain it, in one transaction; the
leader's healer then fences it through its pool's provider, frees its locks
once the power-off is confirmed, removes its store member and replaces it
(agent/healer.py, decide/heal.py). A node in no pool has no provider to
fence it: the operator powers it off (docs/pools.md says what stays open
until then).

What the CA key signs is the new revocation list, so only an agent that can
read the CA key (as for `join`) takes a quarantine."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

from cryptography import x509

from ninefold.operations import Conflict, NotFound, _known
from ninefold.security.ca import CertificateAuthority
from ninefold.security.revocation import Revoked, cert_serial, sign_crl
from ninefold.security.tokens import TokenRecord
from ninefold.spec import ClusterSpec, NodeSpec
from ninefold.state.keys import (
    CRL_KEY,
    TOKENS,
    cert_key,
    drain_key,
    event_key,
    machine_key,
    quarantine_key,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import CertSerials, Event, MachineRecord, QuarantineRecord
from ninefold.store.base import Compare, Delete, Put, Store

PEER_CERT_TIMEOUT = 3.0
"""Seconds to wait for the node's API to show its certificate."""


@dataclass(frozen=True, slots=True)
class Quarantined:
    record: QuarantineRecord
    unknown_certificate: bool
    """No certificate of the node was known: none could be revoked."""


async def quarantine(
    store: Store,
    spec: ClusterSpec,
    node: str,
    ca: CertificateAuthority,
    ca_file: str | None,
    reason: str = "",
    by: str = "",
) -> Quarantined:
    """Quarantine `node` (NotFound for a node not in the spec, Conflict when it
    is quarantined already or the list changed meanwhile); `by`: the node
    whose agent does it, for the event written in the same transaction."""
    spec = await read_spec(store, spec)
    nodes = {n.name: n for n in spec.nodes}
    if node not in nodes:
        raise NotFound(f"no node named {node!r} (nodes: {_known(nodes)})")
    if await store.get(quarantine_key(node)) is not None:
        raise Conflict(f"{node} is quarantined already")
    serials = set(await _recorded_serials(store, node))
    if ca_file is not None:
        live = await _presented_serial(nodes[node], ca_file)
        if live is not None:
            serials.add(live)
    crl_item = await store.get(CRL_KEY)
    revoked = _listed(crl_item.value) if crl_item is not None else []
    now = time.time()
    known = {r.serial for r in revoked}
    revoked += [Revoked(int(s, 16), now) for s in sorted(serials) if int(s, 16) not in known]
    crl = await asyncio.to_thread(sign_crl, ca, revoked)
    tokens = await _node_tokens(store, node)
    record = QuarantineRecord(
        node=node,
        at=now,
        reason=reason,
        serials=sorted(serials),
        tokens=[t.id for t in tokens],
        pool=await _pool_of(store, spec, node),
    )
    guards = [
        Compare(quarantine_key(node), "create", "==", 0),
        Compare(CRL_KEY, "mod", "==", crl_item.mod_revision if crl_item else 0),
    ]
    said = (reason or "asked") + (
        f"; {len(serials)} certificate(s) revoked, {len(tokens)} token(s) deleted, drained"
    )
    event = Event(kind="node-quarantined", subject=node, reason=said, node=by, time=now)
    ops: list[Put | Delete] = [
        Put(event_key(now, by), event.encode()),
        Put(CRL_KEY, crl),
        Put(quarantine_key(node), record.encode()),
        Put(drain_key(node), b""),
        *(Delete(f"{TOKENS}{t.id}") for t in tokens),
    ]
    if not (await store.txn(guards, ops)).succeeded:
        raise Conflict(f"{node} was quarantined, or another node was, meanwhile: try again")
    return Quarantined(record, unknown_certificate=not serials)


def _listed(crl_pem: bytes) -> list[Revoked]:
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        return []
    return [Revoked(r.serial_number, r.revocation_date_utc.timestamp()) for r in crl]


async def _recorded_serials(store: Store, node: str) -> list[str]:
    item = await store.get(cert_key(node))
    return CertSerials.decode(item.value).serials if item is not None else []


async def _presented_serial(node: NodeSpec, ca_file: str) -> str | None:
    """The serial of the certificate the node's API presents now (it may use
    one it never recorded), or None when it does not answer."""
    try:
        ctx = await asyncio.to_thread(ssl.create_default_context, cafile=ca_file)
    except (OSError, ssl.SSLError):
        return None
    ctx.check_hostname = False
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(node.address, node.ports.api, ssl=ctx), PEER_CERT_TIMEOUT
        )
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if not der:
        return None
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    return format(cert_serial(pem), "x")


async def _node_tokens(store: Store, node: str) -> list[TokenRecord]:
    out = []
    for item in (await store.list(TOKENS)).items:
        try:
            record = TokenRecord.model_validate_json(item.value)
        except ValueError:
            continue
        if record.node == node:
            out.append(record)
    return out


async def _pool_of(store: Store, spec: ClusterSpec, node: str) -> str | None:
    for pool in spec.pools:
        item = await store.get(machine_key(pool, node))
        if item is not None and MachineRecord.decode(item.value).node == node:
            return pool
    return None
