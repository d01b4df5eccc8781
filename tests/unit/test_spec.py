"""The cluster spec: every kind of bad input names its line, path and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from ninefold import defaults
from ninefold.spec import (
    ClusterSpec,
    SpecError,
    SpecIssue,
    dump_spec,
    format_duration,
    load_spec,
    parse_duration,
    parse_spec,
    placeholder_names,
    render,
)

# Five lines of a valid cluster; a test's services then start on line 7.
HEAD = """\
cluster: shop
nodes:
  - {name: n1, address: 127.0.0.1, zone: a, store: true}
  - {name: n2, address: 127.0.0.2, zone: b, store: true, labels: {disk: ssd}}
  - {name: n3, address: 127.0.0.3, zone: c, store: true, labels: {disk: ssd}}
services:
"""

SKETCH = """\
cluster: shop
store: {mode: embedded}
nodes:
  - {name: n1, address: 127.0.0.1, zone: a, store: true}
  - {name: n2, address: 127.0.0.2, zone: b, store: true}
  - {name: n3, address: 127.0.0.3, zone: c, store: true}
services:
  web:
    command: [python, -m, http.server, "{port}"]
    replicas: 2
    check: {http: /, interval: 500ms, fall: 3, rise: 2}
    placement: {spread: zone}
  queue:
    mode: active-passive
    command: [./queue, --data, "{volume.data}"]
    volumes: {data: null}
    on_promote: [./promote.sh]
