"""The etcd v3 backend, over aetcd's generated gRPC stubs.

aetcd's own Client connects to one host and multiplexes watches behind
callbacks; the stubs give us one channel over every member, a deadline and
error mapping on each request, and one watch stream per `watch()` that is
cancelled when the consumer stops iterating.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# gRPC's fork handlers crash children forked while its threads are busy (the
# agent forks services all the time); turn them off before gRPC loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
import grpc.aio
from aetcd import rpc

from ninefold import defaults
from ninefold.security.tls import paths_stamp
from ninefold.store import request_stats
from ninefold.store.base import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Listing,
    Put,
    Store,
    StoreError,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
)

log = logging.getLogger("ninefold.store")

_METADATA = (("hasleader", "true"),)
"""etcd then refuses requests and ends watches on a member that lost its
leader (a minority partition) instead of hanging until the deadline."""

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Reconnect to a restarted member within a second (gRPC's default backs off to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a vanished member under a quiet watch stream. etcd refuses pings
    # more often than every 5 s and pings without an open call.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

_OPS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}
_TARGETS = {
    "value": (rpc.Compare.VALUE, "value"),
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS connection to etcd (client cert optional)."""

    ca: Path | str
    cert: Path | str | None = None
    key: Path | str | None = None


@dataclass(frozen=True, slots=True)
class StoreMember:
    """One etcd member: a learner copies the log but has no vote."""

    id: int
    name: str
    """Empty until a member added by add_learner has started."""
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What one etcd member says of itself (Maintenance.Status)."""

    leader: bool
    """It is the raft leader."""
    has_leader: bool
    """It knows a raft leader (itself or another member)."""
    db_size: int
    """Bytes of its database file."""
    db_size_in_use: int
    """Bytes of it in use (the rest is free after compaction, until a defrag)."""
    learner: bool


@dataclass(frozen=True, slots=True)
class _Stubs:
    kv: Any
    lease: Any
    watch: Any
    channel: grpc.aio.Channel
    index: int
    """Which endpoint these stubs talk to."""


@dataclass
class _Attempt:
    index: int | None = None


TLS_CHECK_EVERY = 1.0
"""Seconds between two looks at the TLS files' modification times: when they
change (`ninefold cert rotate`), new requests go over new channels built with
the new files."""
RETIRED_CHANNEL_GRACE = 30.0
"""Seconds a channel replaced by one with new TLS files stays open for the
calls and watches still on it (a closed watch is simply made again)."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port', '[v6]:port', a bare host or an http(s):// URL -> (host, port)."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # a bare hostname, IPv4 or unbracketed IPv6 address
        host, port = text, ""
    if not host:
        raise ValueError(f"bad store endpoint {endpoint!r}")
    try:
        return host, int(port) if port else defaults.STORE_CLIENT_PORT
    except ValueError:
        raise ValueError(f"bad port in store endpoint {endpoint!r}") from None


