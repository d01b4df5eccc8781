"""The agent's own series in Prometheus' text format: its instances' health
check latency, its hold on the store (lease renewals, its etcd member),
the leader's actions, the VIPs it holds, and the copies of the replicated
volumes whose source it is.

The collectors only turn plain views into series; `AgentMetrics` reads the
views off the agent's live parts at scrape time (attributes and counters they
keep, nothing awaited). The one value that needs a request, the store
member's status, is sampled in the background (agent/store_status.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ninefold.agent.addresses import FloatingAddresses
from ninefold.agent.leader import LeaderLoop
from ninefold.agent.membership import LeaseKeeper
from ninefold.agent.reconciler import Reconciler
from ninefold.agent.store_status import StoreMemberStatus
from ninefold.latency import LatencyHistogram
from ninefold.spec import ClusterSpec
from ninefold.state.records import CopyRecord
from ninefold.store.etcd import MemberStatus

# -- views: what the collectors read ------------------------------------------------------


@dataclass(frozen=True)
class CheckView:
    service: str
    instance: str
    latency: LatencyHistogram


@dataclass(frozen=True)
class StoreView:
    renewal_latency: LatencyHistogram
    renewal_failures: int
    lease_valid: bool
    member: bool
    """This node runs a member of the store (embedded mode): the series below say of it."""
    status: MemberStatus | None = None
    """Its last answer (None: it did not answer)."""


@dataclass(frozen=True)
class LeaderView:
    leading: bool
    actions: Mapping[str, int]


@dataclass(frozen=True)
class VipView:
    ip: str
    owner: str
    """`gateway`, or the service whose active holds it."""
    held: bool


@dataclass(frozen=True)
class VolumeView:
    service: str
    volume: str
    copies: Mapping[str, CopyRecord] = field(default_factory=dict)
    """Target node -> its copy's record, as this node (the source) last worked it out."""


# -- collectors ---------------------------------------------------------------------------


def _histogram(family: HistogramMetricFamily, labels: list[str], h: LatencyHistogram) -> None:
    family.add_metric(labels, h.buckets(), h.sum)


class CheckCollector(Collector):
    def __init__(self, node: str, checks: Callable[[], Iterable[CheckView]]) -> None:
        self._node, self._checks = node, checks

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "service", "instance"]
        durations = HistogramMetricFamily(
            "ninefold_instance_check_duration_seconds",
            "How long the instance's health checks took",
            labels=labels,
        )
        last = GaugeMetricFamily(
            "ninefold_instance_last_check_duration_seconds",
            "How long the instance's last health check took",
            labels=labels,
        )
        for view in sorted(self._checks(), key=lambda v: v.instance):
            values = [self._node, view.service, view.instance]
            _histogram(durations, values, view.latency)
            if view.latency.last is not None:
                last.add_metric(values, view.latency.last)
        yield from (durations, last)


class StoreCollector(Collector):
    def __init__(self, node: str, view: Callable[[], StoreView]) -> None:
        self._node, self._view = node, view

    def collect(self) -> Iterator[Metric]:
        view, node = self._view(), [self._node]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["node"])
            family.add_metric(node, value)
            return family

        renewals = HistogramMetricFamily(
            "ninefold_lease_renewal_duration_seconds",
            "Time from sending a renewal of the node's lease to the store's answer",
            labels=["node"],
        )
        _histogram(renewals, node, view.renewal_latency)
        yield renewals
        failures = CounterMetricFamily(
            "ninefold_lease_renewal_failures",
            "Renewals of the node's lease that failed (no answer in time, an error, expired)",
            labels=["node"],
        )
        failures.add_metric(node, float(view.renewal_failures))
        yield failures
        yield gauge(
            "ninefold_lease_valid",
            "1 while the node holds a lease it trusts (0: at risk, fenced)",
            1.0 if view.lease_valid else 0.0,
        )
        if not view.member:
            return
        status = view.status
        yield gauge(
            "ninefold_store_member_up",
            "1 when the node's store member answered its last status request",
            0.0 if status is None else 1.0,
        )
        if status is None:
            return
        yield gauge(
            "ninefold_store_member_leader",
            "1 when the node's store member is the raft leader",
            1.0 if status.leader else 0.0,
        )
        yield gauge(
            "ninefold_store_member_has_leader",
            "1 when the node's store member knows a raft leader (0: no quorum it can see)",
            1.0 if status.has_leader else 0.0,
        )
        yield gauge(
            "ninefold_store_db_size_bytes",
            "Size of the store member's database file",
            float(status.db_size),
        )
        yield gauge(
            "ninefold_store_db_size_in_use_bytes",
            "Bytes of the store member's database in use (the rest is free until a defrag)",
            float(status.db_size_in_use),
        )


class LeaderCollector(Collector):
    def __init__(self, node: str, view: Callable[[], LeaderView]) -> None:
        self._node, self._view = node, view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        leader = GaugeMetricFamily(
            "ninefold_cluster_leader",
            "1 when this node's agent is the cluster's leader",
            labels=["node"],
        )
        leader.add_metric([self._node], 1.0 if view.leading else 0.0)
        actions = CounterMetricFamily(
            "ninefold_leader_actions",
            "Assignment changes this node applied as leader, by kind",
            labels=["node", "kind"],
        )
        for kind, count in sorted(view.actions.items()):
            actions.add_metric([self._node, kind], float(count))
        yield from (leader, actions)


