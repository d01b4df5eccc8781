"""Floating addresses: the spec, the holding decision, the ARP frame and the
gateway VIP keeper against an in-memory store (no interfaces touched)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from ninefold import vip as ninefold_vip
from ninefold.agent.gateway_vip import GatewayVipKeeper
from ninefold.decide.vip import HANDOVER_CAP, handover_over, handover_window, vip_step
from ninefold.spec import SpecError, dump_spec, parse_spec
from ninefold.spec.vip import VipSpec
from ninefold.state.keys import GATEWAY_VIP_LOCK, drain_key
from ninefold.store.memory import MemoryStore
from ninefold.vip import Interface, VipError, garp_frame, pick_interface
from tests.helpers import eventually

BASE = """\
cluster: t
nodes:
  - {name: n1, address: 10.99.0.11, store: true}
  - {name: n2, address: 10.99.0.12, store: true}
  - {name: n3, address: 10.99.0.13, store: true}
"""


def spec_text(gateway: str = "", services: str = "") -> str:
    return BASE + gateway + ("services:\n" + services if services else "")


# --- spec ------------------------------------------------------------------------------


def test_short_and_full_forms() -> None:
    spec = parse_spec(
        spec_text(
            gateway="gateway:\n  vip: {address: 10.99.0.10/24, prefer: [n2, n1], preempt: true}\n",
            services=(
                "  db:\n    mode: active-passive\n    command: [serve, '{vip}']\n"
                "    vip: 10.99.0.20\n"
            ),
        )
    )
    gw = spec.gateway.vip
    assert gw is not None and gw.ip == "10.99.0.10" and gw.prefer == ["n2", "n1"] and gw.preempt
    assert gw.rank("n2") == 0 and gw.rank("n1") == 1 and gw.rank("n3") == 2
    db = spec.services["db"].vip
    assert db is not None and db.address == "10.99.0.20/32" and not db.preempt
    assert parse_spec(dump_spec(spec)) == spec


@pytest.mark.parametrize(
    ("gateway", "services", "expected"),
    [
        ("gateway: {vip: 'fe80::1/64'}\n", "", "gateway.vip.address: fe80::1/64: only IPv4"),
        ("gateway: {vip: 127.0.0.9/8}\n", "", "127.0.0.9 cannot float between nodes"),
        ("gateway: {vip: 10.99.0.0/24}\n", "", "is the network address"),
        ("gateway: {vip: 10.99.0.300/24}\n", "", "is not an address like"),
        ("gateway: {vip: 10.99.0.12/24}\n", "", "10.99.0.12 is node 'n2's own address"),
        (
            "gateway: {vip: {address: 10.99.0.10/24, prefer: [n9]}}\n",
            "",
            "gateway.vip.prefer[0]: no node named 'n9'",
        ),
        (
            "gateway: {vip: {address: 10.99.0.10/24, interface: a-very-long-interface}}\n",
            "",
            "is not an interface name",
        ),
        (
            "gateway: {enabled: false, vip: 10.99.0.10/24}\n",
            "",
            "a gateway vip needs gateway.enabled: true",
        ),
        (
            "gateway: {vip: 10.99.0.10/24}\n",
            "  db:\n    mode: active-passive\n    command: [x]\n    vip: 10.99.0.10/24\n",
            "10.99.0.10 is also the vip of gateway.vip",
        ),
        (
            "",
            "  web:\n    command: [x]\n    vip: 10.99.0.10/24\n",
            "services.web.vip: a service vip needs mode: active-passive",
        ),
        (
            "",
            "  db:\n    mode: active-passive\n    command: [x]\n"
            "    vip: {address: 10.99.0.10/24, preempt: true}\n",
            "prefer and preempt apply to gateway.vip",
        ),
        ("", "  web:\n    command: [x, '{vip}']\n", "'{vip}' but the service has no vip"),
    ],
)
def test_bad_vips_name_where_and_why(gateway: str, services: str, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_text(gateway, services), "spec.yaml")
    assert expected in str(err.value)
    assert "spec.yaml:" in str(err.value)


# --- who holds it ----------------------------------------------------------------------

RANK = {"n1": 0, "n2": 1, "n3": 2}


def step(me: str, holder: str | None, eligible: bool = True, **kw: object) -> str:
    args: dict[str, object] = {
        "candidates": {"n1", "n2", "n3"},
        "rank": RANK,
        "preempt": False,
        "free_for": 0.0,
    }
    args.update(kw)
    return vip_step(me=me, holder=holder, eligible=eligible, **args)  # type: ignore[arg-type]


def test_a_free_vip_goes_to_the_most_preferred_eligible_node() -> None:
    assert step("n1", None) == "campaign"
    assert step("n2", None) == "wait"
    assert step("n2", None, candidates={"n2", "n3"}) == "campaign"
    assert step("n3", None, candidates={"n2", "n3"}) == "wait"


def test_others_campaign_when_the_preferred_node_does_not_take_it() -> None:
    assert step("n2", None, free_for=0.5) == "wait"
    assert step("n2", None, free_for=1.5) == "campaign"


def test_an_ineligible_node_never_campaigns_and_a_holder_that_becomes_one_releases() -> None:
    assert step("n1", None, eligible=False) == "wait"
    assert step("n1", "n1", eligible=False) == "release"
    assert step("n2", "n1") == "wait"


def test_preemption_gives_the_vip_back_only_when_asked() -> None:
    assert step("n2", "n2", preempt=False) == "hold"
    assert step("n2", "n2", preempt=True) == "release"
    assert step("n2", "n2", preempt=True, candidates={"n2", "n3"}) == "hold"
    assert step("n1", "n1", preempt=True) == "hold"


# --- announcing it -----------------------------------------------------------------------


def test_garp_frame_is_a_broadcast_arp_request_for_the_address_itself() -> None:
    mac = bytes.fromhex("02aabbccddee")
    frame = garp_frame(mac, "10.99.0.10")
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == 0x0806
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    ip = socket.inet_aton("10.99.0.10")
    assert frame[22:28] == mac and frame[28:32] == ip and frame[38:42] == ip


def test_interface_is_the_one_in_the_vips_subnet_or_the_one_named() -> None:
    found = [
        Interface("eth0", b"\x02" * 6, ("192.168.5.2/24",)),
        Interface("eth1", b"\x04" * 6, ("10.99.0.11/24", "10.99.0.10/24")),
    ]
    picked = pick_interface(found, "10.99.0.10/24", None)
    assert picked is not None and picked.name == "eth1"
    named = pick_interface(found, "10.99.0.10/24", "eth0")
    assert named is not None and named.name == "eth0"
    assert pick_interface(found, "172.16.0.1/24", None) is None
    assert pick_interface(found, "10.99.0.10/24", "eth9") is None
    # an interface carrying only the VIP itself is not in its subnet on its own
    only_vip = [Interface("eth2", b"\x06" * 6, ("10.99.0.10/24",))]
    assert pick_interface(only_vip, "10.99.0.10/24", None) is None


@pytest.mark.process
async def test_without_iproute2_the_error_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VipError, match=r"the `ip` command \(iproute2\) is not installed"):
        await ninefold_vip.add_address("10.99.0.10/24", "eth0", 1)


async def test_removing_an_address_that_is_gone_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter(
        [
            "ip addr del: RTNETLINK answers: Cannot assign requested address",
            "ip addr del: RTNETLINK answers: Operation not permitted",
        ]
    )

    async def failing_ip(*args: str) -> str:
        raise VipError(next(answers))

    monkeypatch.setattr(ninefold_vip, "_ip", failing_ip)
    assert await ninefold_vip.remove_address("10.99.0.10/24", "eth0") is False
    with pytest.raises(VipError, match="not permitted"):
        await ninefold_vip.remove_address("10.99.0.10/24", "eth0")


# --- the gateway VIP keeper ----------------------------------------------------------------


class FakeAddresses:
    """Stands in for the node's interfaces: which node has which VIP."""

    def __init__(self, node: str, world: dict[str, set[str]]) -> None:
        self.node, self.world = node, world
        self.can = True

    async def can_hold(self, vip: VipSpec) -> bool:
        return self.can

    def holds(self, ip: str) -> bool:
        return ip in self.world[self.node]

    async def take(self, vip: VipSpec, owner: str) -> bool:
        self.world[self.node].add(vip.ip)
        return True

    async def drop(self, ip: str, reason: str) -> None:
        self.world[self.node].discard(ip)


