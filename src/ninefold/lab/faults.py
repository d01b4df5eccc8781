"""Network faults as data: who drops traffic from and to whom.

A fault is a map node -> the addresses that node's namespace drops, in both
directions (input from them, output to them). `Lab` renders each entry as one
nftables table, `inet ninefold_lab`, in that node's namespace; healing deletes
the tables. Only IPv4 is filtered (the lab has no other addresses) and ARP is
not: a partitioned node still resolves its neighbours, as on a switch whose
links are up but whose packets are lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TABLE = "ninefold_lab"
FAMILY = "inet"

Blocks = dict[str, set[str]]
"""node -> the addresses its namespace drops traffic from and to."""


class BadGroups(ValueError):
    """The groups of a partition do not make sense."""


def partition_blocks(groups: Iterable[Iterable[str]], addresses: Mapping[str, str]) -> Blocks:
    """Each grouped node drops the addresses of the nodes in the other groups.

    `addresses` is node -> address. Nodes in no group are not touched."""
    groups = [list(dict.fromkeys(g)) for g in groups]
    groups = [g for g in groups if g]
    if len(groups) < 2:
        raise BadGroups("a partition needs at least two groups of nodes")
    where: dict[str, int] = {}
    for i, group in enumerate(groups):
        for node in group:
            if node in where:
                raise BadGroups(f"node {node} is in two groups")
            where[node] = i
    blocks: Blocks = {}
    for node, i in where.items():
        blocks[node] = {addresses[other] for other, j in where.items() if j != i}
    return blocks


def isolation_blocks(
    inside: Iterable[str], addresses: Mapping[str, str], client_address: str
) -> Blocks:
    """The `inside` nodes drop every other node and the client; the others
    drop the inside nodes too (so traffic to an address the inside nodes float
    to, or from one, is cut both ways)."""
    inside = set(inside)
    outside = [n for n in addresses if n not in inside]
    blocks = partition_blocks([sorted(inside), outside], addresses) if outside else {}
    for node in inside:
        blocks.setdefault(node, set()).add(client_address)
    return blocks


def ruleset(dropped: Iterable[str]) -> str:
    """An `nft -f` script that (re)places the lab's table with one dropping
    input from and output to `dropped`; atomic: `nft -f` applies it whole."""
    addresses = sorted(set(dropped))
    lines = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}"]
    if not addresses:
        return "\n".join(lines) + "\n"
    group = "{ " + ", ".join(addresses) + " }"
    lines += [
        f"table {FAMILY} {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    ip saddr {group} drop",
        "  }",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    ip daddr {group} drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def removal() -> str:
    """An `nft -f` script deleting the lab's table (present or not)."""
    return ruleset(())
