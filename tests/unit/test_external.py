"""External services (`external: [host:port, ...]`): the spec's rules, no
instances placed, the routing entries a node's own checks make of the
endpoints, the cluster's summary of every node's verdict, and the agent's
checker writing what it sees (on a MemoryStore, against a loopback server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ninefold.agent.external_checks import ExternalChecks
from ninefold.agent.journal import EventJournal
from ninefold.agent.membership import LeaseKeeper
from ninefold.decide.external import check_argv, endpoint_targets, routed_endpoints, split_endpoint
from ninefold.decide.plan import demands, plan
from ninefold.gateway.haproxy import checks_for
from ninefold.gateway.routes import build_table
from ninefold.spec import SpecError, parse_spec
from ninefold.spec.loading import dump_spec
from ninefold.state.external_view import endpoint_views, healthy_counts, summarize
from ninefold.state.keys import EVENTS, SPEC_KEY, external_key
from ninefold.state.records import (
    AssignmentRecord,
    EndpointHealth,
    Event,
    ExternalReport,
    InstanceStatus,
)
from ninefold.state.snapshot import ClusterState
from ninefold.state.view import read_view
from ninefold.store.memory import MemoryStore
from tests.helpers import eventually, free_port

HEAD = """\
cluster: t
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n2, address: 127.0.0.2}
services:
"""

SPEC = parse_spec(
    HEAD
    + """\
  web:
    command: [x]
    route: {http: /web}
  db:
    external: ["db1.example:5432", "10.0.0.6:5432", "[fd00::7]:5432"]
    route: {tcp: 15432}
  api:
    external: ["10.0.0.8:80"]
    route: {http: /api}
    check: {http: /health, interval: 1s}
  quiet:
    external: ["10.0.0.9:25"]
