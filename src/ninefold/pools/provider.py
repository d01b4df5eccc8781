"""The small interface every machine provider implements (docs/pools.md).

A provider creates, lists, powers off and destroys machines, and says which
zones it has. Every machine ninefold creates carries the cluster's tags, so
`list` finds it again (and finds rogue machines: tagged, unknown to the store).
Calls may block (cloud SDKs do): the agent runs them in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

MachineState = Literal["pending", "running", "stopped", "terminated", "unknown"]

CLUSTER_TAG = "ninefold-cluster"
"""Tag naming the cluster a machine belongs to."""
POOL_TAG = "ninefold-pool"
"""Tag naming the pool a machine was created for."""
NODE_TAG = "ninefold-node"
"""Tag naming the ninefold node the machine is."""


class ProviderError(Exception):
    """A provider call failed; the message is one line saying what and why
    (quota, unknown image, credentials, unreachable API), never a secret."""


@dataclass(frozen=True)
class Machine:
    id: str
    """The provider's id of the machine (an EC2 instance id, a lab node name)."""
    name: str
    zone: str
    state: MachineState
    tags: Mapping[str, str] = field(default_factory=dict)
    address: str = ""
    """Its private address once known ("" before)."""


@dataclass(frozen=True)
class MachineRequest:
    name: str
    """The ninefold node name the machine will join as."""
    zone: str
    template: Mapping[str, object]
    """Provider-specific: image, size, network, key name..."""
    tags: Mapping[str, str]
    user_data: str
    """The bootstrap script the machine runs at first boot (cloud-init user-data)."""


class Provider(Protocol):
    name: str

    def zones(self) -> list[str]:
        """The zones machines can be created in."""
        ...

    def create(self, request: MachineRequest) -> Machine:
        """Create and boot a machine; ProviderError when the provider refuses."""
        ...

    def list(self, tags: Mapping[str, str]) -> list[Machine]:
        """The machines carrying every one of `tags` (terminated ones left out)."""
        ...

    def power_off(self, machine_id: str) -> None:
        """Stop the machine hard (a fence): when this returns, it runs nothing.
        An already stopped or gone machine is not an error."""
        ...

    def destroy(self, machine_id: str) -> None:
        """Delete the machine. An already gone machine is not an error."""
        ...