@dataclass
class FakeLease:
    lease: int


class FakeCheck:
    def __init__(self) -> None:
        self.state = "healthy"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class FakeHandover:
    """Stands in for the node's nftables handover rules: what was asked."""

    def __init__(self, node: str, world: dict[str, set[str]]) -> None:
        self.node, self.world = node, world
        self.opened: list[tuple[str, str, float, bool]] = []
        """(vip, local address, seconds, whether this node still had the VIP)"""
        self.closed = 0
        self.fail: Exception | None = None
        self.bounced: list[tuple[str, str]] = []

    async def open(self, vip: str, local: str, seconds: float) -> None:
        if self.fail is not None:
            raise self.fail
        self.opened.append((vip, local, seconds, vip in self.world[self.node]))

    async def bounce(self, address: str, interface: str | None, old: str, seconds: float) -> None:
        self.bounced.append((address, old))

    async def close(self) -> bool:
        self.closed += 1
        return True


class FakeJournal:
    async def record(self, *args: object, **kwargs: object) -> None:
        pass


async def keepers(
    store: MemoryStore, vip: str, names: list[str]
) -> tuple[dict[str, GatewayVipKeeper], dict[str, set[str]]]:
    spec = parse_spec(spec_text(gateway=f"gateway:\n  vip: {vip}\n"))
    world: dict[str, set[str]] = {n: set() for n in names}
    out = {}
    for name in names:
        lease = FakeLease(await store.grant_lease(10))
        keeper = GatewayVipKeeper(
            store,
            spec.node(name),
            lease,  # type: ignore[arg-type]
            FakeJournal(),  # type: ignore[arg-type]
            FakeAddresses(name, world),  # type: ignore[arg-type]
            spec,
            FakeHandover(name, world),  # type: ignore[arg-type]
        )
        keeper.check = FakeCheck()  # type: ignore[assignment]
        out[name] = keeper
    return out, world


