"""How a gateway chooses the backend for a request or a connection.

Each balancer picks from a sequence of live `Backend`s, skipping the keys in
`exclude` (backends already tried for this request, or passively marked down).
They are plain objects without I/O: the engine keeps one per service and
carries it over routing changes, so round robin goes on where it stopped.

- `RoundRobin`: smooth weighted round robin (nginx's): deterministic, an exact
  split for equal weights (A B A B ...), weights spread evenly over time.
- `LeastConn`: fewest requests in flight relative to weight; ties go round robin.
- `SourceHash`: rendezvous hashing of the client address, so a client keeps
  its backend and removing a backend moves only that backend's clients.
- `Sticky`: a cookie naming the backend (by an opaque hash of its key) pins a
  client to it while it is live.
"""

from __future__ import annotations

import abc
import hashlib
import math
from collections.abc import Callable, Collection, Container, Sequence
from functools import lru_cache

from ninefold.gateway.routes import Backend

NOTHING: frozenset[str] = frozenset()


class Balancer(abc.ABC):
    """Chooses one backend from `backends`, never one whose key is in `exclude`.

    `backends` is read as immutable: a balancer may cache what it derives from
    the same sequence object (the engine passes one tuple per routing table)."""

    @abc.abstractmethod
    def pick(
        self, backends: Sequence[Backend], client_ip: str = "", exclude: Container[str] = NOTHING
    ) -> Backend | None:
        """The backend for the next request, or None if every one is excluded
        (backends of weight 0 never take traffic)."""


class RoundRobin(Balancer):
    """Smooth weighted round robin: each pick adds every candidate's weight to
    its running score, takes the highest (the first on a tie) and takes the
    candidates' total weight off the winner."""

    def __init__(self) -> None:
        self._score: dict[str, int] = {}
        self._last: Sequence[Backend] = ()
        self._keyed: list[tuple[Backend, str, int]] = []

    def pick(
        self, backends: Sequence[Backend], client_ip: str = "", exclude: Container[str] = NOTHING
    ) -> Backend | None:
        if backends is not self._last:  # the same tuple, request after request
            self._last = backends
            self._keyed = [(b, b.key, b.weight) for b in backends]
        score = self._score
        best: Backend | None = None
        best_key = ""
        best_score = 0
        total = 0
        for backend, key, weight in self._keyed:
            if weight <= 0 or key in exclude:
                continue
            current = score.get(key, 0) + weight
            score[key] = current
            total += weight
            if best is None or current > best_score:
                best, best_key, best_score = backend, key, current
        if best is None:
            return None
        score[best_key] = best_score - total
        if len(score) > len(backends):
            keys = {b.key for b in backends}
            self._score = {k: v for k, v in score.items() if k in keys}
        return best


class LeastConn(Balancer):
    """The candidate with the fewest requests in flight per unit of weight;
    ties are broken by smooth weighted round robin among the tied ones."""

    def __init__(self, inflight: Callable[[str], int]) -> None:
        self._inflight = inflight
        self._ties = RoundRobin()

    def pick(
        self, backends: Sequence[Backend], client_ip: str = "", exclude: Container[str] = NOTHING
    ) -> Backend | None:
        inflight = self._inflight
        tied: list[Backend] = []
        best_load = 0.0
        for backend in backends:
            if backend.weight <= 0 or backend.key in exclude:
                continue
            load = inflight(backend.key) / backend.weight
            if not tied or load < best_load:
                tied = [backend]
                best_load = load
            elif load == best_load:
                tied.append(backend)
        if not tied:
            return None
        if len(tied) == 1:
            return tied[0]
        return self._ties.pick(tied)


class SourceHash(Balancer):
    """Weighted rendezvous (highest random weight) hashing of the client
    address: every gateway sends one client to the same backend, and a change
    in the backend set only moves the clients of the backends that changed."""

    def pick(
        self, backends: Sequence[Backend], client_ip: str = "", exclude: Container[str] = NOTHING
    ) -> Backend | None:
        best: Backend | None = None
        best_score = -1.0
        for backend in backends:
            if backend.weight <= 0 or backend.key in exclude:
                continue
            score = rendezvous_score(client_ip, backend.key, backend.weight)
            if score > best_score:
                best, best_score = backend, score
        return best


@lru_cache(maxsize=4096)
def rendezvous_score(client: str, key: str, weight: int) -> float:
    """-weight / ln(u), u uniform in (0, 1) from a stable hash of (client, key)."""
    digest = hashlib.blake2b(f"{client}\0{key}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
    return -weight / math.log(u)


def make_balancer(algorithm: str, inflight: Callable[[str], int]) -> Balancer:
    """The balancer for `BalanceSpec.algorithm`."""
    if algorithm == "roundrobin":
        return RoundRobin()
    if algorithm == "leastconn":
        return LeastConn(inflight)
    if algorithm == "source":
        return SourceHash()
    raise ValueError(f"unknown balancing algorithm {algorithm!r}")


def choose(
    balancer: Balancer,
    backends: Sequence[Backend],
    client_ip: str = "",
    tried: Collection[str] = NOTHING,
    down: Collection[str] = NOTHING,
) -> Backend | None:
    """Pick a backend neither tried for this request nor marked down; a down
    backend only when it is all that is left untried."""
    if down:
        exclude: Container[str] = down if not tried else _Union(tried, down)
        backend = balancer.pick(backends, client_ip, exclude)
        if backend is not None:
            return backend
    return balancer.pick(backends, client_ip, tried)


class _Union:
    __slots__ = ("a", "b")

    def __init__(self, a: Container[str], b: Container[str]) -> None:
        self.a, self.b = a, b

    def __contains__(self, key: object) -> bool:
        return key in self.a or key in self.b


# --- sticky sessions ---------------------------------------------------------------------


@lru_cache(maxsize=1024)
def sticky_id(key: str) -> str:
    """The opaque cookie value naming a backend: a short hash of its key (every
    gateway computes the same one, and the cookie does not show address:port)."""
    return hashlib.blake2b(key.encode(), digest_size=6, person=b"ninefold-sticky").hexdigest()


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie request header, if present."""
    if not header or name not in header:
        return None
    for part in header.split(";"):
        cname, sep, value = part.strip().partition("=")
        if sep and cname == name:
            return value.strip().strip('"')
    return None


class Sticky:
    """Cookie stickiness for one service: which live backend a request's cookie
    names, and the Set-Cookie header that pins a client to a backend."""

    def __init__(self, cookie: str, backends: Sequence[Backend]) -> None:
        self.cookie = cookie
        self._by_id = {sticky_id(b.key): b for b in backends}

    def backend_for(self, cookie_header: str | None) -> Backend | None:
        """The backend the request's cookie names, if it is one of `backends`."""
        value = cookie_value(cookie_header, self.cookie)
        return self._by_id.get(value) if value else None

    def set_cookie(self, backend: Backend) -> str:
        """The Set-Cookie header value pinning a client to `backend`."""
        return f"{self.cookie}={sticky_id(backend.key)}; Path=/; HttpOnly"
