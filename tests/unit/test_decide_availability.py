"""Measured availability (decide/availability.py): merging the nodes' probes,
the edges' precision, the windows, the nines and the incidents' causes."""

from __future__ import annotations

import math
import random

import pytest

from ninefold.decide.availability import (
    KEEP,
    DownInterval,
    NodeObservation,
    Period,
    Traffic,
    cause_of,
    coverage,
    down_periods,
    nines,
    service_availability,
    summary_lines,
)
from ninefold.state.records import Event

NOW = 1_800_000_000.0


def probe(
    node: str,
    outages: list[tuple[float, float]],
    begin: float,
    end: float,
    phase: float,
    every: float = 1.0,
    fast: float = 0.1,
) -> NodeObservation:
    """What agent/probes.py records, probing from `begin` to `end` at `phase`
    (seconds past each whole `every`), ten times faster while it fails, with
    the route down during each of `outages` ([start, end) true times)."""

    def down(t: float) -> bool:
        return any(a <= t < b for a, b in outages)

    t = math.floor(begin) + phase
    if t < begin:
        t += every
    downs: list[DownInterval] = []
    last_ok: float | None = None
    open_: dict[str, float | None] | None = None
    while t < end:
        if down(t):
            if open_ is None:
                open_ = {"first": t, "last": t, "last_ok": last_ok}
            open_["last"] = t
            t += fast
            continue
        if open_ is not None:
            first, last = open_["first"], open_["last"]
            assert first is not None and last is not None
            downs.append(DownInterval(node, first, last, open_["last_ok"], t))
            open_ = None
            # back on the node's phase
            t = math.floor(t) + phase + (every if math.floor(t) + phase <= t else 0)
            last_ok = downs[-1].first_ok
            continue
        last_ok = t
        t += every
    if open_ is not None:
        first, last = open_["first"], open_["last"]
        assert first is not None and last is not None
        downs.append(DownInterval(node, first, last, open_["last_ok"], None))
    return NodeObservation(node, ((begin, end),), tuple(downs))


def three(outages: list[tuple[float, float]], end: float = NOW) -> list[NodeObservation]:
    begin = NOW - 7200
    return [probe(n, outages, begin, end, phase) for n, phase in zip(
        ("n1", "n2", "n3"), (0.0, 1 / 3, 2 / 3), strict=True)]  # fmt: skip


def downtime(periods: list[Period], now: float = NOW) -> float:
    return sum((now if p.end is None else p.end) - p.start for p in periods)


# -- one node ------------------------------------------------------------------------


def test_a_route_that_never_failed_is_fully_available() -> None:
    obs = [NodeObservation("n1", ((NOW - 3600, NOW),))]
    result = service_availability("web", obs, [], [], NOW)
    hour = result.windows["1h"]
    assert hour.downtime_seconds == 0 and hour.availability_percent == 100.0
    assert hour.observed_seconds == 3600
    assert hour.nines == round(math.log10(3600 / 0.5), 2)  # what an hour can show
    assert result.incidents == [] and result.observers == ["n1"]


def test_one_node_estimates_each_edge_from_the_middle_of_its_bracket() -> None:
    down = DownInterval("n1", first_failed=NOW - 100, last_failed=NOW - 95.1,
                        last_ok=NOW - 101, first_ok=NOW - 95.0)  # fmt: skip
    obs = [NodeObservation("n1", ((NOW - 3600, NOW),), (down,))]
    [period] = down_periods(obs, NOW)
    assert period.start == pytest.approx(NOW - 100.5)
    assert period.end == pytest.approx(NOW - 95.05)


@pytest.mark.parametrize("seed", range(40))
def test_one_node_measures_an_outage_within_half_a_second_and_a_fast_probe(seed: int) -> None:
    rng = random.Random(seed)
    start = NOW - 1000 + rng.uniform(0, 10)
    length = rng.uniform(0.3, 30)
    obs = [probe("n1", [(start, start + length)], NOW - 3600, NOW, rng.uniform(0, 1))]
    periods = down_periods(obs, NOW)
    if not periods:  # short enough to fall between two probes
        assert length < 1.0
        return
    [period] = periods
    assert period.end is not None
    assert abs(period.start - start) <= 0.5 + 1e-6
    assert abs(period.end - (start + length)) <= 0.05 + 1e-6
    assert abs(downtime(periods) - length) <= 0.55 + 1e-6


