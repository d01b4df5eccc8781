"""Automatic allocation of an instance's named ports on its node's address."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ninefold import defaults
from ninefold.net import port_is_free


def allocate_ports(
    address: str,
    instance: str,
    names: Iterable[str],
    taken: set[int],
    port_range: tuple[int, int] = defaults.INSTANCE_PORT_RANGE,
) -> dict[str, int]:
    """One free port per name, starting from a position derived from the
    instance name so an instance tends to get the same ports on every node."""
    low, high = port_range
    span = high - low + 1
    result: dict[str, int] = {}
    for name in names:
        start = zlib.crc32(f"{instance}/{name}".encode()) % span
        for step in range(span):
            port = low + (start + step) % span
            if port in taken or not port_is_free(address, port):
                continue
            result[name] = port
            taken.add(port)
            break
        else:
            raise RuntimeError(f"no free port left in {low}-{high} on {address}")
    return result