def synced_endpoints(current: Sequence[str], voters: Sequence[str]) -> list[str]:
    """The endpoints to use once the store lists `voters` (client URLs of its
    voting members): the current ones that are still members, in their order
    (this node's own member stays first), then the new ones. Unchanged when
    no voter is listed."""
    if not voters:
        return list(current)
    wanted = {parse_endpoint(v): v for v in voters}
    kept = [e for e in current if parse_endpoint(e) in wanted]
    known = {parse_endpoint(e) for e in kept}
    added = [_host_port(*address) for address in wanted if address not in known]
    return kept + added


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def channel_target(addresses: Sequence[tuple[str, int]]) -> str:
    """One gRPC target naming every address (IP literals), e.g.
    'ipv4:127.0.0.1:2379,127.0.0.2:2379'. Mixed families use IPv6 with
    v4-mapped addresses, since a target has one scheme."""
    ips = [(ipaddress.ip_address(host), port) for host, port in addresses]
    if all(ip.version == 4 for ip, _ in ips):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in ips)
    parts = []
    for ip, port in ips:
        mapped = f"::ffff:{ip}" if ip.version == 4 else str(ip)
        parts.append(f"[{mapped}]:{port}")
    return "ipv6:" + ",".join(parts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _range_end(start: bytes) -> bytes:
    """etcd's range end for 'every key starting with start'."""
    trimmed = start.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    def read(path: Path | str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read TLS file {path}: {exc.strerror}") from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca),
        private_key=read(tls.key),
        certificate_chain=read(tls.cert),
    )


SNAPSHOT_TIMEOUT = 300.0
"""Seconds a store snapshot may take (a 512 MB database on a slow disk)."""


class EtcdStore(Store):
    """Store on an etcd cluster; every key lives under `namespace`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        namespace: str,
        timeout: float = defaults.STORE_REQUEST_TIMEOUT,
        tls: TlsFiles | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("no store endpoints given")
        self.endpoints = list(endpoints)
        self._addresses = [parse_endpoint(e) for e in self.endpoints]
        if namespace and not namespace.endswith("/"):
            namespace += "/"  # so namespace 'a' never sees the keys of 'ab'
        self.namespace = namespace
        self._prefix = namespace.encode()
        self._timeout = timeout
        self._tls = tls
        self._tls_stamp = paths_stamp(tls.ca, tls.cert, tls.key) if tls is not None else ()
        self._tls_checked = time.monotonic()
        self._retired: list[tuple[float, grpc.aio.Channel]] = []
        self._stubs: list[_Stubs | None] = [None] * len(self._addresses)
        self._current = 0
        self._failed_over_at = 0.0
        self._closed = False
        self._stats = request_stats.from_env()

    # -- key/value
    async def get(self, key: str) -> KeyValue | None:
        return await self._get(key, serializable=False)

    async def get_serializable(self, key: str) -> KeyValue | None:
        return await self._get(key, serializable=True)

    async def list(self, prefix: str) -> Listing:
        return await self._list(prefix, serializable=False)

    async def list_serializable(self, prefix: str) -> Listing:
        return await self._list(prefix, serializable=True)

    async def _get(self, key: str, serializable: bool) -> KeyValue | None:
        request = rpc.RangeRequest(key=self._key(key), serializable=serializable)
        resp = await self._rpc(lambda stubs: stubs.kv.Range(request, **self._call()))
        self._count("get-serializable" if serializable else "get", key, request, resp)
        return self._kv(resp.kvs[0]) if resp.kvs else None

    async def _list(self, prefix: str, serializable: bool) -> Listing:
        start, end = self._range(prefix)
        request = rpc.RangeRequest(
            key=start,
            range_end=end,
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
            serializable=serializable,
        )
        resp = await self._rpc(lambda stubs: stubs.kv.Range(request, **self._call()))
        self._count("list-serializable" if serializable else "list", prefix, request, resp)
        return Listing([self._kv(kv) for kv in resp.kvs], resp.header.revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        request = rpc.PutRequest(key=self._key(key), value=value, lease=lease)
        resp = await self._rpc(lambda stubs: stubs.kv.Put(request, **self._call()))
        self._count("put", key, request, resp)
        return int(resp.header.revision)

    async def delete(self, key: str, prefix: bool = False) -> int:
        request = self._delete_request(Delete(key, prefix))
        resp = await self._rpc(lambda stubs: stubs.kv.DeleteRange(request, **self._call()))
        self._count("delete", key, request, resp)
        return int(resp.deleted)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete] = (),
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        request = rpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._request_op(op) for op in success],
            failure=[self._request_op(op) for op in failure],
        )
        resp = await self._rpc(lambda stubs: stubs.kv.Txn(request, **self._call()))
        if self._stats is not None:
            keys = [c.key for c in compares] + [op.key for op in (*success, *failure)]
            self._count("txn", keys[0] if keys else "", request, resp)
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    # -- watches
    def watch(self, prefix: str, start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        """One watch stream; the server creates it on the first iteration."""
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        start, end = self._range(prefix)
        create = rpc.WatchCreateRequest(key=start, range_end=end, start_revision=start_revision)
        with self._errors() as attempt:
            stubs = await self._connect(attempt)
            call = stubs.watch.Watch(metadata=_METADATA, wait_for_ready=True)
        try:
            with self._errors(attempt):
                # The stream has no deadline; its creation must not hang though.
                await asyncio.wait_for(
                    call.write(rpc.WatchRequest(create_request=create)), self._timeout
                )
                resp = await asyncio.wait_for(call.read(), self._timeout)
            if self._stats is not None:
                self._stats.count("watch-create", prefix, create.ByteSize(), 0)
            while resp is not grpc.aio.EOF:
                if resp.compact_revision:
                    raise StoreError(
                        f"watch from revision {start_revision}: "
                        f"compacted up to {resp.compact_revision}"
                    )
                if resp.canceled:
                    raise StoreError(
                        f"watch cancelled by etcd: {resp.cancel_reason or 'no reason'}"
                    )
                if self._stats is not None and resp.events:
                    self._stats.count("watch-events", prefix, 0, resp.ByteSize())
                for event in resp.events:
                    yield self._event(event)
                with self._errors(attempt):
                    resp = await call.read()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and (current is None or not current.cancelling()):
                return  # the store closed under us: the watch simply ends
            raise
        finally:
            call.cancel()

    # -- leases
    async def grant_lease(self, ttl: float) -> int:
        request = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        resp = await self._rpc(lambda stubs: stubs.lease.LeaseGrant(request, **self._call()))
        if resp.error:
            raise StoreError(f"etcd refused a lease: {resp.error}")
        return int(resp.ID)

    async def keep_alive(self, lease: int) -> float:
        async def renew(stubs: _Stubs) -> Any:
            call = stubs.lease.LeaseKeepAlive(**self._call())
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                return await call.read()
            finally:
                call.cancel()

        resp = await self._rpc(renew)
        if resp is grpc.aio.EOF:
            raise StoreError("etcd closed the lease keepalive stream without an answer")
        if resp.TTL <= 0:
            raise LeaseExpired(f"lease {lease} expired")
        return float(resp.TTL)

    async def lease_time_to_live(self, lease: int) -> int | None:
        """Seconds the store's raft leader will keep `lease` without a renewal
        (whole seconds, rounded down: 0 is expired but not yet revoked); None
        once it is gone. After a raft leader change the new leader extends
        every lease by its election timeout (bench/failover_time.py shows it)."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease)
        try:
            resp = await self._rpc(
                lambda stubs: stubs.lease.LeaseTimeToLive(request, **self._call())
            )
        except LeaseExpired:
            return None
        return None if resp.TTL < 0 else int(resp.TTL)

    async def revoke_lease(self, lease: int) -> None:
        """Revoke; a lease that is already gone is not an error."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        with contextlib.suppress(LeaseExpired):
            await self._rpc(lambda stubs: stubs.lease.LeaseRevoke(request, **self._call()))

    # -- lifecycle
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stubs, self._stubs = self._stubs, [None] * len(self._addresses)
        retired, self._retired = self._retired, []
        for each in stubs:
            if each is not None:
                await each.channel.close()
        for _, channel in retired:
            await channel.close()

    async def _follow_tls_files(self) -> None:
        """New channels (with the files' new contents) once the TLS files changed;
        close channels retired long enough ago."""
        now = time.monotonic()
        if self._tls is None or now - self._tls_checked < TLS_CHECK_EVERY:
            return
        self._tls_checked = now
        stamp = paths_stamp(self._tls.ca, self._tls.cert, self._tls.key)
        if stamp != self._tls_stamp:
            self._tls_stamp = stamp
            log.info("store TLS files changed: new connections use them")
            self._retire_channels(now)
        while self._retired and now - self._retired[0][0] > RETIRED_CHANNEL_GRACE:
            _, channel = self._retired.pop(0)
            await channel.close()

    def _retire_channels(self, now: float) -> None:
        """New requests open new channels (to self._addresses); calls and
        watches on the old ones finish there (closed after RETIRED_CHANNEL_GRACE)."""
        self._retired += [(now, stubs.channel) for stubs in self._stubs if stubs is not None]
        self._stubs = [None] * len(self._addresses)

    # -- store membership (etcd only: the leader agent keeps etcd's raft leader
    #    off nodes whose loss would also cost a failover, see agent/store_leadership.py)
    async def raft_leader(self) -> tuple[str, dict[str, str]] | None:
        """(name of etcd's raft leader, member name -> client endpoint), or None
        when no member says who leads."""
        with self._errors() as attempt:
            stubs = await self._connect(attempt)
            cluster = rpc.ClusterStub(stubs.channel)
            members = await cluster.MemberList(rpc.MemberListRequest(), **self._call())
            status = await rpc.MaintenanceStub(stubs.channel).Status(
                rpc.StatusRequest(), **self._call()
            )
        names = {m.ID: m.name for m in members.members}
        urls = {
            m.name: m.clientURLs[0].split("://", 1)[-1]
            for m in members.members
            if m.clientURLs and not m.isLearner  # a learner cannot lead
        }
        leader = names.get(status.leader)
        return (leader, urls) if leader else None

    async def member_status(self, timeout: float = 1.0) -> MemberStatus:
        """The status of the first endpoint's member (the node's own in embedded
        mode) and of no other: never failed over, and asked without requiring a
        leader, so a member cut off from the others still answers."""
        if self._closed:
            raise StoreError("store is closed")
        await self._follow_tls_files()
        with self._errors():  # no attempt index: a failure here fails nothing over
            stubs = await self._stubs_at(0)
            status = await rpc.MaintenanceStub(stubs.channel).Status(
                rpc.StatusRequest(), timeout=timeout
            )
        return MemberStatus(
            leader=bool(status.leader) and status.leader == status.header.member_id,
            has_leader=bool(status.leader),
            db_size=int(status.dbSize),
            db_size_in_use=int(status.dbSizeInUse),
            learner=bool(status.isLearner),
        )

    async def move_raft_leader(self, leader_endpoint: str, target: str) -> None:
        """Ask etcd's raft leader (reached at leader_endpoint) to hand
        leadership to member `target`."""
        with self._errors() as attempt:
            stubs = await self._connect(attempt)
            cluster = rpc.ClusterStub(stubs.channel)
            members = await cluster.MemberList(rpc.MemberListRequest(), **self._call())
            ids = {m.name: m.ID for m in members.members}
            if target not in ids:
                raise StoreError(f"no store member named {target}")
            channel = self._open(channel_target([parse_endpoint(leader_endpoint)]))
            try:
                await rpc.MaintenanceStub(channel).MoveLeader(
                    rpc.MoveLeaderRequest(targetID=ids[target]),
                    timeout=self._timeout * 3,
                    metadata=_METADATA,
                )
            finally:
                await channel.close()

    # -- membership changes (a node joining as a store member, see api/join.py)
    async def members(self) -> builtins.list[StoreMember]:
        """The store's members as etcd lists them (learners included)."""
        resp = await self._rpc(
            lambda stubs: rpc.ClusterStub(stubs.channel).MemberList(
                rpc.MemberListRequest(), **self._call()
            )
        )
        return [_member(m) for m in resp.members]

    async def sync_endpoints(self) -> bool:
        """Take the store's voting members as the endpoints (etcd clientv3's
        auto-sync): members added since this client started (`ninefold join
        --store`) become endpoints, removed ones stop being. True if changed."""
        members = await self.members()
        if any(not m.client_urls and not m.learner for m in members):
            return False  # a voter that has not started yet: no telling where it listens
        voters = [m.client_urls[0] for m in members if not m.learner]
        new = synced_endpoints(self.endpoints, voters)
        if new == self.endpoints:
            return False
        log.info("store endpoints now: %s", ", ".join(new))
        self.endpoints = new
        self._addresses = [parse_endpoint(e) for e in new]
        self._retire_channels(time.monotonic())
        self._current = 0
        return True

    async def snapshot(self, path: Path) -> int:
        """Write a snapshot of the store's database (etcd's Maintenance.Snapshot,
        what `etcdctl snapshot save` does) to `path`, through a temporary file
        renamed over it when complete; its size in bytes."""
        tmp = path.with_name(f".{path.name}.part")

        async def save(stubs: _Stubs) -> int:
            size = 0
            stream = rpc.MaintenanceStub(stubs.channel).Snapshot(
                rpc.SnapshotRequest(), timeout=SNAPSHOT_TIMEOUT, metadata=_METADATA
            )
            with tmp.open("wb") as out:  # blocking writes of 4 MB or less each
                async for chunk in stream:
                    await asyncio.to_thread(out.write, chunk.blob)
                    size += len(chunk.blob)
                await asyncio.to_thread(os.fsync, out.fileno())
            os.replace(tmp, path)
            return size

        try:
            return int(await self._rpc(save, retry=False))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def add_learner(self, peer_url: str) -> tuple[int, builtins.list[StoreMember]]:
        """Add a learner reached at peer_url: it gets the log but does not vote,
        so the quorum does not grow until it is promoted (after catching up).
        Returns its id and the members after the change."""
        request = rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=True)
        resp = await self._member_change(lambda cluster: cluster.MemberAdd(request, **self._call()))
        return resp.member.ID, [_member(m) for m in resp.members]

    async def remove_member(self, member_id: int) -> None:
        request = rpc.MemberRemoveRequest(ID=member_id)
        await self._member_change(lambda cluster: cluster.MemberRemove(request, **self._call()))

    async def promote_member(self, member_id: int) -> None:
        """Make a learner a voting member; StoreError while it has not caught up."""
        request = rpc.MemberPromoteRequest(ID=member_id)
        await self._member_change(lambda cluster: cluster.MemberPromote(request, **self._call()))

    async def _member_change(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """One membership request to etcd's cluster service, never repeated on
        another member (a MemberAdd whose answer was lost must not add a
        second learner)."""
        return await self._rpc(lambda stubs: call(rpc.ClusterStub(stubs.channel)), retry=False)

    # -- connection and errors
    async def _connect(self, attempt: _Attempt) -> _Stubs:
        """Stubs for the member requests go to now: the first endpoint (the
        node's own member) unless it failed lately, then the next one.

        One member at a time rather than round robin: a member cut off by a
        partition drops packets without a word, and round robin would keep
        sending a share of every request to it until gRPC's keepalive notices
        (15 s), each of them waiting out its deadline."""
        if self._closed:
            raise StoreError("store is closed")
        await self._follow_tls_files()
        if (
            self._current
            and time.monotonic() - self._failed_over_at > defaults.STORE_FAILBACK_AFTER
        ):
            self._current = 0
        index = self._current
        attempt.index = index
        return await self._stubs_at(index)

    async def _stubs_at(self, index: int) -> _Stubs:
        stubs = self._stubs[index]
        if stubs is None:
            target = await self._target(index)
            if self._closed:
                raise StoreError("store is closed")
            stubs = self._stubs[index]
            if stubs is None:  # another task may have connected meanwhile
                channel = self._open(target)
                stubs = _Stubs(
                    rpc.KVStub(channel),
                    rpc.LeaseStub(channel),
                    rpc.WatchStub(channel),
                    channel,
                    index,
                )
                self._stubs[index] = stubs
        return stubs

    async def _rpc(self, call: Callable[[_Stubs], Awaitable[Any]], retry: bool = True) -> Any:
        """One request; when its member does not answer, once more on the next
        member unless not to `retry` (every key-value request may be repeated:
        a retried lock txn finds the lock held by the same holder and lease,
        which try_lock accepts)."""
        tries = min(2, len(self._addresses)) if retry else 1
        for i in range(tries):
            try:
                with self._errors() as attempt:
                    stubs = await self._connect(attempt)
                    return await call(stubs)
            except StoreUnavailable:
                if i == tries - 1 or self._closed:
                    raise
        raise AssertionError("unreachable")

    def _fail_over(self, attempt: _Attempt | None) -> None:
        """The member at attempt.index did not answer: use the next one."""
        if attempt is None or attempt.index is None or len(self._addresses) < 2:
            return
        if attempt.index >= len(self._addresses):  # the endpoints changed meanwhile
            return
        if attempt.index == self._current:
            self._current = (attempt.index + 1) % len(self._addresses)
            self._failed_over_at = time.monotonic()
            log.info(
                "store member %s did not answer: using %s",
                self.endpoints[attempt.index],
                self.endpoints[self._current],
            )

    async def _target(self, index: int) -> str:
        host, port = self._addresses[index]
        if _is_ip(host):
            return channel_target([(host, port)])
        return f"dns:///{host}:{port}"

    def _open(self, target: str) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(target, _credentials(self._tls), options=_CHANNEL_OPTIONS)

    def _call(self) -> dict[str, Any]:
        # Not wait_for_ready: a member that refuses connections fails the
        # request at once, and the next member gets it.
        return {"timeout": self._timeout, "metadata": _METADATA}

    @contextlib.contextmanager
    def _errors(self, attempt: _Attempt | None = None) -> Iterator[_Attempt]:
        """Turn every gRPC failure into a one-line StoreError; fail over to the
        next member when this one did not answer."""
        attempt = attempt or _Attempt()
        where = ", ".join(self.endpoints)
        try:
            yield attempt
        except grpc.aio.AioRpcError as exc:
            error = self._translate(exc, where)
            if isinstance(error, StoreUnavailable):
                self._fail_over(attempt)
            raise error from None
        except TimeoutError:
            self._fail_over(attempt)
            raise StoreUnavailable(
                f"etcd unavailable at {where}: no answer within {self._timeout:g}s"
            ) from None
        except (grpc.RpcError, grpc.aio.BaseError) as exc:
            if self._closed:
                raise StoreError("store is closed") from None
            raise StoreError(f"etcd request failed: {type(exc).__name__}: {exc}") from None

    def _translate(self, exc: grpc.aio.AioRpcError, where: str) -> StoreError:
        code = exc.code()
        details = " ".join((exc.details() or code.name).split())
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreUnavailable(
                f"etcd unavailable at {where}: no answer within {self._timeout:g}s"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return StoreUnavailable(f"etcd unavailable at {where}: {details.rsplit(': ', 1)[-1]}")
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return StoreError("store is closed")
        if "lease not found" in details:
            return LeaseExpired(details.removeprefix("etcdserver: "))
        return StoreError(f"etcd refused the request: {details} ({code.name})")

    # -- conversions
    def _count(self, kind: str, key: str, request: Any, resp: Any) -> None:
        """Count a key-value request when NINEFOLD_STORE_STATS asks for it."""
        if self._stats is not None:
            self._stats.count(kind, key, request.ByteSize(), resp.ByteSize())

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _strip(self, key: bytes) -> str:
        return key[len(self._prefix) :].decode()

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        start = self._key(prefix)
        if not start:  # every key: etcd spells that '\0'..'\0'
            return b"\0", b"\0"
        return start, _range_end(start)

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(
            key=self._strip(kv.key),
            value=bytes(kv.value),
            create_revision=int(kv.create_revision),
            mod_revision=int(kv.mod_revision),
            version=int(kv.version),
            lease=int(kv.lease),
        )

    def _event(self, event: Any) -> WatchEvent:
        key = self._strip(event.kv.key)
        revision = int(event.kv.mod_revision)
        if event.type == rpc.Event.DELETE:
            return WatchEvent("delete", key, None, revision)
        return WatchEvent("put", key, bytes(event.kv.value), revision)

    def _compare(self, compare: Compare) -> Any:
        target, field = _TARGETS[compare.target]
        operand = compare.operand
        if (compare.target == "value") != isinstance(operand, bytes):
            kind = "bytes" if compare.target == "value" else "int"
            raise StoreError(f"{compare.target} compare on {compare.key!r} needs a {kind} operand")
        message = rpc.Compare(result=_OPS[compare.op], target=target, key=self._key(compare.key))
        setattr(message, field, operand)
        return message

    def _delete_request(self, op: Delete) -> Any:
        if op.prefix:
            start, end = self._range(op.key)
            return rpc.DeleteRangeRequest(key=start, range_end=end)
        return rpc.DeleteRangeRequest(key=self._key(op.key))

    def _request_op(self, op: Put | Delete) -> Any:
        if isinstance(op, Put):
            put = rpc.PutRequest(key=self._key(op.key), value=op.value, lease=op.lease)
            return rpc.RequestOp(request_put=put)
        return rpc.RequestOp(request_delete_range=self._delete_request(op))


def _member(m: Any) -> StoreMember:
    return StoreMember(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner)