# -- three nodes ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(60))
def test_three_staggered_nodes_narrow_the_edges(seed: int) -> None:
    rng = random.Random(1000 + seed)
    start = NOW - 1000 + rng.uniform(0, 10)
    length = rng.uniform(1.0, 60)
    periods = down_periods(three([(start, start + length)]), NOW)
    [period] = periods
    assert period.end is not None
    # each start bracket is 1 s wide, shifted by 1/3 s: their intersection is 1/3 s
    assert abs(period.start - start) <= 1 / 6 + 1e-6
    assert abs(period.end - (start + length)) <= 0.05 + 1e-6
    assert abs(downtime(periods) - length) <= 0.22


def test_an_outage_only_a_cut_off_node_saw_is_no_outage() -> None:
    start = NOW - 500.25
    cut_off = probe("n3", [(start, start + 40)], NOW - 3600, NOW, 0.5)
    others = [probe(n, [], NOW - 3600, NOW, p) for n, p in (("n1", 0.0), ("n2", 0.3))]
    assert cut_off.downs and down_periods([*others, cut_off], NOW) == []
    result = service_availability("web", [*others, cut_off], [], [], NOW)
    assert result.windows["1h"].availability_percent == 100.0


def test_a_node_that_stopped_probing_has_no_say() -> None:
    start, end = NOW - 600.4, NOW - 580.2
    n1 = probe("n1", [(start, end)], NOW - 3600, NOW, 0.0)
    n2 = probe("n2", [(start, end)], NOW - 3600, NOW, 0.5)
    n3 = probe("n3", [], NOW - 3600, NOW - 700, 0.25)  # its agent was stopped before
    [period] = down_periods([n1, n2, n3], NOW)
    assert period.end is not None
    assert abs(period.start - start) <= 0.25 + 1e-6 and abs(period.end - end) <= 0.05 + 1e-6


def test_a_node_joining_during_an_outage_does_not_end_it() -> None:
    start, end = NOW - 600.4, NOW - 560.2
    n1 = probe("n1", [(start, end)], NOW - 3600, NOW, 0.0)
    n2 = probe("n2", [(start, end)], NOW - 580, NOW, 0.5)  # came up during it
    assert n2.downs[0].last_ok is None
    [period] = down_periods([n1, n2], NOW)
    assert period.end is not None
    assert abs(period.start - start) <= 0.5 + 1e-6 and abs(period.end - end) <= 0.05 + 1e-6


def test_a_partial_outage_counts_only_while_every_node_saw_it() -> None:
    n1 = probe("n1", [(NOW - 600.3, NOW - 500.3)], NOW - 3600, NOW, 0.0)
    n2 = probe("n2", [(NOW - 550.6, NOW - 540.6)], NOW - 3600, NOW, 0.5)
    [period] = down_periods([n1, n2], NOW)
    assert period.end is not None
    # n1's start bracket (100 s earlier) does not narrow n2's
    assert abs(period.start - (NOW - 550.6)) <= 0.5 + 1e-6
    assert abs(period.end - (NOW - 540.6)) <= 0.05 + 1e-6


def test_two_outages_are_two_incidents() -> None:
    outages = [(NOW - 900.5, NOW - 890.5), (NOW - 300.2, NOW - 297.1)]
    periods = down_periods(three(outages), NOW)
    assert len(periods) == 2
    assert abs(downtime(periods) - 13.1) <= 0.4


def test_an_ongoing_outage_has_no_end_and_counts_up_to_now() -> None:
    start = NOW - 30.7
    obs = three([(start, NOW + 100)])
    assert all(o.downs[-1].first_ok is None for o in obs)
    [period] = down_periods(obs, NOW)
    assert period.end is None and abs(period.start - start) <= 1 / 6 + 1e-6
    result = service_availability("web", obs, [], [], NOW)
    [incident] = result.incidents
    assert incident.end is None and abs(incident.duration(NOW) - 30.7) <= 0.2
    assert abs(result.windows["1h"].downtime_seconds - 30.7) <= 0.2


def test_a_node_that_died_during_an_outage_stops_at_its_last_write() -> None:
    start, end = NOW - 100.3, NOW - 60.2
    n1 = probe("n1", [(start, end)], NOW - 3600, NOW, 0.0)
    dead = probe("n2", [(start, end)], NOW - 3600, NOW - 80, 0.5)  # died, record open
    assert dead.downs[-1].first_ok is None
    [period] = down_periods([n1, dead], NOW)
    assert period.end is not None and abs(period.end - end) <= 0.05 + 1e-6


# -- coverage --------------------------------------------------------------------------


