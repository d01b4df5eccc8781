"""The /metrics text a gateway exposes, from engine counters."""

from __future__ import annotations

from ninefold.gateway.engine import Counters, ServiceMetrics
from ninefold.gateway.metrics import render


def snapshot() -> dict[str, ServiceMetrics]:
    total, backend = Counters(), Counters()
    for seconds, status in ((0.002, 200), (0.04, 200), (3.0, 503)):
        for counters in (total, backend):
            counters.requests += 1
            counters.observe(seconds)
            counters.answered(status)
    total.retries = backend.retries = 1
    total.active = backend.active = 2
    return {"web": ServiceMetrics(total=total, backends={"127.0.0.2:20001": backend})}


def test_counters_per_service_and_backend() -> None:
    text = render("n1", snapshot).decode()
    base = 'node="n1",service="web"'
    assert f'ninefold_gateway_requests_total{{backend="",{base}}} 3.0' in text
    assert f'ninefold_gateway_requests_total{{backend="127.0.0.2:20001",{base}}} 3.0' in text
    assert f'ninefold_gateway_responses_total{{backend="",code="2xx",{base}}} 2.0' in text
    assert f'ninefold_gateway_responses_total{{backend="",code="5xx",{base}}} 1.0' in text
    assert f'ninefold_gateway_retries_total{{backend="",{base}}} 1.0' in text
    assert f'ninefold_gateway_active{{backend="",{base}}} 2.0' in text


def test_latency_histogram_is_cumulative() -> None:
    text = render("n1", snapshot).decode()

    def bucket(le: str) -> str:
        labels = f'backend="",le="{le}",node="n1",service="web"'
        return f"ninefold_gateway_latency_seconds_bucket{{{labels}}}"

    assert f"{bucket('0.0025')} 1.0" in text
    assert f"{bucket('0.05')} 2.0" in text
    assert f"{bucket('2.5')} 2.0" in text
    assert f"{bucket('+Inf')} 3.0" in text
    assert 'ninefold_gateway_latency_seconds_count{backend="",node="n1",service="web"} 3.0' in text
