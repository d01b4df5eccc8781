"""Balancers as plain objects: distribution, exclusion, stickiness."""

from __future__ import annotations

import heapq
from collections import Counter

import pytest

from ninefold.gateway.balance import (
    LeastConn,
    RoundRobin,
    SourceHash,
    Sticky,
    choose,
    cookie_value,
    make_balancer,
    sticky_id,
)
from ninefold.gateway.routes import Backend


def backend(name: str, port: int, weight: int = 100) -> Backend:
    return Backend(instance=name, node="n1", address="10.0.0.1", port=port, weight=weight)


A, B, C = backend("a", 8001), backend("b", 8002), backend("c", 8003)


def names(picks: list[Backend | None]) -> str:
    return "".join(p.instance if p else "-" for p in picks)


# --- round robin -----------------------------------------------------------------------------


def test_roundrobin_splits_equal_weights_exactly() -> None:
    rr = RoundRobin()
    picks = [rr.pick((A, B)) for _ in range(1000)]
    assert Counter(p.instance for p in picks if p) == {"a": 500, "b": 500}
    assert names(picks[:6]) == "ababab"


def test_roundrobin_is_smooth_and_weighted() -> None:
    rr = RoundRobin()
    heavy = backend("a", 8001, weight=5)
    light_b, light_c = backend("b", 8002, weight=1), backend("c", 8003, weight=1)
    assert names([rr.pick((heavy, light_b, light_c)) for _ in range(7)]) == "aabacaa"
    rr = RoundRobin()
    three_to_one = (backend("a", 8001, weight=300), backend("b", 8002, weight=100))
    counts = Counter(rr.pick(three_to_one).instance for _ in range(1000))  # type: ignore[union-attr]
    assert counts == {"a": 750, "b": 250}


def test_roundrobin_honours_exclude_and_zero_weight() -> None:
    rr = RoundRobin()
    assert names([rr.pick((A, B, C), exclude={"10.0.0.1:8002"}) for _ in range(4)]) == "acac"
    assert rr.pick((A, B), exclude={A.key, B.key}) is None
    off = backend("off", 8009, weight=0)
    assert {rr.pick((off, A)) for _ in range(5)} == {A}
    assert rr.pick((off,)) is None


def test_roundrobin_survives_backend_changes() -> None:
    rr = RoundRobin()
    for _ in range(3):
        rr.pick((A, B, C))
    counts = Counter(rr.pick((A, C)).instance for _ in range(100))  # type: ignore[union-attr]
    assert counts == {"a": 50, "c": 50}


# --- least connections -------------------------------------------------------------------------


def test_leastconn_prefers_fewest_in_flight_and_rotates_ties() -> None:
    inflight = {A.key: 3, B.key: 1, C.key: 1}
    lc = LeastConn(lambda key: inflight.get(key, 0))
    assert names([lc.pick((A, B, C)) for _ in range(4)]) == "bcbc"
    assert lc.pick((A, B, C), exclude={B.key, C.key}) is A
    heavy = backend("h", 8004, weight=400)
    inflight[heavy.key] = 3  # 3 in flight over 4x the weight is the least load
    assert lc.pick((A, B, heavy)) is heavy


def test_leastconn_sends_less_to_a_slow_backend() -> None:
    """Requests arrive every tick; `fast` answers in 2 ticks, `slow` in 20."""
    fast, slow = backend("fast", 8001), backend("slow", 8002)
    latency = {fast.key: 2, slow.key: 20}
    inflight = {fast.key: 0, slow.key: 0}
    ending: list[tuple[int, str]] = []
    lc = LeastConn(lambda key: inflight[key])
    counts: Counter[str] = Counter()
    for now in range(2000):
        while ending and ending[0][0] <= now:
            inflight[heapq.heappop(ending)[1]] -= 1
        chosen = lc.pick((fast, slow))
        assert chosen is not None
        counts[chosen.instance] += 1
        inflight[chosen.key] += 1
        heapq.heappush(ending, (now + latency[chosen.key], chosen.key))
    assert counts["slow"] < counts["fast"] / 3


