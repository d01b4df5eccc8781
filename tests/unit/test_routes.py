"""The routing table as a pure function of the spec and instance status."""

from __future__ import annotations

from ninefold.gateway.routes import build_table
from ninefold.spec import parse_spec
from ninefold.state.records import InstanceStatus

SPEC = parse_spec(
    """
cluster: t
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n2, address: 127.0.0.2}
services:
  web:
    command: [x]
    replicas: 2
    ports: [main, admin]
    route: {http: /web}
  api:
    command: [x]
    route: {http: /web/api, strip_prefix: false}
  shop:
    command: [x]
    route: {host: shop.example, http: /}
  root:
    command: [x]
    route: {http: /}
  db:
    command: [x]
    mode: active-passive
    replicas: 2
    route: {tcp: 5432}
  hidden:
    command: [x]
""",
    "t.yaml",
)


def status(instance: str, node: str = "n1", **kw: object) -> InstanceStatus:
    service = instance.rsplit("-", 1)[0]
    defaults: dict[str, object] = {
        "service": service,
        "instance": instance,
        "node": node,
        "address": {"n1": "127.0.0.1", "n2": "127.0.0.2"}[node],
        "ports": {"main": 20000 + int(instance[-1]), "admin": 21000},
        "state": "running",
        "health": "healthy",
    }
    defaults.update(kw)
    return InstanceStatus.model_validate(defaults)


def test_only_serving_instances_are_backends() -> None:
    table = build_table(
        SPEC,
        [
            status("web-0"),
            status("web-1", "n2", health="unhealthy"),
            status("api-0", state="backoff"),
            status("root-0", health="none"),
        ],
    )
    assert [b.key for b in table.services["web"].backends] == ["127.0.0.1:20000"]
    assert table.services["api"].backends == ()
    assert [b.instance for b in table.services["root"].backends] == ["root-0"]
    assert "hidden" not in table.services


def test_route_port_defaults_to_the_first_port() -> None:
    table = build_table(SPEC, [status("web-1", "n2")])
    assert table.services["web"].backends[0].key == "127.0.0.2:20001"


def test_active_passive_routes_only_to_the_active() -> None:
    table = build_table(
        SPEC,
        [status("db-0", role="active", fencing_token=7), status("db-1", "n2", role="standby")],
    )
    assert [b.instance for b in table.tcp()[5432].backends] == ["db-0"]


def test_draining_backends_stay_but_take_nothing_new() -> None:
    table = build_table(SPEC, [status("web-0", draining=True), status("web-1", "n2")])
    web = table.services["web"]
    assert [b.draining for b in web.backends] == [True, False]
    assert [b.instance for b in web.live] == ["web-1"]


def test_longest_prefix_wins_and_prefix_is_stripped() -> None:
    table = build_table(SPEC, [])
    routes, path = table.match("localhost:8080", "/web/api/users?x=1")
    assert (routes.service, path) == ("api", "/web/api/users?x=1")
    routes, path = table.match(None, "/web/index.html")
    assert (routes.service, path) == ("web", "/index.html")
    routes, path = table.match(None, "/web")
    assert (routes.service, path) == ("web", "/")
    routes, path = table.match(None, "/web?q=1")
    assert (routes.service, path) == ("web", "/?q=1")


def test_a_prefix_matches_whole_segments_only() -> None:
    routes, path = build_table(SPEC, []).match(None, "/webby")
    assert (routes.service, path) == ("root", "/webby")


def test_host_routes_come_before_hostless_ones() -> None:
    table = build_table(SPEC, [])
    assert table.match("shop.example:8080", "/web/x")[0].service == "shop"
    assert table.match("SHOP.example", "/")[0].service == "shop"
    assert table.match("other.example", "/")[0].service == "root"


def test_no_route_without_a_catch_all() -> None:
    spec = parse_spec(
        "cluster: t\nnodes: [{name: n1, address: 127.0.0.1, store: true}]\n"
        "services: {web: {command: [x], route: {http: /web}}}\n"
    )
    assert build_table(spec, []).match(None, "/other") is None


def test_same_inputs_same_table() -> None:
    statuses = [status("web-0"), status("web-1", "n2")]
    assert build_table(SPEC, statuses) == build_table(SPEC, list(reversed(statuses)))
