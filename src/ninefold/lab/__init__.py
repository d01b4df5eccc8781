"""The lab: a cluster's nodes in network namespaces on one machine, and faults
to inject into it (kill, stop, freeze a node; partition nodes; isolate a zone).

    from ninefold.lab import Lab
    lab = Lab.up(Path("examples/lab.yaml"), progress=print)
    lab.partition([["n1", "n2"], ["n3"]])
    ...
    lab.heal()
    lab.down()

Needs root. docs/lab.md describes the topology, the verbs and cleanup.
"""

from ninefold.lab.errors import (
    LabError,
    LabUnsupported,
    NotRoot,
    StartFailed,
    UnknownName,
    UnsuitableSpec,
)
from ninefold.lab.lab import Lab, down_all, running_labs, state_root

__all__ = [
    "Lab",
    "LabError",
    "LabUnsupported",
    "NotRoot",
    "StartFailed",
    "UnknownName",
    "UnsuitableSpec",
    "down_all",
    "running_labs",
    "state_root",
]
