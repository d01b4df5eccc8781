"""The cluster spec: what nodes exist and which services run where.

`load_spec` reads and validates a YAML file; every problem in it is reported at
once, each as `FILE:LINE path: message`, in a `SpecError`.
"""

from .duration import Duration, format_duration, parse_duration
from .errors import SpecError, SpecIssue
from .loading import dump_spec, load_spec, parse_spec
from .models import (
    CheckSpec,
    ClusterSpec,
    NodePorts,
    NodeSpec,
    PlacementSpec,
    RestartSpec,
    ServiceSpec,
    StoreSpec,
    placeholder_names,
    render,
)

__all__ = [
    "CheckSpec",
    "ClusterSpec",
    "Duration",
    "NodePorts",
    "NodeSpec",
    "PlacementSpec",
    "RestartSpec",
    "ServiceSpec",
    "SpecError",
    "SpecIssue",
    "StoreSpec",
    "dump_spec",
    "format_duration",
    "load_spec",
    "parse_duration",
    "parse_spec",
    "placeholder_names",
    "render",
]