def test_coverage_runs_on_to_now_only_for_a_live_node_still_probing() -> None:
    spans = [(NOW - 100, NOW - 50), (NOW - 40, NOW - 10)]
    assert coverage(spans, True, True, NOW)[-1] == (NOW - 40, NOW)
    assert coverage(spans, True, False, NOW)[-1] == (NOW - 40, NOW - 10)  # died
    assert coverage(spans, False, True, NOW)[-1] == (NOW - 40, NOW - 10)  # stopped
    assert coverage(spans, True, True, NOW, NOW - 10)[-1] == (NOW - 40, NOW)  # written lately
    stale = coverage(spans, True, True, NOW, NOW - 100)  # its agent died and came back
    assert stale[-1] == (NOW - 40, NOW - 10)
    spans = [(NOW - 10, NOW - 5), (NOW - 5, NOW - 2), (NOW - KEEP - 9, NOW - KEEP)]
    merged = coverage(spans, False, True, NOW)
    assert merged == ((NOW - 10, NOW - 2),)


# -- windows and nines --------------------------------------------------------------


def outage(start: float, seconds: float) -> DownInterval:
    return DownInterval("n1", start, start + seconds, start, start + seconds)


def test_windows_count_only_their_part_of_each_outage() -> None:
    obs = [
        NodeObservation(
            "n1",
            ((NOW - 40 * 86400, NOW),),
            (
                DownInterval("n1", NOW - 1800, NOW - 1790, NOW - 1800, NOW - 1790),  # in 1h
                DownInterval("n1", NOW - 7200, NOW - 7100, NOW - 7200, NOW - 7100),  # 24h
                outage(NOW - 20 * 86400, 1000),
                outage(NOW - 35 * 86400, 50),
                DownInterval("n1", NOW - 3610, NOW - 3590, NOW - 3610, NOW - 3590),  # across
            ),
        )
    ]
    result = service_availability("web", obs, [], [], NOW)
    w = result.windows
    assert w["1h"].downtime_seconds == pytest.approx(20.0)
    assert w["24h"].downtime_seconds == pytest.approx(130.0)
    assert w["30d"].downtime_seconds == pytest.approx(1130.0)
    assert w["30d"].observed_seconds == pytest.approx(KEEP)
    assert w["1h"].availability_percent == pytest.approx(100 * (1 - 20 / 3600), abs=1e-4)
    assert len(result.incidents) == 4  # the one 35 days ago is gone


def test_observed_time_is_the_union_of_the_nodes_probing() -> None:
    obs = [
        NodeObservation("n1", ((NOW - 3600, NOW - 1800),)),
        NodeObservation("n2", ((NOW - 2000, NOW - 600),)),
    ]
    hour = service_availability("web", obs, [], [], NOW).windows["1h"]
    assert hour.observed_seconds == pytest.approx(3000)
    assert service_availability("web", [], [], [], NOW).windows["1h"].availability_percent is None


@pytest.mark.parametrize(
    ("down", "observed", "expected"),
    [
        (36.0, 3600.0, 2.0),  # 99 %
        (3.6, 3600.0, 3.0),  # 99.9 %
        (0.0, 3600.0, 3.86),  # what an hour can show at +-0.5 s
        (0.1, 3600.0, 3.86),
        (86.4, 86400.0, 3.0),
        (2592.0, 2592000.0, 3.0),
        (3600.0, 3600.0, 0.0),
        (0.0, 0.0, None),
    ],
)
def test_nines(down: float, observed: float, expected: float | None) -> None:
    assert nines(down, observed) == expected


def test_requests_through_the_gateways_are_counted_per_window() -> None:
    traffic = [
        Traffic(NOW - 120, 100, 2),
        Traffic(NOW - 60, 50, 0),
        Traffic(NOW - 7200, 1000, 10),
        Traffic(NOW - 10 * 86400, 5, 5),
        Traffic(NOW - 86400 - 1000, 7, 7, seconds=3600),  # its middle is in the 24 h
        Traffic(NOW - 86400 - 3000, 9, 9, seconds=3600),  # its middle is not
    ]
    obs = [NodeObservation("n1", ((NOW - 3600, NOW),))]
    w = service_availability("web", obs, [], traffic, NOW).windows
    assert (w["1h"].requests_answered, w["1h"].requests_failed) == (150, 2)
    assert (w["24h"].requests_answered, w["24h"].requests_failed) == (1157, 19)
    assert (w["30d"].requests_answered, w["30d"].requests_failed) == (1171, 33)
    assert w["1h"].request_success_percent == pytest.approx(100 * 150 / 152, abs=1e-3)


# -- causes ---------------------------------------------------------------------------


def event(t: float, kind: str, subject: str, reason: str = "", **data: object) -> Event:
    return Event(time=t, kind=kind, subject=subject, reason=reason, node="n1", data=data)