class VipCollector(Collector):
    def __init__(self, node: str, vips: Callable[[], Iterable[VipView]]) -> None:
        self._node, self._vips = node, vips

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "ninefold_vip_held",
            "1 when this node holds the floating address, 0 when another node may",
            labels=["node", "vip", "owner"],
        )
        for view in sorted(self._vips(), key=lambda v: v.ip):
            held.add_metric([self._node, view.ip, view.owner], 1.0 if view.held else 0.0)
        yield held


class VolumeCollector(Collector):
    """One series per copy of each replicated volume whose source copy is on
    this node (its service's active runs here); `target` is the copy's node."""

    def __init__(
        self,
        node: str,
        volumes: Callable[[], Iterable[VolumeView]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node, self._volumes, self._clock = node, volumes, clock

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "service", "volume", "target"]
        lag = GaugeMetricFamily(
            "ninefold_volume_lag_seconds",
            "Age of the oldest change at the source not yet in the copy (0: in sync)",
            labels=labels,
        )
        behind = GaugeMetricFamily(
            "ninefold_volume_behind_bytes",
            "Size of the files changed at the source and not yet in the copy",
            labels=labels,
        )
        synced = GaugeMetricFamily(
            "ninefold_volume_last_sync_timestamp_seconds",
            "When the last transfer into the copy completed (unix time)",
            labels=labels,
        )
        ok = GaugeMetricFamily(
            "ninefold_volume_last_transfer_ok",
            "1 if the last transfer to the copy succeeded",
            labels=labels,
        )
        now = self._clock()
        for view in sorted(self._volumes(), key=lambda v: (v.service, v.volume)):
            for target, record in sorted(view.copies.items()):
                values = [self._node, view.service, view.volume, target]
                since = record.behind_since
                lag.add_metric(values, max(0.0, now - since) if since else 0.0)
                behind.add_metric(values, float(record.bytes_behind))
                if record.completed_at:
                    synced.add_metric(values, record.completed_at)
                ok.add_metric(values, 0.0 if record.error else 1.0)
        yield from (lag, behind, synced, ok)


# -- the agent's live parts ----------------------------------------------------------------


def spec_vips(spec: ClusterSpec) -> list[tuple[str, str]]:
    """(address, owner) of every VIP in the spec: `gateway` or the service."""
    out = []
    if spec.gateway.enabled and spec.gateway.vip is not None:
        out.append((spec.gateway.vip.ip, "gateway"))
    for name, service in sorted(spec.services.items()):
        if service.vip is not None:
            out.append((service.vip.ip, name))
    return out


def vip_views(
    known: Iterable[tuple[str, str]], held: Mapping[str, str], service_of: Mapping[str, str]
) -> list[VipView]:
    """The spec's VIPs, each held or not, and any held that the spec no longer
    names. `held` maps address -> `gateway` or the instance holding it."""
    views = {ip: VipView(ip, owner, ip in held) for ip, owner in known}
    for ip, owner in held.items():
        if ip not in views:
            views[ip] = VipView(ip, service_of.get(owner, owner), True)
    return list(views.values())


class AgentMetrics:
    """The collectors above over this agent's lease, leader loop, instances,
    addresses and store member (None without a member of its own)."""

    def __init__(
        self,
        node: str,
        lease: LeaseKeeper,
        leader: LeaderLoop,
        reconciler: Reconciler,
        addresses: FloatingAddresses,
        member: StoreMemberStatus | None,
    ) -> None:
        self._lease, self._leader, self._reconciler = lease, leader, reconciler
        self._addresses, self._member = addresses, member
        self._registry = CollectorRegistry()
        for collector in (
            CheckCollector(node, self._checks),
            StoreCollector(node, self._store),
            LeaderCollector(node, self._leading),
            VipCollector(node, self._vips),
            VolumeCollector(node, self._volumes),
        ):
            self._registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def _checks(self) -> list[CheckView]:
        return [
            CheckView(r.service, r.instance, r.check_latency)
            for r in self._reconciler.runners.values()
            if r.spec.check is not None
        ]

    def _store(self) -> StoreView:
        return StoreView(
            renewal_latency=self._lease.renewal_latency,
            renewal_failures=self._lease.renewal_failures,
            lease_valid=self._lease.valid,
            member=self._member is not None,
            status=self._member.last if self._member is not None else None,
        )

    def _leading(self) -> LeaderView:
        return LeaderView(self._leader.is_leader, dict(self._leader.actions))

    def _vips(self) -> list[VipView]:
        runners = self._reconciler.runners
        service_of = {instance: r.service for instance, r in runners.items()}
        return vip_views(spec_vips(self._reconciler.spec), self._addresses.held(), service_of)

    def _volumes(self) -> list[VolumeView]:
        return [
            VolumeView(r.service, name, mirror.copies)
            for r in self._reconciler.runners.values()
            for name, mirror in r.volumes.mirrors.items()
        ]


def render(*collectors: Collector) -> bytes:
    """The text of a scrape of `collectors` alone (for tests and tools)."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