# --- source hash ---------------------------------------------------------------------------------


def test_source_hash_is_stable_and_spread() -> None:
    clients = [f"192.0.2.{i % 250}" if i < 250 else f"2001:db8::{i:x}" for i in range(1500)]
    first = {ip: SourceHash().pick((A, B, C), ip) for ip in clients}
    assert all(SourceHash().pick((C, A, B), ip) == first[ip] for ip in clients)  # order-free
    counts = Counter(b.instance for b in first.values() if b)
    assert all(400 <= n <= 600 for n in counts.values()), counts


def test_source_hash_moves_only_the_clients_of_a_removed_backend() -> None:
    sh = SourceHash()
    clients = [f"198.51.100.{i}" for i in range(250)] + [f"203.0.113.{i}" for i in range(250)]
    before = {ip: sh.pick((A, B, C), ip) for ip in clients}
    after = {ip: sh.pick((A, C), ip) for ip in clients}
    moved = [ip for ip in clients if before[ip] != after[ip]]
    assert moved and all(before[ip] is B for ip in moved)
    assert len(moved) == sum(1 for b in before.values() if b is B)
    # excluding is the same as removing: a retry goes where removal would send it
    assert all(sh.pick((A, B, C), ip, exclude={B.key}) == after[ip] for ip in clients)


def test_source_hash_respects_weights() -> None:
    big = backend("big", 8001, weight=300)
    counts = Counter(
        SourceHash().pick((big, B), f"10.9.{i // 250}.{i % 250}").instance  # type: ignore[union-attr]
        for i in range(2000)
    )
    assert 1350 <= counts["big"] <= 1650, counts


# --- choosing with down marks --------------------------------------------------------------------


def test_choose_skips_down_backends_unless_nothing_else_is_left() -> None:
    rr = RoundRobin()
    down = {A.key}
    assert {choose(rr, (A, B, C), down=down).instance for _ in range(6)} == {"b", "c"}  # type: ignore[union-attr]
    assert choose(rr, (A, B), tried={B.key}, down=down) is A  # the only one not tried
    assert choose(rr, (A, B), tried={A.key, B.key}, down=down) is None
    assert choose(rr, (A, B, C), tried={B.key}, down={A.key}) is C


def test_make_balancer() -> None:
    assert isinstance(make_balancer("roundrobin", lambda k: 0), RoundRobin)
    assert isinstance(make_balancer("leastconn", lambda k: 0), LeastConn)
    assert isinstance(make_balancer("source", lambda k: 0), SourceHash)
    with pytest.raises(ValueError):
        make_balancer("random", lambda k: 0)


# --- sticky cookies ------------------------------------------------------------------------


def test_sticky_cookie_names_a_live_backend_without_its_address() -> None:
    sticky = Sticky("PIN", (A, B))
    header = sticky.set_cookie(B)
    value = header.split(";")[0].split("=", 1)[1]
    assert header == f"PIN={value}; Path=/; HttpOnly"
    assert value == sticky_id(B.key) and value != sticky_id(A.key)
    assert "10.0.0.1" not in header and "8002" not in header
    assert sticky.backend_for(f"theme=dark; PIN={value}; lang=en") is B
    assert sticky.backend_for(f'PIN="{value}"') is B
    assert sticky.backend_for(f"XPIN={value}") is None
    assert sticky.backend_for("PIN=deadbeef0000") is None
    assert sticky.backend_for(None) is None
    # a backend no longer live is not honoured
    assert Sticky("PIN", (A,)).backend_for(f"PIN={value}") is None


def test_cookie_value_parsing() -> None:
    assert cookie_value("a=1; b=2", "b") == "2"
    assert cookie_value("a=1;b=2 ", "b") == "2"
    assert cookie_value("ab=1", "b") is None
    assert cookie_value("", "b") is None
    assert cookie_value("b", "b") is None