START = NOW - 100

JOURNAL = [event(NOW - 5000, "leader", "n1", "elected")]


def test_killed_instances_are_said_together() -> None:
    events = [
        *JOURNAL,
        event(START + 0.01, "exited", "web-0", "killed by SIGKILL", code=-9),
        event(START + 0.02, "exited", "web-1", "killed by SIGKILL", code=-9),
        event(START + 1.5, "health", "web-0", "unhealthy"),
        event(START + 2.0, "restarted", "web-0", "in 1s"),
        event(START + 0.5, "exited", "webapp-0", "killed by SIGKILL"),  # another service
    ]
    assert cause_of("web", START, events) == "web-0, web-1 exited (killed by SIGKILL)"


def test_a_lost_node_comes_after_the_outage_starts() -> None:
    events = [*JOURNAL, event(START + 2.6, "node-lost", "n2", "lease expired"),
              event(START + 3.0, "moved", "web-0", "n2 unavailable")]  # fmt: skip
    assert cause_of("web", START, events) == "node n2 lost (lease expired)"


def test_a_failover_and_a_health_check() -> None:
    failover = event(START + 1, "failover", "db", "n1/db-0 -> n2/db-1")
    assert cause_of("db", START, [*JOURNAL, failover]) == "failover of db (n1/db-0 -> n2/db-1)"
    health = [*JOURNAL, event(START + 1.6, "health", "web-2", "unhealthy"),
              event(START + 5, "health", "web-2", "healthy")]  # fmt: skip
    assert cause_of("web", START, health) == "web-2 unhealthy"


def test_a_drain_moves_the_instances_before_the_outage() -> None:
    events = [*JOURNAL, event(START - 3, "moved", "web-0", "n1 drained"),
              event(START - 0.2, "stopped", "web-0", "unassigned")]  # fmt: skip
    assert cause_of("web", START, events) == "web-0 stopped (unassigned)"


def test_no_event_near_the_start() -> None:
    assert cause_of("web", START, JOURNAL).startswith("unknown (no event")
    late = [event(START + 100, "exited", "web-0")]
    assert cause_of("web", START, late).startswith("unknown (the event journal does not reach")
    assert cause_of("web", START, []).startswith("unknown (the event journal does not reach")


def test_incidents_carry_their_cause() -> None:
    start = NOW - 300.3
    events = [*JOURNAL, event(start + 0.02, "exited", "web-0", "killed by SIGKILL")]
    result = service_availability("web", three([(start, start + 4.2)]), events, [], NOW)
    [incident] = result.incidents
    assert incident.cause == "web-0 exited (killed by SIGKILL)"
    assert incident.end is not None and abs(incident.duration(NOW) - 4.2) <= 0.22


def test_a_node_back_during_an_outage_saw_it_from_its_first_probe_only() -> None:
    first = (NOW - 3600, NOW - 1000)
    second = (NOW - 500.0, NOW)
    down = DownInterval("n1", NOW - 499.9, NOW - 480.05, None, NOW - 479.95)
    [period] = down_periods([NodeObservation("n1", (first, second), (down,))], NOW)
    assert period.start == NOW - 500.0 and period.end == pytest.approx(NOW - 480.0)


def test_summary_lines_for_the_demo_and_the_drills() -> None:
    start = NOW - 300.3
    events = [*JOURNAL, event(start + 0.02, "exited", "web-0", "killed by SIGKILL")]
    measured = service_availability("web", three([(start, start + 4.2)]), events, [], NOW)
    hour = measured.windows["1h"]
    answer = {
        "time": NOW,
        "services": [
            {
                "service": "web",
                "windows": {"1h": {"availability_percent": hour.availability_percent,
                                   "nines": hour.nines,
                                   "downtime_seconds": hour.downtime_seconds}},
                "incidents": [{"start": i.start, "end": i.end, "cause": i.cause}
                              for i in measured.incidents],
            },
            {"service": "api", "windows": {"1h": {"availability_percent": 100.0, "nines": 3.86,
                                                  "downtime_seconds": 0.0}}, "incidents": []},
            {"service": "new", "windows": {"1h": {"availability_percent": None}}},
        ],
    }  # fmt: skip
    web, api, new = summary_lines(answer)
    assert web.startswith("web: 99.88") and "over 1h (2.9" in web, web
    assert "s down in 1 incident, the last: web-0 exited (killed by SIGKILL)" in web, web
    assert api == "api: 100% over 1h (3.86 nines), no downtime"
    assert new == "new: not observed yet"