"""


def issues_of(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "shop.yaml")
    return caught.value.issues


def only_issue(text: str) -> SpecIssue:
    issues = issues_of(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


# (name, spec text, line, path, part of the message)
BAD = [
    (
        "bad duration",
        HEAD + "  web:\n    command: x\n    check: {http: /, interval: 5 parsecs}\n",
        9,
        "services.web.check.interval",
        "'5 parsecs' is not a duration",
    ),
    (
        "negative duration",
        HEAD + "  web:\n    command: x\n    stop_timeout: -2s\n",
        9,
        "services.web.stop_timeout",
        "is not a duration",
    ),
    (
        "zero check timeout",
        HEAD + "  web:\n    command: x\n    check: {tcp: main, timeout: 0}\n",
        9,
        "services.web.check.timeout",
        "must be greater than 0",
    ),
    (
        "unknown key with suggestion",
        HEAD + "  web:\n    command: x\n    replica: 2\n",
        9,
        "services.web.replica",
        "unknown key 'replica' (did you mean 'replicas'?)",
    ),
    (
        "unknown top-level key",
        "cluster: shop\nzzz: 1\nnodes: [{name: n1, address: 10.0.0.1, store: true}]\n",
        2,
        "zzz",
        "unknown key 'zzz'",
    ),
    (
        "wrong type",
        HEAD + "  web:\n    command: x\n    replicas: two\n",
        9,
        "services.web.replicas",
        "expected a whole number, got 'two'",
    ),
    (
        "mapping expected",
        HEAD + "  web:\n    command: x\n    check: 5\n",
        9,
        "services.web.check",
        "expected a mapping, got 5",
    ),
    (
        "boolean where text is needed",
        HEAD + "  web:\n    command: x\n    env: {DEBUG: yes}\n",
        9,
        "services.web.env.DEBUG",
        "expected a string, got true (quote it)",
    ),
    (
        "negative replicas",
        HEAD + "  web:\n    command: x\n    replicas: -1\n",
        9,
        "services.web.replicas",
        "must be at least 1, got -1",
    ),
    (
        "replicas more than matching nodes",
        HEAD
        + "  web:\n    command: x\n    replicas: 3\n    placement: {constraints: {disk: ssd}}\n",
        9,
        "services.web.replicas",
        "3 replicas need 3 nodes matching {disk: ssd}, only 2 match",
    ),
    (
        "constraint on a label no node has (falls back to the service's line)",
        HEAD + "  web:\n    command: x\n    placement: {constraints: {gpu: a100}}\n",
        7,
        "services.web.replicas",
        "1 replica needs 1 node matching {gpu: a100}, none match",
    ),
    (
        "replicas more than nodes",
        HEAD + "  web:\n    command: x\n    replicas: 4\n",
        9,
        "services.web.replicas",
        "4 replicas need 4 nodes, the cluster has 3",
    ),
    (
        "unknown placeholder",
        HEAD + '  web:\n    command: [run, --x, "{adress}"]\n',
        8,
        "services.web.command[2]",
        "unknown placeholder '{adress}' (did you mean '{address}'?)",
    ),
    (
        "undeclared port placeholder",
        HEAD + '  web:\n    command: [run, "{port.admin}"]\n',
        8,
        "services.web.command[1]",
        "'{port.admin}' names no declared port (ports: main)",
    ),
    (
        "undeclared volume placeholder in env",
        HEAD + '  web:\n    command: run\n    env:\n      DATA: "{volume.data}"\n',
        10,
        "services.web.env.DATA",
        "'{volume.data}' names no declared volume",
    ),
    (
        "unbalanced brace",
        HEAD + '  web:\n    command: run\n    workdir: "/srv/{node"\n',
        9,
        "services.web.workdir",
        "unbalanced '{'",
    ),
    (
        "bad address",
        "cluster: shop\nnodes:\n  - {name: n1, address: 127.0.0.1, store: true}\n"
        "  - name: n2\n    address: 300.0.0.1\n",
        5,
        "nodes[1].address",
        "'300.0.0.1' is not an IP address",
    ),
    (
        "duplicate node name",
        "cluster: shop\nnodes:\n  - {name: n1, address: 127.0.0.1, store: true}\n"
        "  - {name: n1, address: 127.0.0.2}\n",
        4,
        "nodes[1].name",
        "duplicate node name 'n1' (also nodes[0])",
    ),
    (
        "duplicate address and port",
        "cluster: shop\nnodes:\n  - {name: n1, address: 127.0.0.1, store: true}\n"
        "  - {name: n2, address: 127.0.0.1, ports: {api: 7071}}\n",
        4,
        "nodes[1].address",
        "node 'n1' has the same address and port 8080 (gateway_http)",
    ),
    (
        "two ports of one node the same",
        "cluster: shop\nnodes:\n  - {name: n1, address: 127.0.0.1, store: true,\n"
        "     ports: {api: 2379}}\n",
        4,
        "nodes[0].ports.store_client",
        "port 2379 is also this node's api port",
    ),
    (
        "port out of range",
        "cluster: shop\nnodes:\n  - name: n1\n    address: 127.0.0.1\n    store: true\n"
        "    ports: {gateway_http: 70000}\n",
        6,
        "nodes[0].ports.gateway_http",
        "port must be 1..65535, got 70000",
    ),
    (
        "no store node",
        "cluster: shop\nnodes:\n  - {name: n1, address: 127.0.0.1}\n",
        2,
        "nodes",
        "an embedded store needs a node with store: true",
    ),
    (
        "no nodes",
        "cluster: shop\nnodes: []\n",
        2,
        "nodes",
        "must not be empty",
    ),
    (
        "external store without endpoints",
        "cluster: shop\nstore: {mode: external}\nnodes: [{name: n1, address: 10.0.0.1}]\n",
        2,
        "store.endpoints",
        "an external store needs at least one endpoint",
    ),
    (
        "malformed endpoint",
        "cluster: shop\nstore:\n  mode: external\n  endpoints:\n    - etcd1:2379\n"
        "    - http://etcd2:2379\nnodes: [{name: n1, address: 10.0.0.1}]\n",
        6,
        "store.endpoints[1]",
        "'http://etcd2:2379' is not host:port",
    ),
    (
        "endpoints on an embedded store",
        "cluster: shop\nstore: {endpoints: [e:2379]}\n"
        "nodes: [{name: n1, address: 10.0.0.1, store: true}]\n",
        2,
        "store.endpoints",
        "endpoints are only for store mode external",
    ),
    (
        "check with two kinds",
        HEAD + "  web:\n    command: x\n    check: {http: /, tcp: main}\n",
        9,
        "services.web.check",
        "a check needs exactly one of http, tcp, exec (got http and tcp)",
    ),
    (
        "check with no kind",
        HEAD + "  web:\n    command: x\n    check:\n      interval: 1s\n",
        9,
        "services.web.check",
        "a check needs exactly one of http, tcp, exec",
    ),
    (
        "tcp check naming an undeclared port",
        HEAD + "  web:\n    command: x\n    ports: [main, admin]\n    check: {tcp: adm}\n",
        10,
        "services.web.check.tcp",
        "no port named 'adm' (ports: main, admin)",
    ),
    (
        "http check port naming an undeclared port",
        HEAD + "  web:\n    command: x\n    check: {http: /health, port: admin}\n",
        9,
        "services.web.check.port",
        "no port named 'admin'",
    ),
    (
        "http check path without slash",
        HEAD + "  web:\n    command: x\n    check: {http: health}\n",
        9,
        "services.web.check.http",
        "expected a path starting with '/'",
    ),
    (
        "fall = 0",
        HEAD + "  web:\n    command: x\n    check: {tcp: main, fall: 0}\n",
        9,
        "services.web.check.fall",
        "must be at least 1, got 0",
    ),
    (
        "bad signal",
        HEAD + "  web:\n    command: x\n    stop_signal: SIGTREM\n",
        9,
        "services.web.stop_signal",
        "'SIGTREM' is not a signal name",
    ),
    (
        "on_promote on a replicated service",
        HEAD + "  web:\n    command: x\n    on_promote: ./promote.sh\n",
        9,
        "services.web.on_promote",
        "on_promote needs mode: active-passive",
    ),
    (
        "cold standby on a replicated service",
        HEAD + "  web:\n    command: x\n    standby: cold\n",
        9,
        "services.web.standby",
        "standby only applies to mode: active-passive",
    ),
    (
        "backoff_max below backoff",
        HEAD + "  web:\n    command: x\n    restart:\n      backoff: 10s\n      backoff_max: 2s\n",
        11,
        "services.web.restart.backoff_max",
        "backoff_max (2s) must not be below backoff (10s)",
    ),
    (
        "bad literal",
        HEAD + "  web:\n    command: x\n    mode: active-active\n",
        9,
        "services.web.mode",
        "expected 'replicated' or 'active-passive', got 'active-active'",
    ),
    (
        "bad service name",
        HEAD + "  Web_1:\n    command: x\n",
        7,
        "services.Web_1",
        "'Web_1' is not a valid service name",
    ),
    (
        "bad cluster name",
        "cluster: My Shop\nnodes: [{name: n1, address: 10.0.0.1, store: true}]\n",
        1,
        "cluster",
        "'My Shop' is not a valid cluster name",
    ),
    (
        "missing required key reports its parent",
        HEAD + "  web:\n    replicas: 2\n",
        7,
        "services.web.command",
        "required, but missing",
    ),
    (
        "empty command",
        HEAD + "  web:\n    command: []\n",
        8,
        "services.web.command",
        "must not be empty",
    ),
    (
        "duplicate key",
        HEAD + "  web:\n    command: x\n    replicas: 1\n    replicas: 2\n",
        10,
        "services.web.replicas",
        "duplicate key 'replicas' (first on line 9)",
    ),
    (
        "relative volume path",
        HEAD + "  web:\n    command: x\n    volumes: {data: srv/data}\n",
        9,
        "services.web.volumes.data",
        "must be absolute",
    ),
    (
        "YAML syntax error",
        "cluster: shop\nnodes:\n  - name: n1\n   address: 10.0.0.1\n",
        4,
        "",
        "invalid YAML: expected <block end>",
    ),
    (
        "unclosed flow sequence",
        "cluster: shop\nnodes: [a, b\n",
        3,
        "",
        "invalid YAML",
    ),
    ("empty file", "# nothing here\n", 1, "", "file is empty"),
    ("top level is a list", "- cluster: shop\n", 1, "", "expected a mapping"),
    ("top level is a string", "shop\n", 1, "", "got 'shop'"),
]


@pytest.mark.parametrize(
    ("text", "line", "path", "message"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_input_names_line_path_and_problem(
    text: str, line: int, path: str, message: str
) -> None:
    issue = only_issue(text)
    assert (issue.file, issue.line, issue.path) == ("shop.yaml", line, path), str(issue)
    assert message in issue.message, str(issue)


def test_several_errors_all_reported_in_line_order() -> None:
    text = """\
