"""HAProxy's `show stat` turned into the engine's monotonic Counters.

HAProxy's counters live in a worker and start from zero in every new worker
(a reload, a restart), and a server slot serves different instances over
time. So the ledger reads them periodically and adds what grew since the last
reading to the service and to the instance that holds the slot now. What a
worker counts after its last reading before a reload is lost (the engine
reads just before reloading, so this is only what the old worker finishes).

Mapping:

- requests: ``req_tot`` (HTTP) or ``stot`` (sessions, TCP);
- responses: ``hrsp_1xx`` .. ``hrsp_5xx``; of a backend's 5xx, those no
  server sent (HAProxy's own 502/503/504) count as ``error``;
- retries: ``wretr + wredis``;
- active: ``scur`` (streams being served), summed over the current worker
  and old workers still finishing;
- latency: HAProxy keeps no histogram, only ``ttime``, the average total time
  of the last 1024 requests. Each reading puts the requests that arrived since
  the previous one into the bucket of the current average (and adds count x
  average to the sum). The shape of the distribution is lost: a mix of fast and
  very slow requests shows as all middling.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from ninefold.gateway.engine import LATENCY_BUCKETS, Counters, MetricsSnapshot, ServiceMetrics
from ninefold.gateway.haproxy.config import SlotMap, service_of_backend, slot_number

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_COUNTERS = ("req_tot", "stot", "wretr", "wredis", *(f"hrsp_{c}" for c in _CLASSES))


def _int(row: Mapping[str, str], name: str) -> int:
    value = row.get(name, "")
    return int(value) if value.isdigit() else 0


class TrafficLedger:
    def __init__(self) -> None:
        self._metrics: dict[str, ServiceMetrics] = {}
        self._last: dict[tuple[str, str], dict[str, int]] = {}
        self._worker: int | None = None
        self._inflight: dict[str, int] = {}

    def update(
        self,
        worker: int,
        rows: Iterable[Mapping[str, str]],
        slots: SlotMap,
        old_rows: Iterable[Mapping[str, str]] = (),
    ) -> None:
        """Take one reading of worker ``worker`` (``old_rows``: old workers', for ``active``)."""
        if worker != self._worker:
            self._worker, self._last = worker, {}
        finishing: dict[tuple[str, str], int] = {}
        for row in old_rows:
            pos = (row.get("pxname", ""), row.get("svname", ""))
            finishing[pos] = finishing.get(pos, 0) + _int(row, "scur")
        inflight: dict[str, int] = {}
        served_5xx: dict[str, int] = {}
        backend_rows = []
        for row in rows:
            proxy, server = row.get("pxname", ""), row.get("svname", "")
            service = service_of_backend(proxy)
            if service is None or server == "FRONTEND":
                continue
            delta = self._delta(proxy, server, row)
            scur = _int(row, "scur") + finishing.get((proxy, server), 0)
            if server == "BACKEND":
                backend_rows.append((service, row, delta, scur))
                continue
            served_5xx[service] = served_5xx.get(service, 0) + delta["hrsp_5xx"]
            slot = slot_number(server)
            key = slots.key_of(service, slot) if slot is not None else None
            if key is None:
                continue
            metrics = self._metrics.setdefault(service, ServiceMetrics())
            _add(metrics.backends.setdefault(key, Counters()), row, delta, scur)
            inflight[key] = inflight.get(key, 0) + scur
        for service, row, delta, scur in backend_rows:
            total = self._metrics.setdefault(service, ServiceMetrics()).total
            served = min(served_5xx.get(service, 0), delta["hrsp_5xx"])
            own = delta["hrsp_5xx"] - served
            _add(total, row, {**delta, "hrsp_5xx": served}, scur)
            if own:
                total.responses["error"] = total.responses.get("error", 0) + own
        self._inflight = inflight

    def _delta(self, proxy: str, server: str, row: Mapping[str, str]) -> dict[str, int]:
        now = {name: _int(row, name) for name in _COUNTERS}
        before = self._last.get((proxy, server), {})
        self._last[(proxy, server)] = now
        return {name: max(0, now[name] - before.get(name, 0)) for name in _COUNTERS}

    def inflight(self, key: str) -> int:
        return self._inflight.get(key, 0)

    def snapshot(self) -> MetricsSnapshot:
        return copy.deepcopy(self._metrics)


def _add(counters: Counters, row: Mapping[str, str], delta: Mapping[str, int], scur: int) -> None:
    requests = delta["req_tot"] if row.get("mode") == "http" else delta["stot"]
    counters.requests += requests
    counters.retries += delta["wretr"] + delta["wredis"]
    counters.active = scur
    for cls in _CLASSES:
        if delta[f"hrsp_{cls}"]:
            counters.responses[cls] = counters.responses.get(cls, 0) + delta[f"hrsp_{cls}"]
    if requests:
        average = _int(row, "ttime") / 1000.0
        counters.latency_sum += requests * average
        for i, bound in enumerate(LATENCY_BUCKETS):
            if average <= bound:
                counters.latency_counts[i] += requests
                break