async def settle(ks: dict[str, GatewayVipKeeper], rounds: int = 3) -> None:
    for _ in range(rounds):
        for keeper in ks.values():
            await keeper.step()


def holders(world: dict[str, set[str]], ip: str = "10.99.0.10") -> list[str]:
    return sorted(n for n, ips in world.items() if ip in ips)


async def test_one_node_holds_the_vip_and_it_moves_when_that_gateway_fails() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2", "n3"])
    await settle(ks)
    assert holders(world) == ["n1"]
    ks["n1"].check.state = "unhealthy"  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n2"]
    held = await store.lock_holder(GATEWAY_VIP_LOCK)
    assert held is not None and held.holder == "n2"


async def test_without_preempt_the_vip_stays_when_the_preferred_node_returns() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "{address: 10.99.0.10/24, prefer: [n1]}", ["n1", "n2"])
    await settle(ks)
    ks["n1"].check.state = "unhealthy"  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n2"]
    ks["n1"].check.state = "healthy"  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n2"]


async def test_with_preempt_the_preferred_node_takes_it_back() -> None:
    store = MemoryStore()
    vip = "{address: 10.99.0.10/24, prefer: [n1], preempt: true}"
    ks, world = await keepers(store, vip, ["n1", "n2"])
    await settle(ks)
    first = await store.lock_holder(GATEWAY_VIP_LOCK)
    ks["n1"].check.state = "unhealthy"  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n2"]
    ks["n1"].check.state = "healthy"  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n1"]
    last = await store.lock_holder(GATEWAY_VIP_LOCK)
    assert first is not None and last is not None
    assert last.fencing_token > first.fencing_token