""",
    "t.yaml",
)


def issues(services: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(HEAD + services, "t.yaml")
    return [str(issue) for issue in caught.value.issues]


def seen(service: str, endpoint: str, health: str = "healthy", **kw: str) -> EndpointHealth:
    return EndpointHealth.model_validate(
        {"service": service, "endpoint": endpoint, "health": health, **kw}
    )


# --- the spec ------------------------------------------------------------------------


def test_an_external_service_lists_endpoints_and_checks_them_by_tcp_by_default() -> None:
    db = SPEC.services["db"]
    assert db.is_external and db.command is None
    assert [t.endpoint for t in endpoint_targets(SPEC) if t.service == "db"] == db.external
    check = db.external_check()
    assert (check.kind, check.tcp, check.interval, check.start_grace) == ("tcp", "main", 0.5, 0)
    api = SPEC.services["api"].external_check()
    assert (api.kind, api.http, api.interval) == ("http", "/health", 1.0)
    assert split_endpoint("[fd00::7]:5432") == ("fd00::7", 5432)
    assert split_endpoint("db1.example:5432") == ("db1.example", 5432)
    assert parse_spec(dump_spec(SPEC), "again.yaml") == SPEC


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "  db:\n    external: ['a:1']\n    replicas: 2\n    command: [x]\n",
            "t.yaml:6 services.db: an external service runs no instances: replicas, command "
            "cannot go with external (it takes check, route, balance, access)",
        ),
        (
            "  db:\n    external: ['a:1']\n    vip: 10.0.0.9/24\n",
            "t.yaml:6 services.db: an external service runs no instances: vip cannot go",
        ),
        ("  db:\n    external: []\n", "t.yaml:7 services.db.external: must not be empty"),
        ("  db:\n    external: [nowhere]\n", "services.db.external[0]: 'nowhere' is not host:port"),
        (
            "  db:\n    external: ['a:1', 'A:1']\n",
            "t.yaml:7 services.db.external[1]: duplicate endpoint A:1 (also external[0])",
        ),
        (
            "  db:\n    external: ['a:1']\n    route: {http: /db, mtls: true}\n",
            "services.db.route.mtls: mtls reaches instances on other nodes through their mesh "
            "port; every gateway connects to an external endpoint itself",
        ),
        (
            "  db:\n    external: ['a:1']\n    check: {exec: [pg_isready, -h, '{address}', "
            "-p, '{port}', -d, '{volume.x}']}\n",
            "services.db.check.exec[6]: '{volume.x}' is not a placeholder of an external "
            "service's check ({address}, {port}, {port.main}, {service}, {node})",
        ),
        (
            "  db:\n    external: ['a:1']\n    check: {tcp: admin}\n",
            "services.db.check.tcp: no port named 'admin' (ports: main)",
        ),
        ("  db:\n    route: {tcp: 5432}\n", "t.yaml:6 services.db.command: required, but missing"),
    ],
)
def test_what_an_external_service_cannot_have_is_one_clear_line(body: str, expected: str) -> None:
    found = issues(body)
    assert any(expected in line for line in found), found


def test_the_check_exec_of_an_external_service_names_the_endpoint() -> None:
    spec = parse_spec(
        HEAD + "  db:\n    external: ['db1:5432']\n"
        "    check: {exec: [pg_isready, -h, '{address}', -p, '{port.main}', -U, '{node}']}\n",
        "t.yaml",
    )
    (target,) = endpoint_targets(spec)
    argv = check_argv(spec.services["db"], target, "n2")
    assert argv == ["pg_isready", "-h", "db1", "-p", "5432", "-U", "n2"]
    assert check_argv(SPEC.services["db"], target, "n2") is None


# --- nothing placed --------------------------------------------------------------------


def test_the_leader_places_no_instance_of_an_external_service() -> None:
    assert [d.name for d in demands(SPEC)] == ["web"]
    left = AssignmentRecord(service="db", instance="db-0", node="n1")  # from before
    state = ClusterState(SPEC, frozenset({"n1", "n2"}), frozenset(), (left,))
    decision = plan(state)
    assert {r.service for r in decision.write} == {"web"}
    assert decision.remove == [left]


# --- routing -----------------------------------------------------------------------------


def test_a_gateway_routes_to_the_endpoints_its_own_node_finds_healthy() -> None:
    mine = [
        seen("db", "db1.example:5432", address="10.0.0.5"),
        seen("db", "10.0.0.6:5432", "unhealthy"),
        seen("db", "[fd00::7]:5432", "starting"),
        seen("api", "10.0.0.8:80"),
        seen("db", "gone:1"),  # no longer in the spec
    ]
    table = build_table(SPEC, [], node="n1", external=mine)
    db = table.services["db"]
    assert [(b.instance, b.address, b.port, b.node) for b in db.backends] == [
        ("db@db1.example:5432", "10.0.0.5", 5432, "")
    ]
    assert db.backends[0].key == "10.0.0.5:5432" and db.route.tcp == 15432
    assert [b.key for b in table.services["api"].backends] == ["10.0.0.8:80"]
    assert "quiet" not in table.services  # checked, shown, but not routed


def test_each_node_routes_by_its_own_view_of_an_endpoint() -> None:
    """n1 reaches both endpoints, n2 only the second: n2's gateway leaves the
    first out, n1's does not."""
    spec = parse_spec(HEAD + "  db:\n    external: ['10.0.0.5:1', '10.0.0.6:1']\n"
                      "    route: {tcp: 15432}\n", "t.yaml")  # fmt: skip
    n1 = [seen("db", "10.0.0.5:1"), seen("db", "10.0.0.6:1")]
    n2 = [seen("db", "10.0.0.5:1", "unhealthy"), seen("db", "10.0.0.6:1")]
    keys = {
        node: [b.key for b in build_table(spec, [], node=node, external=view).services["db"].live]
        for node, view in (("n1", n1), ("n2", n2))
    }
    assert keys == {"n1": ["10.0.0.5:1", "10.0.0.6:1"], "n2": ["10.0.0.6:1"]}
    assert build_table(spec, [], node="n3").services["db"].backends == ()  # nothing checked yet
    with_host = [seen("db", "10.0.0.5:1")]
    assert [e.address for e in routed_endpoints(spec, "db", with_host)] == ["10.0.0.5"]
    assert routed_endpoints(spec, "nothing", with_host) == []


def test_an_instance_left_from_before_a_service_became_external_gets_no_traffic() -> None:
    left = InstanceStatus(service="db", instance="db-0", node="n1", address="127.0.0.1",
                          ports={"main": 5432}, state="running", health="healthy")  # fmt: skip
    assert build_table(SPEC, [left], node="n1").services["db"].backends == ()


def test_haproxy_mirrors_the_endpoints_check() -> None:
    checks = checks_for(SPEC)
    db, api = checks["db"], checks["api"]
    assert db is not None and db.kind == "tcp"
    assert api is not None and api.http == "/health"


# --- the cluster's view ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdicts", "word"),
    [
        ([], "unknown"),
        (["starting"], "starting"),
        (["healthy", "starting"], "healthy"),
        (["healthy", "healthy"], "healthy"),
        (["unhealthy", "unhealthy"], "unhealthy"),
        (["healthy", "unhealthy"], "partial"),
    ],
)
def test_one_word_for_the_nodes_verdicts(verdicts: list[str], word: str) -> None:
    assert summarize(verdicts) == word


