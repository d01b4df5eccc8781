"""The external services' endpoints as the cluster sees them: each node's
verdict (its `ExternalReport`) and one word for all of them, for `ninefold
status`, the API and the dashboard. Why every node checks for itself:
decide/external.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ninefold.spec import ClusterSpec
from ninefold.state.records import EndpointHealth, ExternalReport

Summary = Literal["healthy", "partial", "unhealthy", "starting", "unknown"]


@dataclass
class EndpointView:
    """One external endpoint as the cluster sees it."""

    service: str
    endpoint: str
    health: Summary
    """`healthy`: every node that checks it finds it healthy; `unhealthy`:
    none does; `partial`: some do (the others' gateways route around it);
    `starting`: no check has settled yet; `unknown`: no node reports it."""
    nodes: dict[str, str] = field(default_factory=dict)
    """Node -> its own verdict (starting, healthy, unhealthy)."""
    detail: str = ""
    """Why a node finds it unhealthy (the first such node's last check)."""


def summarize(verdicts: Iterable[str]) -> Summary:
    """One word for the nodes' verdicts on an endpoint (see `EndpointView.health`)."""
    verdicts = list(verdicts)
    settled = [v for v in verdicts if v in ("healthy", "unhealthy")]
    if not settled:
        return "starting" if verdicts else "unknown"
    if all(v == "healthy" for v in settled):
        return "healthy"
    if all(v == "unhealthy" for v in settled):
        return "unhealthy"
    return "partial"


def endpoint_views(spec: ClusterSpec, reports: Iterable[ExternalReport]) -> list[EndpointView]:
    """Every external endpoint of the spec, by service and as listed, with
    each reporting node's verdict (reports of endpoints the spec no longer
    lists are left out)."""
    by_endpoint: dict[tuple[str, str], dict[str, EndpointHealth]] = {}
    for report in sorted(reports, key=lambda r: r.node):
        for health in report.endpoints:
            by_endpoint.setdefault((health.service, health.endpoint), {})[report.node] = health
    return [
        _view(name, endpoint, by_endpoint.get((name, endpoint), {}))
        for name, service in sorted(spec.services.items())
        for endpoint in service.external or []
    ]


def _view(service: str, endpoint: str, seen: Mapping[str, EndpointHealth]) -> EndpointView:
    verdicts: dict[str, str] = {node: h.health for node, h in seen.items()}
    sick = [f"{node}: {h.detail}" for node, h in seen.items() if h.health == "unhealthy"]
    return EndpointView(service, endpoint, summarize(verdicts.values()), verdicts,
                        sick[0] if sick else "")  # fmt: skip


def healthy_counts(views: Iterable[EndpointView]) -> dict[str, int]:
    """Service -> how many of its endpoints every checking node finds healthy."""
    counts: dict[str, int] = {}
    for view in views:
        counts[view.service] = counts.get(view.service, 0) + (view.health == "healthy")
    return counts