async def test_a_drained_node_hands_the_vip_over() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2"])
    await settle(ks)
    assert holders(world) == ["n1"]
    await store.put(drain_key("n1"), b"{}")
    await settle(ks)
    assert holders(world) == ["n2"]


async def test_a_holder_whose_lease_was_replaced_drops_the_address() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2"])
    await settle(ks)
    assert holders(world) == ["n1"]
    lease = ks["n1"]._lease
    store.expire_lease(lease.lease)
    lease.lease = await store.grant_lease(10)  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n1"] or holders(world) == ["n2"]
    assert len(holders(world)) == 1


async def test_a_node_without_an_interface_for_the_vip_does_not_campaign() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2"])
    ks["n1"]._addresses.can = False  # type: ignore[attr-defined]
    await settle(ks)
    assert holders(world) == ["n2"]


async def test_stopping_releases_the_lock_for_the_next_node() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2"])
    await settle(ks)
    await ks["n1"].stop()
    assert holders(world) == []
    assert await store.lock_holder(GATEWAY_VIP_LOCK) is None
    await settle(ks)
    assert holders(world) == ["n2"]


def test_the_gateway_vip_address_is_the_one_the_agent_started_with() -> None:
    from ninefold.agent.gateway_vip import effective_vip

    started = parse_spec(spec_text(gateway="gateway:\n  vip: 10.99.0.10/24\n"))
    same = parse_spec(
        spec_text(gateway="gateway:\n  vip: {address: 10.99.0.10/24, preempt: true}\n")
    )
    moved = parse_spec(spec_text(gateway="gateway:\n  vip: 10.99.0.30/24\n"))
    none = parse_spec(spec_text())
    assert effective_vip(started, same) == same.gateway.vip  # new rules apply at once
    assert effective_vip(started, moved) == started.gateway.vip  # new address: at restart
    assert effective_vip(started, none) == started.gateway.vip
    assert effective_vip(none, started) is None


@pytest.mark.process
async def test_an_address_this_node_cannot_hold_is_refused_once_with_an_event() -> None:
    from ninefold.agent.addresses import FloatingAddresses

    class Journal:
        def __init__(self) -> None:
            self.lines: list[tuple[str, str, str]] = []

        async def record(self, kind: str, subject: str, reason: str = "") -> None:
            self.lines.append((kind, subject, reason))

    journal = Journal()
    addresses = FloatingAddresses(journal)  # type: ignore[arg-type]
    vip = VipSpec.model_validate({"address": "10.99.0.10/24", "interface": "nf-none0"})
    assert await addresses.take(vip, "gateway") is False
    assert await addresses.take(vip, "gateway") is False
    assert await addresses.can_hold(vip) is False
    assert not addresses.holds(vip.ip) and addresses.held() == {}

    async def journaled() -> bool:  # the journal writes run in the background
        return bool(journal.lines)

    await eventually(journaled, 2, "the vip-failed event")
    assert journal.lines == [
        ("vip-failed", "10.99.0.10", "no interface with nf-none0 on this node")
    ]
    await addresses.drop(vip.ip, "nothing held")  # a no-op, not an error


# --- the planned handover of the gateway VIP ---------------------------------------------


def window(**changes: object) -> float:
    args: dict[str, object] = {
        "planned": True,
        "gateway_healthy": True,
        "leased": True,
        "garp_count": 5,
        "garp_interval": 0.2,
    } | changes
    return handover_window(**args)  # type: ignore[arg-type]


def test_only_a_planned_move_by_a_working_gateway_opens_a_handover_window() -> None:
    assert window() == pytest.approx(1.0 + HANDOVER_CAP)
    assert window(planned=False) == 0.0  # gateway failed, lease lost, agent stopping
    assert window(gateway_healthy=False) == 0.0
    assert window(leased=False) == 0.0


def test_the_window_closes_once_the_new_holder_has_announced_the_vip() -> None:
    def over(held_elsewhere_for: float | None) -> bool:
        return handover_over(held_elsewhere_for=held_elsewhere_for, garp_count=5, garp_interval=0.2)

    assert over(None) is False  # nobody took it yet
    assert over(1.2) is False  # still announcing
    assert over(1.6) is True


