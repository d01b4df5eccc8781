"""`templates:` (docs/templates.md): the sandboxed engine, the view of the
cluster a template sees, the debounce, the spec's checks, the atomic write,
and the agent's renderer on an in-memory store."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ninefold.agent.journal import EventJournal
from ninefold.agent.templates import TemplateRenderer, write_if_changed
from ninefold.decide.templates import Debounce, render_template, template_view
from ninefold.spec import ClusterSpec, SpecError, dump_spec, parse_spec
from ninefold.state.keys import SPEC_KEY, kv_key, node_key, status_key
from ninefold.state.reads import read_events
from ninefold.state.records import InstanceStatus, NodeRecord
from ninefold.store.memory import MemoryStore
from ninefold.templating import TemplateError, render
from tests.helpers import eventually

NODES = """cluster: shop
nodes:
  - {name: n1, address: 127.0.0.1, store: true, labels: {role: lb}}
  - {name: n2, address: 127.0.0.2, zone: b}
  - {name: n3, address: 127.0.0.3, zone: c}
services:
  web:
    command: [./web, "{port}"]
    ports: [admin, http]
    route: {http: /web, port: http}
    replicas: 2
  db:
    command: [./db]
"""

UPSTREAM = """upstream web {
{% for i in healthy("web") %}
  server {{ i.address }}:{{ i.port }};  # {{ i.name }} on {{ i.node }}
{% else %}
  server 127.0.0.1:1 down;
{% endfor %}
}
"""


def spec_with(templates: str = "") -> ClusterSpec:
    return parse_spec(NODES + templates, "shop.yaml")


def problems(templates: str) -> str:
    with pytest.raises(SpecError) as caught:
        spec_with(templates)
    return str(caught.value)


def status(name: str, node: str, health: str = "healthy", **kw: object) -> InstanceStatus:
    fields: dict[str, object] = {
        "service": name.rsplit("-", 1)[0], "instance": name, "node": node,
        "address": f"127.0.0.{node[1:]}", "ports": {"admin": 21000, "http": 21001},
        "state": "running", "health": health,
    }  # fmt: skip
    return InstanceStatus.model_validate({**fields, **kw})


# --- the engine --------------------------------------------------------------------


def test_the_sandbox_refuses_a_values_internals() -> None:
    view = template_view(spec_with(), [status("web-0", "n1")], ["n1"], [], {})
    spec = spec_with("templates:\n  - {name: t, destination: /tmp/t, contents: x}\n").templates[0]
    for source in (
        '{{ healthy("web")[0].__class__ }}',
        "{{ node.__class__.__mro__ }}",
        "{{ service.__globals__ }}",
        "{{ healthy.__closure__ }}",
        "{{ cluster.__class__.__subclasses__() }}",
    ):
        with pytest.raises(TemplateError, match=r"template 't' line 1: access to attribute"):
            render_template(spec, source, view, "n1")


def test_the_sandbox_refuses_changing_what_a_template_is_given() -> None:
    view = template_view(spec_with(), [status("web-0", "n1")], ["n1"], [], {"a": "1"})
    spec = spec_with("templates:\n  - {name: t, destination: /tmp/t, contents: x}\n").templates[0]
    for source in ('{{ keys("").update({"a": "2"}) }}', "{{ node.labels.clear() }}"):
        with pytest.raises(TemplateError, match="unsafe"):
            render_template(spec, source, view, "n1")


def test_the_sandbox_bounds_huge_results() -> None:
    with pytest.raises(TemplateError, match="line 2: a repetition longer than"):
        render("ok\n{{ 'x' * 10**9 }}", "big", {})
    with pytest.raises(TemplateError, match="exponent"):
        render("{{ 2 ** 100000000 }}", "pow", {})
    with pytest.raises(TemplateError, match="Range too big"):
        render("{% for i in range(10**9) %}{% endfor %}", "range", {})


def test_an_undefined_name_is_an_error_naming_the_template_and_its_line() -> None:
    with pytest.raises(TemplateError) as caught:
        render("first\nsecond\n{{ upstreams }}\n", "haproxy", {})
    assert str(caught.value) == "template 'haproxy' line 3: 'upstreams' is undefined"
    with pytest.raises(
        TemplateError,
        match=r"line 2: 'ninefold\.decide\.templates\.NodeInfo object' has no attribute",
    ):
        view = template_view(spec_with(), [], ["n1"], [], {})
        spec = spec_with("templates:\n  - {name: t, destination: /t, contents: x}\n").templates[0]
        render_template(spec, "\n{{ node.hostname }}", view, "n1")


def test_a_syntax_error_names_the_template_and_its_line() -> None:
    with pytest.raises(TemplateError, match=r"^template 'x' line 2: .*'endfor'"):
        render("a\n{% for i in [1] %}\n", "x", {})


def test_trailing_newline_kept_and_block_tags_leave_no_blank_lines() -> None:
    assert render("{% if true %}\n  a\n{% endif %}\nb\n", "t", {}) == "  a\nb\n"


# --- the view ------------------------------------------------------------------------


def test_healthy_lists_serving_instances_on_their_routed_port_in_a_stable_order() -> None:
    statuses = [
        status("web-1", "n2"),
        status("web-0", "n1"),
        status("web-2", "n3", health="unhealthy"),
        status("web-3", "n3", state="backoff"),
    ]
    spec = spec_with(
        f"templates:\n  - destination: /etc/up\n    contents: {json.dumps(UPSTREAM)}\n"
    )
    a = template_view(spec, statuses, ["n1", "n2", "n3"], [], {})
    b = template_view(spec, list(reversed(statuses)), ["n3", "n2", "n1"], [], {})
    out = render_template(spec.templates[0], UPSTREAM, a, "n1")
    assert out == render_template(spec.templates[0], UPSTREAM, b, "n1")
    assert out.decode() == (
        "upstream web {\n"
        "  server 127.0.0.1:21001;  # web-0 on n1\n"
        "  server 127.0.0.2:21001;  # web-1 on n2\n"
        "}\n"
    )
    none = template_view(spec, [status("web-0", "n1", health="unhealthy")], ["n1"], [], {})
    assert b"127.0.0.1:1 down" in render_template(spec.templates[0], UPSTREAM, none, "n1")


def test_a_view_ignores_what_no_template_sees() -> None:
    spec = spec_with()
    a = template_view(spec, [status("web-0", "n1", pid=10, since=1.0)], ["n1"], [], {})
    b = template_view(spec, [status("web-0", "n1", pid=11, since=2.0)], ["n1"], [], {})
    c = template_view(spec, [status("web-0", "n1", health="unhealthy")], ["n1"], [], {})
    assert a == b
    assert a != c


def test_nodes_services_keys_and_this_node() -> None:
    spec = spec_with()
    view = template_view(spec, [], ["n1", "n2"], ["n2"], {"lb/b": "2", "lb/a": "1", "x": "y"})
    source = (
        "{{ node.name }} {{ node.labels.role }} {{ cluster }}\n"
        "{% for n in nodes() %}{{ n.name }}={{ n.state }} {% endfor %}\n"
        "{% for s in services() %}{{ s.name }}:{{ s.http }}:{{ s.ports|join(',') }} {% endfor %}\n"
        "{% for k, v in keys('lb/').items() %}{{ k }}={{ v }} {% endfor %}\n"
        "{{ key('x') }} {{ key('missing', 'default') }}\n"
    )
    assert render(source, "t", _context(view, "n1")) == (
        "n1 lb shop\n"  # trim_blocks: no newline after a block tag
        "n1=up n2=drained n3=down db:None:main web:/web:admin,http lb/a=1 lb/b=2 y default\n"
    )


def test_unknown_services_and_missing_keys_fail_the_render() -> None:
    view = template_view(spec_with(), [], ["n1"], [], {})
    with pytest.raises(
        TemplateError, match=r"line 1: no service named 'wbe' \(services: db, web\)"
    ):
        render("{{ healthy('wbe') }}", "t", _context(view, "n1"))
    with pytest.raises(TemplateError, match="no key 'port' in the KV store"):
        render("\n{{ key('port') }}", "t", _context(view, "n1"))
    with pytest.raises(TemplateError, match="line 1: no backends"):
        render("{{ fail('no backends') }}", "t", _context(view, "n1"))


def _context(view: object, node: str) -> dict[str, object]:
    from ninefold.decide.templates import template_context

    return template_context(view, node)  # type: ignore[arg-type]


# --- the debounce --------------------------------------------------------------------


def test_debounce_waits_for_quiet_but_no_longer_than_its_max() -> None:
    d = Debounce(quiet=1.0, longest=4.0)
    assert d.due_at() is None
    d.changed(10.0)
    assert d.due_at() == 11.0
    d.changed(10.5)
    assert d.due_at() == 11.5  # a change restarts the quiet time...
    for t in (11.0, 12.0, 13.0, 13.9):
        d.changed(t)
    assert d.due_at() == 14.0  # ...but not past first + max
    d.rendered()
    assert d.due_at() is None


# --- the spec ------------------------------------------------------------------------


def test_spec_round_trip_and_defaults() -> None:
    spec = spec_with(
        "templates:\n"
        "  - destination: /etc/{node}/up.conf\n"
        "    contents: |\n      {{ node.name }}\n"
        "    nodes: {role: lb}\n"
        "    command: systemctl reload nginx\n"
        "    wait: 1s\n"
        '    mode: "0640"\n'
    )
    (t,) = spec.templates
    assert (t.label, t.wait.min, t.wait.longest, t.file_mode) == (
        "/etc/{node}/up.conf",
        1,
        4,
        0o640,
    )
    assert t.command_for("n1") == ["systemctl", "reload", "nginx"]
    assert t.destination_for("n1") == "/etc/n1/up.conf"
    assert [n.name for n in spec.nodes if t.selects(n)] == ["n1"]
    assert parse_spec(dump_spec(spec)) == spec


def test_spec_a_syntax_error_is_one_line_with_the_template_and_its_line() -> None:
    text = problems(
        "templates:\n"
        "  - name: up\n"
        "    destination: /etc/up\n"
        "    contents: |\n"
        "      upstream web {\n"
        "      {% for i in healthy('web') %}\n"
        "      }\n"
    )
    assert text == (
        "shop.yaml:17 templates[0].contents: template 'up' line 3: Unexpected end of "
        "template. Jinja was looking for the following tags: 'endfor' or 'else'. The "
        "innermost block that needs to be closed is 'for'."
    )


def test_spec_a_source_file_this_machine_has_is_compiled(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.j2", tmp_path / "bad.j2"
    good.write_text("{{ cluster }}\n")
    bad.write_text("ok\n{{ a b }}\n")
    spec_with(f"templates:\n  - {{destination: /etc/a, source: {good}}}\n")
    spec_with(f"templates:\n  - {{destination: /etc/a, source: {tmp_path / 'elsewhere.j2'}}}\n")
    text = problems(f"templates:\n  - {{destination: /etc/a, source: {bad}}}\n")
    assert "templates[0].source: template '/etc/a' line 2: expected token" in text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{destination: /a}", "templates[0]: a template needs one of contents"),
        ("{destination: /a, contents: x, source: /b}", "needs one of contents"),
        ("{destination: etc/a, contents: x}", "destination must be an absolute path"),
        ("{destination: /a, source: b.j2}", "source must be an absolute path"),
        ("{destination: /a, contents: x, nodes: [n1, n9]}",
         "templates[0].nodes[1]: no node named 'n9' (nodes: n1, n2, n3)"),
        ("{destination: /a, contents: x, nodes: {role: db}}",
         "templates[0].nodes: no node has the labels {role: db}"),
        ("{destination: /a, contents: x, nodes: []}", "templates[0].nodes"),
        ("{destination: /a, contents: x, mode: 0644}", 'write the mode quoted, in octal'),
        ("{destination: /a, contents: x, mode: '0999'}", "'0999' is not a file mode"),
        ("{destination: /a, contents: x, wait: {min: 2s, max: 1s}}", "max (1s) is less than min"),
        ("{destination: /a, contents: x, colour: red}", "unknown key 'colour'"),
        ("{destination: /a, contents: x, command: []}", "templates[0].command: must not be empty"),
    ],
)  # fmt: skip
def test_spec_refuses(entry: str, message: str) -> None:
    assert message in problems(f"templates:\n  - {entry}\n")


def test_spec_two_templates_writing_one_file_on_one_node() -> None:
    text = problems(
        "templates:\n"
        "  - {destination: /etc/a, contents: x, nodes: [n1, n2]}\n"
        "  - {destination: /etc/a, contents: y, nodes: [n2]}\n"
        "  - {name: t, destination: /etc/b, contents: y}\n"
        "  - {name: t, destination: /etc/c, contents: y}\n"
    )
    assert "templates[1].destination: templates[0] also writes /etc/a on node n2" in text
    assert "templates[3].name: another template is named 't' (templates[2])" in text
    spec_with(
        "templates:\n"
        '  - {destination: "/etc/{node}/a", contents: x}\n'
        "  - {destination: /etc/a, contents: y, nodes: [n1]}\n"
        "  - {destination: /etc/a, contents: y, nodes: [n2]}\n"
    )


# --- writing ---------------------------------------------------------------------------


def test_write_if_changed_is_atomic_keeps_the_mode_and_skips_equal_bytes(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "out.cfg"
    assert write_if_changed(path, b"one\n", None)
    assert path.read_bytes() == b"one\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o600)
    inode = path.stat().st_ino
    assert not write_if_changed(path, b"one\n", None)
    assert path.stat().st_ino == inode  # untouched
    assert write_if_changed(path, b"two\n", None)
    assert path.stat().st_ino != inode  # replaced, by a rename
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the mode kept
    assert not write_if_changed(path, b"two\n", 0o640)  # same bytes: only the mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["out.cfg"]  # no temporary left


# --- the agent's renderer ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def cluster_store(spec: ClusterSpec, *statuses: InstanceStatus) -> MemoryStore:
    store = MemoryStore()
    for node in spec.nodes:
        record = NodeRecord(
            name=node.name, address=node.address, zone=node.zone, region=node.region,
            api_port=1, pid=1,
        )  # fmt: skip
        await store.put(node_key(node.name), record.encode())
    for s in statuses:
        await store.put(status_key(s.node, s.instance), s.encode())
    return store


def renderer(
    store: MemoryStore, spec: ClusterSpec, tmp_path: Path, clock: Callable[[], float]
) -> TemplateRenderer:
    journal = EventJournal(store, "n1")
    return TemplateRenderer(store, spec.node("n1"), journal, spec, tmp_path / "logs", clock)


async def test_renders_on_start_then_after_the_quiet_time(tmp_path: Path) -> None:
    out = tmp_path / "up.conf"
    spec = spec_with(
        f"templates:\n  - destination: {out}\n    wait: {{min: 1s, max: 3s}}\n"
        f"    contents: {json.dumps(UPSTREAM)}\n"
    )
    store = await cluster_store(spec, status("web-0", "n1"), status("web-1", "n2"))
    clock = Clock()
    r = renderer(store, spec, tmp_path, clock)
    assert await r.step() == 10.0  # rendered at once; next: the resync
    assert out.read_text().count("server ") == 2
    await store.put(status_key("n2", "web-1"), status("web-1", "n2", health="unhealthy").encode())
    clock.now += 0.1
    assert await r.step() == pytest.approx(1.0)  # seen, waiting for quiet
    assert out.read_text().count("server ") == 2
    clock.now += 1.0
    await r.step()
    assert out.read_text().count("server ") == 1
    events = [(e.kind, e.subject) for e in await read_events(store)]
    assert events == [("template-rendered", str(out))] * 2


async def test_a_broken_render_keeps_the_file_and_is_reported_once(tmp_path: Path) -> None:
    out = tmp_path / "up.conf"
    spec = spec_with(
        "templates:\n  - name: up\n"
        f"    destination: {out}\n"
        "    contents: \"{{ key('port') }}\\n\"\n"
    )
    store = await cluster_store(spec)
    await store.put(kv_key("port"), b"80")
    clock = Clock()
    r = renderer(store, spec, tmp_path, clock)
    await r.step()
    assert out.read_text() == "80\n"
    await store.delete(kv_key("port"))
    for _ in range(3):
        clock.now += 11
        await r.step()
    assert out.read_text() == "80\n"  # left as it was
    failed = [e for e in await read_events(store) if e.kind == "template-failed"]
    assert len(failed) == 1
    assert failed[0].reason.startswith("template 'up' line 1: no key 'port' in the KV store")
    await store.put(kv_key("port"), b"81")
    clock.now += 11
    await r.step()
    assert out.read_text() == "81\n"


async def test_an_unreadable_source_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "missing.j2"
    spec = spec_with(f"templates:\n  - {{destination: {tmp_path / 'o'}, source: {missing}}}\n")
    store = await cluster_store(spec)
    await renderer(store, spec, tmp_path, Clock()).step()
    (event,) = await read_events(store)
    assert event.kind == "template-failed"
    assert f"cannot read its source {missing}: No such file or directory" in event.reason


async def test_a_node_not_selected_renders_nothing(tmp_path: Path) -> None:
    spec = spec_with(
        f"templates:\n  - {{destination: {tmp_path / 'o'}, contents: x, nodes: [n2]}}\n"
    )
    store = await cluster_store(spec)
    assert await renderer(store, spec, tmp_path, Clock()).step() == 10.0
    assert not (tmp_path / "o").exists()


@pytest.mark.process
async def test_the_command_runs_only_when_the_bytes_change_and_its_failure_is_reported(
    tmp_path: Path,
) -> None:
    out, count = tmp_path / "up.conf", tmp_path / "reloads"
    script = (  # counts its runs; fails once the file is longer than 3 bytes
        f"import sys; open({str(count)!r}, 'a').write(sys.argv[1] + '\\n'); "
        "sys.exit(len(open(sys.argv[1]).read()) > 3)"
    )
    spec = spec_with(
        f"templates:\n  - name: up\n    destination: {out}\n    wait: 0s\n"
        "    contents: \"{{ key('v') }}\"\n"
        f"    command: [{sys.executable}, -c, {script!r}, '{{destination}}']\n"
    )
    store = await cluster_store(spec)
    await store.put(kv_key("v"), b"a")
    clock = Clock()
    r = renderer(store, spec, tmp_path, clock)
    await r.step()
    clock.now += 11
    await r.step()  # a resync: same bytes, no command
    assert count.read_text() == f"{out}\n"
    await store.put(kv_key("v"), b"long")
    await r.step()
    clock.now += 0.01
    await r.step()
    assert count.read_text() == f"{out}\n{out}\n"
    kinds = [(e.kind, e.reason) for e in await read_events(store)]
    assert kinds[0][0] == "template-rendered"
    assert kinds[1][0] == "template-command-failed"
    assert f"wrote {out}, but its command {sys.executable} exited 1" in kinds[1][1]


def test_the_haproxy_example_of_the_docs_renders_as_the_docs_say() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "templates.md").read_text()
    source = docs.split("```jinja\n", 1)[1].split("```", 1)[0]
    expected = docs.split("it renders:\n\n```text\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(
        "cluster: shop\n"
        "nodes: [{name: n1, address: 127.0.0.1, store: true}, {name: n2, address: 127.0.0.2}]\n"
        "services:\n"
        "  web: {command: x, replicas: 2, route: {http: /web}}\n"
        "  api: {command: x, route: {http: /api}}\n"
        "  db: {command: x, route: {tcp: 5432}}\n"
    )
    statuses = [
        status("web-0", "n1", ports={"main": 20001}),
        status("web-1", "n2", ports={"main": 20002}),
        status("api-0", "n1", ports={"main": 20004}, health="unhealthy"),
        status("db-0", "n2", ports={"main": 20003}, health="none"),
    ]
    view = template_view(spec, statuses, ["n1", "n2"], [], {})
    assert render(source, "haproxy", _context(view, "n1")) == expected


async def test_a_destination_that_cannot_be_written_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spec = spec_with(f"templates:\n  - {{destination: {tmp_path / 'file' / 'o'}, contents: x}}\n")
    store = await cluster_store(spec)
    await renderer(store, spec, tmp_path, Clock()).step()
    (event,) = await read_events(store)
    assert (event.kind, event.data) == ("template-failed", {"node": "n1"})
    assert f"cannot write {tmp_path / 'file' / 'o'}: Not a directory" in event.reason


def test_a_template_cannot_include_files() -> None:
    with pytest.raises(TemplateError, match="line 1: TypeError: no loader for this environment"):
        render('{% include "/etc/passwd" %}', "t", {})


@pytest.mark.process
async def test_a_command_that_outlives_its_timeout_is_killed_and_reported(tmp_path: Path) -> None:
    spec = spec_with(
        f"templates:\n  - destination: {tmp_path / 'o'}\n    contents: x\n"
        "    command: [sleep, '30']\n    timeout: 200ms\n"
    )
    store = await cluster_store(spec)
    await renderer(store, spec, tmp_path, Clock()).step()
    (event,) = await read_events(store)
    assert event.kind == "template-command-failed"
    assert "its command sleep timed out" in event.reason
    assert (tmp_path / "o").read_text() == "x"


async def test_the_loop_follows_the_store_and_the_spec(tmp_path: Path) -> None:
    """run(): watches only the spec while nothing is to render here, then
    what templates see; a template added by `apply` renders at once."""
    out = tmp_path / "n1.conf"
    spec = spec_with()
    store = await cluster_store(spec, status("web-0", "n1"))
    loop = asyncio.create_task(renderer(store, spec, tmp_path, time.monotonic).run())
    try:
        applied = spec_with(
            f"templates:\n  - destination: {tmp_path / '{node}.conf'}\n    wait: 10ms\n"
            f"    contents: {json.dumps(UPSTREAM)}\n"
        )
        await store.put(SPEC_KEY, dump_spec(applied).encode())
        await eventually(lambda: out.exists() and out.read_text().count("server") == 1, 5, "file")
        await store.put(status_key("n2", "web-1"), status("web-1", "n2").encode())
        await eventually(lambda: out.read_text().count("server") == 2, 5, "web-1 listed")
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


def test_external_endpoints_stand_as_instances_healthy_as_this_node_sees_them() -> None:
    from ninefold.state.records import EndpointHealth

    spec = spec_with("  pg:\n    external: [db.example.com:5432, '10.0.0.9:5433']\n")
    mine = [
        EndpointHealth(service="pg", endpoint="db.example.com:5432", address="10.0.0.8",
                       health="healthy"),
        EndpointHealth(service="pg", endpoint="10.0.0.9:5433", health="unhealthy"),
    ]  # fmt: skip
    view = template_view(spec, [], ["n1"], [], {}, mine)
    source = (
        "{% for i in service('pg') %}{{ i.name }} {{ i.address }}:{{ i.port }} {{ i.health }}\n"
        "{% endfor %}{% for i in healthy('pg') %}up {{ i.address }}:{{ i.port }}\n{% endfor %}"
    )
    assert render(source, "t", _context(view, "n1")) == (
        "pg@10.0.0.9:5433 10.0.0.9:5433 unhealthy\n"
        "pg@db.example.com:5432 10.0.0.8:5432 healthy\n"
        "up 10.0.0.8:5432\n"
    )
    unchecked = template_view(spec, [], ["n1"], [], {})  # this node has no verdict yet
    assert render("{{ healthy('pg')|length }}", "t", _context(unchecked, "n1")) == "0"