def test_the_view_shows_every_endpoint_with_each_nodes_verdict() -> None:
    reports = [
        ExternalReport(node="n2", endpoints=[
            seen("db", "db1.example:5432", "unhealthy", detail="connect db1.example:5432: refused"),
            seen("db", "10.0.0.6:5432"),
            seen("db", "gone:1"),
        ]),
        ExternalReport(node="n1", endpoints=[
            seen("db", "db1.example:5432"), seen("db", "10.0.0.6:5432"),
        ]),
    ]  # fmt: skip
    views = {(v.service, v.endpoint): v for v in endpoint_views(SPEC, reports)}
    first = views[("db", "db1.example:5432")]
    assert first.health == "partial"
    assert first.nodes == {"n1": "healthy", "n2": "unhealthy"}
    assert first.detail == "n2: connect db1.example:5432: refused"
    assert views[("db", "10.0.0.6:5432")].health == "healthy"
    assert views[("db", "[fd00::7]:5432")].health == "unknown"
    assert views[("api", "10.0.0.8:80")].nodes == {}
    assert ("db", "gone:1") not in views
    assert healthy_counts(views.values()) == {"db": 1, "api": 0, "quiet": 0}


async def test_status_counts_endpoints_for_an_external_service() -> None:
    store = MemoryStore()
    await store.put(SPEC_KEY, dump_spec(SPEC).encode())
    report = ExternalReport(node="n1", endpoints=[seen("quiet", "10.0.0.9:25")])
    await store.put(external_key("n1"), report.encode())
    view = (await read_view(store, SPEC)).to_json()
    services = {s["name"]: s for s in view["services"]}
    assert (services["quiet"]["mode"], services["quiet"]["healthy"]) == ("external", 1)
    assert (services["db"]["desired"], services["db"]["healthy"]) == (3, 0)
    quiet = [e for e in view["external"] if e["service"] == "quiet"]
    assert quiet == [{"service": "quiet", "endpoint": "10.0.0.9:25", "health": "healthy",
                      "nodes": {"n1": "healthy"}, "detail": ""}]  # fmt: skip
    assert not [i for i in view["instances"] if i["service"] in ("db", "quiet")]


# --- the checker -------------------------------------------------------------------------------


@pytest.fixture
async def lease_on_memory() -> AsyncIterator[tuple[MemoryStore, LeaseKeeper]]:
    store = MemoryStore()
    keeper = LeaseKeeper(store, ttl=5.0, interval=0.05, fence_after=3.0)
    await keeper.start()
    try:
        yield store, keeper
    finally:
        await keeper.stop()
        await store.close()


async def test_the_checker_writes_what_this_node_sees_and_journals_changes(
    lease_on_memory: tuple[MemoryStore, LeaseKeeper],
) -> None:
    store, keeper = lease_on_memory
    up, down = free_port(), free_port()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", up)
    spec = parse_spec(
        HEAD + f"  db:\n    external: ['127.0.0.1:{up}', 'localhost:{down}']\n"
        "    check: {tcp: true, interval: 50ms, timeout: 200ms, fall: 1, rise: 1}\n",
        "t.yaml",
    )
    await store.put(SPEC_KEY, dump_spec(spec).encode())
    checks = ExternalChecks(store, "n1", keeper, EventJournal(store, "n1"), spec)
    task = asyncio.create_task(checks.run())

    async def verdicts() -> dict[str, tuple[str, str]]:
        item = await store.get(external_key("n1"))
        if item is None:
            return {}
        report = ExternalReport.decode(item.value)
        return {e.endpoint: (e.health, e.address) for e in report.endpoints}

    async def settled() -> dict[str, tuple[str, str]] | None:
        got = await verdicts()
        return got if got and all(h != "starting" for h, _ in got.values()) else None

    try:
        got = await eventually(settled, 10, "both endpoints checked")
        assert got == {
            f"127.0.0.1:{up}": ("healthy", "127.0.0.1"),
            f"localhost:{down}": ("unhealthy", got[f"localhost:{down}"][1]),
        }
        assert got[f"localhost:{down}"][1] in ("127.0.0.1", "::1")  # resolved for the gateway
        assert checks.health()[f"db@127.0.0.1:{up}"] == "healthy"
        server.close()
        await server.wait_closed()

        async def first_down() -> bool:
            return (await verdicts()).get(f"127.0.0.1:{up}", ("",))[0] == "unhealthy"

        await eventually(first_down, 10, "the closed endpoint reported down")
        events = [Event.decode(i.value) for i in (await store.list(EVENTS)).items]
        downs = {e.subject for e in events if e.kind == "endpoint-down"}
        assert downs == {f"db@127.0.0.1:{up}", f"db@localhost:{down}"}

        # the spec drops the service: the report empties
        await store.put(SPEC_KEY, dump_spec(parse_spec(HEAD + "  web: {command: [x]}\n")).encode())
        await eventually(lambda: _empty(store), 10, "an empty report")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()


async def _empty(store: MemoryStore) -> bool:
    item = await store.get(external_key("n1"))
    return item is not None and ExternalReport.decode(item.value).endpoints == []