def test_the_handover_rules_deliver_the_vip_here_for_a_while() -> None:
    script = ninefold_vip.accept_stale_script("ninefold_vip_n1", "10.99.0.10", "10.99.0.11", 6)
    assert "type nat hook prerouting priority dstnat" in script
    assert "add rule ip ninefold_vip_n1 prerouting dnat ip to ip daddr map @stale" in script
    assert "{ 10.99.0.10 timeout 6000ms : 10.99.0.11 }" in script
    assert ninefold_vip.handover_table("web-1.a") == "ninefold_vip_web_1_a"


@pytest.mark.process
async def test_without_nftables_the_error_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VipError, match=r"the `nft` command \(nftables\) is not installed"):
        await ninefold_vip.HandoverRules("n1").open("10.99.0.10", "10.99.0.11", 6)


async def test_handover_rules_that_are_gone_are_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter(
        [
            "nft delete table ip t: Error: Could not process rule: No such file or directory",
            "nft delete table ip t: Error: Could not process rule: Operation not permitted",
        ]
    )

    async def failing_nft(*args: str, script: str | None = None) -> str:
        raise VipError(next(answers))

    monkeypatch.setattr(ninefold_vip, "_nft", failing_nft)
    assert await ninefold_vip.stop_accepting_stale("t") is False
    with pytest.raises(VipError, match="not permitted"):
        await ninefold_vip.stop_accepting_stale("t")


async def test_an_ipv6_node_address_is_refused_before_nftables_runs() -> None:
    with pytest.raises(ValueError):
        await ninefold_vip.accept_stale("t", "10.99.0.10", "fd00::1", 6)


def handover_of(keeper: GatewayVipKeeper) -> FakeHandover:
    return keeper._handover  # type: ignore[return-value]


async def test_a_drain_opens_the_window_before_the_address_goes_and_closes_it_later() -> None:
    store = MemoryStore()
    vip = "{address: 10.99.0.10/24, garp_count: 1, garp_interval: 10ms}"
    ks, world = await keepers(store, vip, ["n1", "n2"])
    await settle(ks)
    assert holders(world) == ["n1"]
    await store.put(drain_key("n1"), b"{}")
    await settle(ks)
    assert holders(world) == ["n2"]  # the address itself is on one node only
    opened: list[tuple[object, ...]] = [
        ("10.99.0.10", "10.99.0.11", pytest.approx(0.01 + HANDOVER_CAP), True)
    ]
    assert handover_of(ks["n1"]).opened == opened  # while n1 still had the address
    assert handover_of(ks["n2"]).opened == []
    # n2 passes packets of n1's connections back to n1 (n1 is drained: planned).
    assert handover_of(ks["n2"]).bounced == [("10.99.0.10/24", "10.99.0.11")]

    async def closed() -> bool:
        await ks["n1"].step()
        return handover_of(ks["n1"]).closed > 0

    await eventually(closed, 3, "n1 to close its window once n2 announced the VIP")


async def test_a_failed_gateway_or_a_stopping_agent_opens_no_window() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2"])
    await settle(ks)
    ks["n1"].check.state = "unhealthy"  # type: ignore[misc]
    await settle(ks)
    assert holders(world) == ["n2"]
    assert handover_of(ks["n2"]).bounced == []  # n1 failed: its clients are told at once
    await ks["n2"].stop()
    assert holders(world) == []
    assert handover_of(ks["n1"]).opened == [] and handover_of(ks["n2"]).opened == []


async def test_a_window_that_cannot_open_leaves_a_plain_move() -> None:
    store = MemoryStore()
    ks, world = await keepers(store, "10.99.0.10/24", ["n1", "n2"])
    await settle(ks)
    handover_of(ks["n1"]).fail = VipError("the `nft` command (nftables) is not installed")
    await store.put(drain_key("n1"), b"{}")
    await settle(ks)
    assert holders(world) == ["n2"]
