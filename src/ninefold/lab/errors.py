"""What can go wrong in a lab."""

from __future__ import annotations

ROOT_MESSAGE = "ninefold lab needs root (network namespaces): run it with sudo"


class LabError(Exception):
    """The lab cannot do what was asked."""


class NotRoot(LabError):
    """Network namespaces need root."""

    def __init__(self, message: str = ROOT_MESSAGE) -> None:
        super().__init__(message)


class LabUnsupported(LabError):
    """This machine lacks what the operation needs (a kernel module, a tool)."""


class UnknownName(LabError):
    """A node, zone, namespace or lab that the lab does not have."""


class UnsuitableSpec(LabError):
    """The spec cannot be built as a lab (its addresses or node names)."""


class StartFailed(LabError):
    """An agent died while starting, or the cluster did not come up in time."""
