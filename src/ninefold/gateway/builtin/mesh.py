"""The builtin engine's side of gateway-to-instance mTLS (gateway/mesh.py).

`open_upstream` opens the gateway's connection to a backend: plain to the
instance, or over mutual TLS to its node's mesh listener. `MeshListener`
is that listener: it accepts only clients with a certificate from the cluster
CA, agrees in ALPN to the names of this node's mtls instances only, and pipes
each connection, byte for byte, to the instance agreed on; anything else is
closed. It does no HTTP: the sending gateway did all of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from ninefold import defaults
from ninefold.gateway.mesh import MeshClientContext, MeshError
from ninefold.gateway.routes import MESH_ALPN_PREFIX

if TYPE_CHECKING:
    from ninefold.gateway.routes import Backend
    from ninefold.security.tls import ReloadingServerContext

log = logging.getLogger("ninefold.gateway")

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    backend: Backend,
    mesh: MeshClientContext | None,
) -> tuple[asyncio.Transport, P]:
    """A connection to `backend`: direct, or through its node's mesh listener
    (TLS with this node's certificate, the listener's checked for its node's
    name, the instance agreed on in ALPN). OSError when it cannot be had, as
    for a refused connection."""
    hop = backend.mesh
    if hop is None:
        return await loop.create_connection(factory, backend.address, backend.port)
    if mesh is None:
        raise ConnectionRefusedError(f"{backend.instance}: mtls, but this node has no certificate")
    try:
        context = mesh.context(hop.alpn)
    except MeshError as exc:
        raise ConnectionRefusedError(str(exc)) from None
    transport, protocol = await loop.create_connection(
        factory, hop.address, hop.port, ssl=context, server_hostname=hop.node
    )
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.selected_alpn_protocol() != hop.alpn:
        transport.abort()
        raise ConnectionRefusedError(f"mesh listener of {hop.node}: no instance {hop.instance}")
    return transport, protocol


class MeshListener:
    """The mesh port of one node's builtin gateway."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, tls: ReloadingServerContext, address: str
    ) -> None:
        self.loop = loop
        self.tls = tls
        self.address = address
        """The node's address: the local hop to the instance leaves from it."""
        self.targets: dict[str, Backend] = {}
        """This node's mtls instances by ALPN name, as the current table has them."""
        self.pipes: set[MeshPipe] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        tls.set_alpn_protocols([])

    def set_targets(self, targets: dict[str, Backend]) -> None:
        """This node's mtls instances (by instance name), from the new table."""
        by_alpn = {MESH_ALPN_PREFIX + name: b for name, b in targets.items()}
        if by_alpn.keys() != self.targets.keys():
            self.tls.set_alpn_protocols(sorted(by_alpn))
        self.targets = by_alpn

    def protocol(self) -> MeshPipe:
        return MeshPipe(self)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for pipe in list(self.pipes):
            pipe.abort()


class MeshPipe(asyncio.Protocol):
    """One connection accepted on the mesh port (after its TLS handshake)."""

    def __init__(self, listener: MeshListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []
        """Bytes received before the instance's connection was up (uvloop does
        not honour pause_reading() called from connection_made)."""
        self.peer_eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        target = listener.targets.get(alpn) if alpn else None
        if target is None:
            log.debug("mesh: no instance of ours agreed on (ALPN %r): closing", alpn)
            self.closed = True
            transport.close()
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        listener.pipes.add(self)
        task = listener.loop.create_task(self._connect(target))
        listener.tasks.add(task)
        task.add_done_callback(listener.tasks.discard)

    async def _connect(self, target: Backend) -> None:
        try:
            async with asyncio.timeout(defaults.GATEWAY_CONNECT_TIMEOUT):
                upstream, _ = await self.listener.loop.create_connection(
                    lambda: Upstream(self),
                    target.address,
                    target.port,
                    local_addr=(self.listener.address, 0),
                )
        except (OSError, TimeoutError) as exc:
            log.debug("mesh: %s unreachable: %s", target.instance, exc)
            self.transport.close()
            return
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        if self.early:
            upstream.write(b"".join(self.early))
            self.early = []
        if self.peer_eof:
            upstream.write_eof()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        elif not self.upstream.is_closing():
            self.upstream.write(data)

    def eof_received(self) -> bool:
        """The sending gateway closed (TLS cannot stay half-open here)."""
        self.peer_eof = True
        if self.upstream is not None and self.upstream.can_write_eof():
            self.upstream.write_eof()
        return False

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.pipes.discard(self)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if exc is None:
                upstream.close()
            else:
                upstream.abort()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()

    # --- from the instance's side ---------------------------------------------------------

    def from_upstream_eof(self) -> bool:
        return False  # close: see from_upstream_lost

    def from_upstream_lost(self, exc: Exception | None) -> None:
        """TLS has no half-close here: the instance's end closes the pipe
        (after what it sent is written)."""
        self.upstream = None
        if not self.closed:
            if exc is None:
                self.transport.close()
            else:
                self.transport.abort()


class Spliced(Protocol):
    """The client side of a spliced connection, as its `Upstream` sees it."""

    transport: asyncio.Transport

    def from_upstream_eof(self) -> bool: ...

    def from_upstream_lost(self, exc: Exception | None) -> None: ...


class Upstream(asyncio.Protocol):
    """The backend side of a spliced connection (a TCP route's, or the mesh
    listener's to its instance): bytes go to the client as they come, with
    back-pressure both ways; its end is the client's to handle."""

    __slots__ = ("client", "transport")

    def __init__(self, client: Spliced) -> None:
        self.client = client
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.client.transport
        if not transport.is_closing():
            transport.write(data)

    def eof_received(self) -> bool:
        return self.client.from_upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.from_upstream_lost(exc)

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()
