"""What a lab builds for a spec, and the nftables rules of its faults: pure functions."""

from __future__ import annotations

import re

import pytest

from ninefold.cli.lab import parse_groups
from ninefold.lab import UnsuitableSpec, faults, topology
from ninefold.spec import parse_spec
from tests.lab.conftest import EXAMPLE

NODES = """
cluster: t
nodes:
{nodes}
services:
  q:
    mode: active-passive
    replicas: 1
    command: [sleep, infinity]
    vip: 10.99.0.254/24
"""


def spec_of(*nodes: str) -> str:
    return NODES.format(nodes="\n".join(f"  - {n}" for n in nodes))


def test_plan_of_the_example() -> None:
    from ninefold.spec import load_spec

    plan = topology.plan(load_spec(EXAMPLE), "nf00ab")
    assert str(plan.subnet) == "10.99.0.0/24"
    assert [(n.name, n.address, n.zone, n.namespace) for n in plan.nodes] == [
        ("n1", "10.99.0.11", "a", "nf00ab-n1"),
        ("n2", "10.99.0.12", "b", "nf00ab-n2"),
        ("n3", "10.99.0.13", "c", "nf00ab-n3"),
    ]
    assert [z.bridge for z in plan.zones] == ["z-a", "z-b", "z-c"]
    assert plan.client_address == "10.99.0.254"
    assert (plan.router_namespace, plan.client_namespace) == ("nf00ab-router", "nf00ab-client")
    names = [n.port for n in plan.nodes] + [z.uplink for z in plan.zones]
    assert all(len(name) <= 15 for name in names)


def test_client_avoids_addresses_the_spec_mentions() -> None:
    spec = parse_spec(spec_of("{name: n1, address: 10.99.0.1, store: true}",
                              "{name: n2, address: 10.99.0.253}"))  # fmt: skip
    plan = topology.plan(spec, "nf0001")
    assert plan.client_address == "10.99.0.252"  # .254 is the service's VIP
    assert [z.name for z in plan.zones] == ["default"]


@pytest.mark.parametrize(
    ("nodes", "words"),
    [
        (["{name: n1, address: 127.0.0.1, store: true}"], ["node n1", "127.0.0.1", "private"]),
        (
            ["{name: n1, address: 192.168.1.1, store: true}", "{name: n2, address: 192.168.2.1}"],
            ["node n2", "192.168.2.1", "192.168.1.0/24"],
        ),
        (["{name: n1, address: 8.8.8.8, store: true}"], ["node n1", "8.8.8.8"]),
        (["{name: client, address: 10.0.0.1, store: true}"], ["client", "reserved"]),
        (["{name: n1, address: 10.0.0.255, store: true}"], ["node n1", "broadcast"]),
    ],
)
def test_unsuitable_specs(nodes: list[str], words: list[str]) -> None:
    with pytest.raises(UnsuitableSpec) as caught:
        topology.plan(parse_spec(spec_of(*nodes)), "nf0002")
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_same_address_twice() -> None:
    spec = parse_spec(
        spec_of(
            "{name: n1, address: 10.0.0.1, store: true}",
            "{name: n2, address: 10.0.0.1, ports: {api: 7071, gateway_http: 8081}}",
        )
    )
    with pytest.raises(UnsuitableSpec, match=re.escape("n2: address 10.0.0.1 is also node n1")):
        topology.plan(spec, "nf0003")


ADDRESSES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3", "n4": "10.0.0.4"}


def test_partition_blocks() -> None:
    blocks = faults.partition_blocks([["n1", "n2"], ["n3"]], ADDRESSES)
    assert blocks == {"n1": {"10.0.0.3"}, "n2": {"10.0.0.3"}, "n3": {"10.0.0.1", "10.0.0.2"}}
    with pytest.raises(faults.BadGroups, match="two groups"):
        faults.partition_blocks([["n1", "n2"]], ADDRESSES)
    with pytest.raises(faults.BadGroups, match="n1 is in two groups"):
        faults.partition_blocks([["n1"], ["n1", "n2"]], ADDRESSES)


def test_isolation_blocks() -> None:
    blocks = faults.isolation_blocks(["n3", "n4"], ADDRESSES, "10.0.0.254")
    assert blocks["n3"] == blocks["n4"] == {"10.0.0.1", "10.0.0.2", "10.0.0.254"}
    assert blocks["n1"] == blocks["n2"] == {"10.0.0.3", "10.0.0.4"}
    assert faults.isolation_blocks(ADDRESSES, ADDRESSES, "10.0.0.254") == {
        n: {"10.0.0.254"} for n in ADDRESSES
    }


def test_ruleset() -> None:
    script = faults.ruleset({"10.0.0.3", "10.0.0.1"})
    assert script.startswith("table inet ninefold_lab\ndelete table inet ninefold_lab\n")
    assert "ip saddr { 10.0.0.1, 10.0.0.3 } drop" in script
    assert "ip daddr { 10.0.0.1, 10.0.0.3 } drop" in script
    assert faults.removal() == "table inet ninefold_lab\ndelete table inet ninefold_lab\n"


@pytest.mark.parametrize(
    "words",
    [["n1,n2 / n3"], ["n1,n2", "/", "n3"], ["n1,n2", "n3"], ["n1, n2/n3"], ["n1 n2 / n3"]],
)
def test_parse_groups(words: list[str]) -> None:
    assert parse_groups(words) == [["n1", "n2"], ["n3"]]