cluster: shop
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n2, address: nowhere}
services:
  web:
    command: [run, "{prot}"]
    check: {http: /, interval: soon}
  db:
    comand: x
    replicas: 0
"""
    lines = [str(issue) for issue in issues_of(text)]
    assert lines == [
        "shop.yaml:4 nodes[1].address: 'nowhere' is not an IP address",
        "shop.yaml:7 services.web.command[1]: unknown placeholder '{prot}'"
        " (did you mean '{port}'?)",
        "shop.yaml:8 services.web.check.interval: 'soon' is not a duration",
        "shop.yaml:9 services.db.command: required, but missing",
        "shop.yaml:10 services.db.comand: unknown key 'comand' (did you mean 'command'?)",
        "shop.yaml:11 services.db.replicas: must be at least 1, got 0",
    ]


def test_cross_checks_still_run_beside_field_errors() -> None:
    text = """\
cluster: shop
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
  - {name: n1, address: 127.0.0.2}
services:
  web:
    command: [run, "{volume.x}"]
  bad:
    command: x
    replicas: lots
    placement: {constraints: {gpu: x}}
"""
    paths = {(issue.line, issue.path) for issue in issues_of(text)}
    assert paths == {
        (4, "nodes[1].name"),
        (7, "services.web.command[1]"),
        (10, "services.bad.replicas"),
    }


def test_error_text_is_one_line_per_issue() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(
            HEAD + "  web:\n    command: x\n    replicas: 0\n    stop_signal: NOPE\n", "a.yaml"
        )
    assert str(caught.value) == (
        "a.yaml:9 services.web.replicas: must be at least 1, got 0\n"
        "a.yaml:10 services.web.stop_signal: 'NOPE' is not a signal name"
    )


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: file not found"


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(SKETCH.replace("replicas: 2", "replicas: -2"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}:10 services.web.replicas: must be at least 1, got -2"
    path.write_text(SKETCH)
    assert load_spec(str(path)).cluster == "shop"


def test_design_sketch_loads() -> None:
    spec = parse_spec(SKETCH, "shop.yaml")
    assert spec.cluster == "shop"
    assert [n.name for n in spec.nodes] == ["n1", "n2", "n3"]
    web, queue = spec.services["web"], spec.services["queue"]
    assert web.command == ["python", "-m", "http.server", "{port}"]
    assert web.replicas == 2
    assert web.check is not None
    assert (web.check.kind, web.check.http, web.check.interval) == ("http", "/", 0.5)
    assert web.check_port() == "main"
    assert queue.mode == "active-passive"
    assert queue.on_promote == ["./promote.sh"]
    assert queue.model_dump()["volumes"] == {"data": None}  # the short form, kept as written
    assert queue.volumes["data"].path is None and not queue.volumes["data"].replicated
    assert spec.store_endpoints() == ["127.0.0.1:2379", "127.0.0.2:2379", "127.0.0.3:2379"]
    assert [n.name for n in spec.store_nodes()] == ["n1", "n2", "n3"]
    assert spec.node("n2").zone == "b"
    with pytest.raises(KeyError):
        spec.node("n9")


def test_defaults_are_filled_in() -> None:
    spec = parse_spec("cluster: c\nnodes: [{name: n1, address: 10.0.0.1, store: true}]\n")
    node = spec.nodes[0]
    assert (node.zone, node.region, node.labels, node.store) == ("default", "default", {}, True)
    assert node.ports.api == defaults.API_PORT
    assert node.ports.store_client == defaults.STORE_CLIENT_PORT
    assert node.ports.store_peer == defaults.STORE_PEER_PORT
    assert node.ports.gateway_http == defaults.GATEWAY_HTTP_PORT
    assert spec.store.mode == "embedded" and spec.services == {}

    service = parse_spec(HEAD + "  w:\n    command: run --fast 'a b'\n    check: {tcp: true}\n")
    w = service.services["w"]
    assert w.command == ["run", "--fast", "a b"]
    assert w.ports == ["main"] and w.replicas == 1 and w.mode == "replicated"
    assert w.stop_signal == defaults.STOP_SIGNAL and w.stop_timeout == defaults.STOP_TIMEOUT
    assert w.restart.backoff == defaults.RESTART_BACKOFF
    assert w.restart.backoff_max == defaults.RESTART_BACKOFF_MAX
    assert w.restart.limit == defaults.RESTART_LIMIT
    assert w.restart.window == defaults.RESTART_WINDOW
    assert w.placement.spread == "zone" and not w.placement.allow_colocate
    assert w.check is not None and w.check.tcp == "main"
    assert w.check.interval == defaults.CHECK_INTERVAL
    assert w.check.timeout == defaults.CHECK_TIMEOUT
    assert (w.check.fall, w.check.rise) == (defaults.CHECK_FALL, defaults.CHECK_RISE)
    assert w.check.start_grace == defaults.CHECK_START_GRACE


def test_values_are_normalised() -> None:
    spec = parse_spec(
        HEAD.replace("127.0.0.3", "'0:0::1'")
        + "  w:\n    command: [sleep, 10]\n    stop_signal: int\n    env: {PORT: 8080}\n"
        "    ports: [http, admin]\n    check: {tcp: true}\n"
        "    replicas: 5\n    placement: {allow_colocate: true}\n"
    )
    w = spec.services["w"]
    assert w.command == ["sleep", "10"]
    assert w.stop_signal == "SIGINT"
    assert w.env == {"PORT": "8080"}
    assert w.check is not None and w.check.tcp == "http"
    assert spec.nodes[2].address == "::1"
    assert spec.store_endpoints()[2] == "[::1]:2379"


def test_constraints_match_labels_only() -> None:
    spec = parse_spec(
        HEAD + "  w:\n    command: x\n    replicas: 2\n    placement:\n"
        "      constraints: {disk: ssd}\n"
    )
    constraints = spec.services["w"].placement.constraints
    assert [n.name for n in spec.nodes if n.matches(constraints)] == ["n2", "n3"]
    assert [n.name for n in spec.nodes if n.matches({"zone": "a"})] == []


def test_external_store_endpoints() -> None:
    spec = parse_spec(
        "cluster: c\nstore: {mode: external, endpoints: ['e1:2379', '[::1]:2379']}\n"
        "nodes: [{name: n1, address: 10.0.0.1}]\n"
    )
    assert spec.store_endpoints() == ["e1:2379", "[::1]:2379"]
    assert spec.store_nodes() == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("3", 3.0),
        (3, 3.0),
        (0.25, 0.25),
        ("1 s", 1.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 parsecs", "-1s", "1x", "", "nan", "s", True])
def test_parse_duration_rejects(bad: str | bool) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.2, 0.5, 1.0, 1.5, 60.0, 90.0, 3600.0, 1 / 3])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_is_short() -> None:
    assert [format_duration(s) for s in (0.5, 2.0, 60.0, 7200.0)] == ["500ms", "2s", "1m", "2h"]


def test_dump_round_trip() -> None:
    text = HEAD + (
        "  w:\n"
        "    command: [run, '{port.admin}', '{{literal}}']\n"
        "    env: {A: '{volume.data}'}\n"
        "    workdir: /srv/{service}\n"
        "    ports: [http, admin]\n"
        "    volumes: {data: /srv/data, scratch: null}\n"
        "    replicas: 2\n"
        "    mode: active-passive\n"
        "    standby: cold\n"
        "    on_promote: promote {instance}\n"
        "    on_demote: [demote]\n"
        "    check: {http: /h, port: admin, interval: 250ms, timeout: 1.5s, rise: 4}\n"
        "    restart: {backoff: 1s, backoff_max: 1m, limit: 0, window: 10m}\n"
        "    stop_signal: HUP\n"
        "    stop_timeout: 0.1\n"
        "    placement: {spread: region, constraints: {disk: ssd}, allow_colocate: true}\n"
        "  t:\n    command: x\n    ports: []\n"
    )
    spec = parse_spec(text)
    dumped = dump_spec(spec)
    assert parse_spec(dumped) == spec
    assert "250ms" in dumped and "interval" in dumped
    assert "store_peer" not in dumped  # defaults are left out
    assert parse_spec(dump_spec(parse_spec(SKETCH))) == parse_spec(SKETCH)


def test_direct_validation_applies_cross_checks() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        ClusterSpec.model_validate(
            {
                "cluster": "c",
                "nodes": [{"name": "n1", "address": "10.0.0.1", "store": True}],
                "services": {"w": {"command": ["x", "{nope}"]}},
            }
        )


def test_render_and_placeholder_names() -> None:
    values = {"port": "20001", "port.admin": "20002", "volume.data": "/d", "node": "n1"}
    template = "--listen={port} --admin {port.admin} {{literal}} {{{node}}} {volume.data}"
    assert render(template, values) == "--listen=20001 --admin 20002 {literal} {n1} /d"
    assert placeholder_names(template) == {"port", "port.admin", "node", "volume.data"}
    assert placeholder_names("no braces") == set()
    with pytest.raises(KeyError):
        render("{instance}", values)
    with pytest.raises(ValueError, match="unbalanced"):
        render("a } b", values)
    with pytest.raises(ValueError, match="unbalanced"):
        placeholder_names("{port")


def test_issue_formatting() -> None:
    assert str(SpecIssue("f.yaml", 3, "a.b", "bad")) == "f.yaml:3 a.b: bad"
    assert str(SpecIssue("f.yaml", 1, "", "file is empty")) == "f.yaml:1: file is empty"
    assert str(SpecIssue("f.yaml", None, "", "file not found")) == "f.yaml: file not found"
    error = SpecError([SpecIssue("f", 1, "a", "x"), SpecIssue("f", 2, "b", "y")])
    assert str(error) == "f:1 a: x\nf:2 b: y"
    assert isinstance(error, Exception)


def test_control_characters_are_a_spec_error_with_a_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("cluster: shop\x1f\n", "bad.yaml")
    assert str(info.value).startswith("bad.yaml:1: invalid YAML: unacceptable character")
