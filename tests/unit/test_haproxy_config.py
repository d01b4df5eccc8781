"""haproxy.cfg rendering, runtime plans and counters of the haproxy engine (no HAProxy runs,
except `haproxy -c` to validate rendered files when the binary exists)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ninefold import defaults
from ninefold.gateway.engine import LATENCY_BUCKETS, GatewaySettings
from ninefold.gateway.haproxy import (
    Reload,
    RuntimePlan,
    SlotMap,
    allocate_slots,
    checks_for,
    haproxy_binary,
    plan_runtime,
    render,
)
from ninefold.gateway.haproxy.metrics import TrafficLedger
from ninefold.gateway.haproxy.runtime import parse_show_proc, parse_stat, refusals
from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
from ninefold.spec import parse_spec
from ninefold.spec.models import CheckSpec
from ninefold.spec.routing import BalanceSpec, RouteSpec, StickySpec, TimeoutsSpec

SETTINGS = GatewaySettings(
    node="n1",
    address="127.0.0.1",
    http_port=8080,
    run_dir=Path("/run/nf"),
    log_dir=Path("/var/log/nf"),
)


def backend(port: int, *, weight: int = 100, draining: bool = False) -> Backend:
    return Backend(f"i{port}", "n1", "10.0.0.1", port, weight=weight, draining=draining)


def service(
    name: str,
    *backends: Backend,
    route: RouteSpec | None = None,
    balance: BalanceSpec | None = None,
) -> ServiceRoutes:
    return ServiceRoutes(
        name, route or RouteSpec(http=f"/{name}"), balance or BalanceSpec(), tuple(backends)
    )


def table(*services: ServiceRoutes) -> RoutingTable:
    return RoutingTable({s.service: s for s in services})


def section(cfg: str, title: str) -> list[str]:
    """The stripped lines of one section of a rendered configuration."""
    lines = cfg.splitlines()
    start = lines.index(title) + 1
    out = []
    for line in lines[start:]:
        if not line.startswith(" "):
            break
        out.append(line.strip())
    return out


SHOP = table(
    service(
        "web",
        backend(20001),
        backend(20002, weight=50),
        balance=BalanceSpec(
            sticky=StickySpec(cookie="SHOP"),
            timeouts=TimeoutsSpec(connect=0.5, client=40, server=2.5),
            retries=3,
        ),
    ),
    service("api", backend(20003), route=RouteSpec(http="/api/v1/", strip_prefix=False)),
    service(
        "admin",
        backend(20004, draining=True),
        route=RouteSpec(http="/", host="Admin.Example.com"),
        balance=BalanceSpec(algorithm="leastconn", retries=0),
    ),
    service("root", route=RouteSpec(http="/")),
    service(
        "db",
        backend(20005),
        route=RouteSpec(tcp=5432),
        balance=BalanceSpec(algorithm="source", timeouts=TimeoutsSpec(client=300)),
    ),
)
CHECKS = {
    "web": CheckSpec(http="/healthz", interval=0.25, fall=2, rise=3, timeout=0.4),
    "db": CheckSpec(tcp="main"),
    "admin": CheckSpec(exec=["true"]),
}


# --- render ----------------------------------------------------------------------------


def test_render_frontend_routes_in_match_order() -> None:
    cfg = render(SHOP, SETTINGS, CHECKS)
    front = section(cfg, "frontend http")
    assert "bind 127.0.0.1:8080" in front
    assert "option forwardfor" in front
    assert "http-request set-header X-Forwarded-Proto http" in front
    assert any(line.startswith("http-request set-header X-Forwarded-Host") for line in front)
    uses = [line for line in front if line.startswith("use_backend")]
    # host routes first, then longer prefixes, "/" last; as RoutingTable.http()
    assert uses == [
        "use_backend be_admin if host_admin",
        "use_backend be_api if path_api",
        "use_backend be_web if path_web",
        "use_backend be_root",
    ]
    assert "acl host_admin req.hdr(host),lower,regsub(:[0-9]+$,) -m str 'admin.example.com'" in (
        front
    )
    assert "acl path_api path '/api/v1'" in front
    assert "acl path_api path_beg '/api/v1/'" in front
    assert front[-1] == "default_backend no_route"
    assert "timeout client 40s" in front  # the longest of the HTTP services


def test_render_backend_balance_timeouts_retries_cookie() -> None:
    cfg = render(SHOP, SETTINGS, CHECKS, cookie_key="k3y")
    web = section(cfg, "backend be_web")
    assert "balance roundrobin" in web
    assert "timeout connect 500ms" in web
    assert "timeout server 2500ms" in web
    assert "retries 3" in web
    assert "option redispatch 1" in web
    assert "retry-on conn-failure empty-response response-timeout" in web
    assert "http-request disable-l7-retry if !idempotent" in web
    assert "acl idempotent method GET HEAD OPTIONS TRACE PUT DELETE" in web
    assert "http-request replace-path '^/web(/|$)(.*)' '/\\2'" in web
    assert "cookie 'SHOP' insert indirect nocache httponly dynamic" in web
    assert "dynamic-cookie-key 'k3y'" in web
    servers = [line for line in web if line.startswith("server ")]
    assert servers[:2] == [
        "server s1 10.0.0.1:20001 weight 100",
        "server s2 10.0.0.1:20002 weight 50",
    ]
    assert all(line.endswith("0.0.0.0:1 disabled") for line in servers[2:])
    assert len(servers) == defaults.HAPROXY_MIN_SLOTS
    # no address in a cookie value: HAProxy derives it from the key (dynamic)
    assert not any(" cookie " in line for line in servers)

    api = section(cfg, "backend be_api")
    assert not any("replace-path" in line for line in api)  # strip_prefix: false

    admin = section(cfg, "backend be_admin")
    assert "balance leastconn" in admin
    assert "retries 0" in admin
    assert "no option redispatch" in admin
    assert not any(line.startswith("retry-on") for line in admin)
    assert "server s1 10.0.0.1:20004 weight 100 disabled" in admin  # draining


def test_render_one_thread_and_no_per_request_log_lines() -> None:
    cfg = render(SHOP, SETTINGS, CHECKS)
    assert "nbthread 1" in section(cfg, "global")
    assert "log stderr format raw daemon notice" in section(cfg, "global")
    assert "log global" in section(cfg, "defaults")  # server state changes are still logged
    for frontend in ("frontend http", "frontend tcp_5432"):  # requests are not
        assert "no log" in section(cfg, frontend)


@pytest.mark.parametrize(
    ("connect", "rendered"), [(1.0, "200ms"), (0.5, "500ms"), (0.05, "50ms"), (3.0, "3s")]
)
def test_render_default_connect_timeout_bounds_the_turn_around_pause(
    connect: float, rendered: str
) -> None:
    """HAProxy pauses min(timeout connect, 1s) before a retry whenever one
    server is left up: the default timeouts.connect (1s) is rendered as
    attempts of 200ms; a value set in the spec is rendered as it is."""
    balance = BalanceSpec(timeouts=TimeoutsSpec(connect=connect))
    routes = table(
        service("web", backend(20001), backend(20002), balance=balance),
        service("db", backend(20005), route=RouteSpec(tcp=5432), balance=balance),
    )
    cfg = render(routes, SETTINGS, CHECKS)
    for name in ("web", "db"):
        assert f"timeout connect {rendered}" in section(cfg, f"backend be_{name}")


def test_render_health_checks_mirror_the_spec() -> None:
    cfg = render(SHOP, SETTINGS, CHECKS)
    web = section(cfg, "backend be_web")
    assert "option httpchk GET '/healthz'" in web
    assert "timeout check 400ms" in web
    assert "default-server check inter 250ms fall 2 rise 3" in web
    db = section(cfg, "backend be_db")
    assert not any("httpchk" in line for line in db)
    assert any(line.startswith("default-server check inter 500ms fall 3 rise 2") for line in db)
    for name in ("admin", "api"):  # exec check, no check: no HAProxy check
        assert not any("check" in line for line in section(cfg, f"backend be_{name}"))


def test_render_tcp_route() -> None:
    cfg = render(SHOP, SETTINGS, CHECKS)
    front = section(cfg, "frontend tcp_5432")
    assert front == [
        "mode tcp",
        "bind 127.0.0.1:5432",
        "timeout client 300s",
        "no log",
        "default_backend be_db",
    ]
    db = section(cfg, "backend be_db")
    assert "mode tcp" in db
    assert "balance source" in db
    assert "hash-type consistent" in db
    assert not any("http-request" in line or "retry-on" in line for line in db)


def test_render_json_errors_and_no_route() -> None:
    cfg = render(SHOP, SETTINGS)
    expected = {502: "bad gateway", 503: "no backend", 504: "backend timed out"}
    for status, error in expected.items():
        page = f"http-error status {status} content-type application/json string"
        assert f'{page} \'{{"error":"{error}"}}\'' in section(cfg, "defaults")
        assert f'{page} \'{{"error":"{error}","service":"web"}}\'' in section(cfg, "backend be_web")
    assert section(cfg, "frontend http")[-1] == "default_backend no_route"
    (no_route,) = [ln for ln in section(cfg, "backend no_route") if "return" in ln]
    assert "status 404 content-type application/json lf-string" in no_route
    assert "%[path,json(utf8s)]" in no_route  # what the client sent is escaped
    assert "stats socket '/run/nf/haproxy-stats.sock'" in cfg
    assert "level admin expose-fd listeners" in cfg


def test_render_ipv6_addresses() -> None:
    settings = GatewaySettings("n1", "::1", 8080, Path("/r"), Path("/l"))
    v6 = Backend("i1", "n1", "fd00::5", 20001)
    cfg = render(table(service("web", v6)), settings)
    assert "bind [::1]:8080" in cfg
    assert "server s1 [fd00::5]:20001 weight 100" in cfg


def test_render_refuses_what_the_file_cannot_hold() -> None:
    bad = table(service("web", route=RouteSpec(http="/we b")))
    with pytest.raises(ValueError, match="web"):
        render(bad, SETTINGS)
    bad = table(service("web", route=RouteSpec(host="x'y")))
    with pytest.raises(ValueError, match="host"):
        render(bad, SETTINGS)


def test_render_uses_the_given_slots() -> None:
    slots = SlotMap({"web": 6}, {"web": {"10.0.0.1:20002": 5}})
    cfg = render(table(service("web", backend(20002))), SETTINGS, slots=slots)
    servers = [ln for ln in section(cfg, "backend be_web") if ln.startswith("server ")]
    assert len(servers) == 6
    assert servers[4] == "server s5 10.0.0.1:20002 weight 100"


@pytest.mark.process
@pytest.mark.skipif(haproxy_binary() is None, reason="no haproxy binary")
@pytest.mark.parametrize("settings_address", ["127.0.0.1", "::1"])
def test_haproxy_accepts_rendered_files(tmp_path: Path, settings_address: str) -> None:
    settings = GatewaySettings("n1", settings_address, 8080, tmp_path, tmp_path)
    binary = haproxy_binary()
    assert binary is not None
    for tbl in (RoutingTable(), SHOP):
        path = tmp_path / "haproxy.cfg"
        path.write_text(render(tbl, settings, CHECKS, cookie_key="secret"))
        result = subprocess.run(
            [binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


# --- slots and runtime plans --------------------------------------------------------------


def test_allocate_slots_leaves_room_and_keeps_previous() -> None:
    web = service("web", *(backend(p) for p in range(20001, 20004)))
    slots = allocate_slots(table(web))
    assert slots.capacity["web"] == 6
    assert sorted(slots.assigned["web"].values()) == [1, 2, 3]
    previous = SlotMap({"web": 4}, {"web": {"10.0.0.1:20003": 4}})
    slots = allocate_slots(table(web), previous)
    assert slots.assigned["web"]["10.0.0.1:20003"] == 4
    assert sorted(slots.assigned["web"].values()) == [1, 2, 4]
    assert allocate_slots(table(service("api"))).capacity["api"] == defaults.HAPROXY_MIN_SLOTS


def plan(old: RoutingTable, new: RoutingTable, checks: dict | None = None) -> RuntimePlan:
    result = plan_runtime(old, new, allocate_slots(old), checks)
    assert isinstance(result, RuntimePlan), result
    return result


def test_plan_adds_an_instance_in_a_free_slot() -> None:
    old = table(service("web", backend(20001)))
    new = table(service("web", backend(20001), backend(20002, weight=30)))
    result = plan(old, new, {"web": CheckSpec(http="/")})
    assert result.commands == [
        "set server be_web/s2 addr 10.0.0.1 port 20002",
        "set server be_web/s2 weight 30",
        "set server be_web/s2 health up",
        "set server be_web/s2 state ready",
    ]
    assert result.slots.assigned["web"] == {"10.0.0.1:20001": 1, "10.0.0.1:20002": 2}
    # without a HAProxy check there is no health to force
    assert "set server be_web/s2 health up" not in plan(old, new).commands


def test_plan_removes_weights_and_drains() -> None:
    old = table(service("web", backend(20001), backend(20002), backend(20003)))
    new = table(service("web", backend(20001, weight=10), backend(20002, draining=True)))
    assert plan(old, new).commands == [
        "set server be_web/s3 state maint",
        "set server be_web/s1 weight 10",
        "set server be_web/s2 state drain",
    ]
    undrain = plan(new, table(service("web", backend(20001, weight=10), backend(20002))))
    assert undrain.commands == ["set server be_web/s2 state ready"]
    assert plan(old, old).commands == []


def test_plan_drains_sticky_instances_to_maint() -> None:
    sticky = BalanceSpec(sticky=StickySpec())
    old = table(service("web", backend(20001), backend(20002), balance=sticky))
    new = table(service("web", backend(20001), backend(20002, draining=True), balance=sticky))
    assert plan(old, new).commands == ["set server be_web/s2 state maint"]


def test_plan_reuses_a_just_freed_slot_last() -> None:
    old = table(service("web", backend(20001), backend(20002)))
    new = table(service("web", backend(20001), backend(20003)))
    result = plan(old, new)
    assert result.commands[0] == "set server be_web/s2 state maint"
    assert result.slots.assigned["web"]["10.0.0.1:20003"] == 3


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        (table(service("web", backend(20001)), service("api")), "+api"),
        (table(), "-web"),
        (table(service("web", backend(20001), route=RouteSpec(http="/w"))), "route"),
        (table(service("web", backend(20001), balance=BalanceSpec(retries=1))), "balance"),
        (table(service("web", *(backend(p) for p in range(20001, 20006)))), "5 instances"),
    ],
)
def test_plan_reloads_for_structural_changes(new: RoutingTable, reason: str) -> None:
    old = table(service("web", backend(20001)))
    result = plan_runtime(old, new, allocate_slots(old))
    assert isinstance(result, Reload)
    assert reason in result.reason


def test_plan_without_old_table_reloads() -> None:
    assert isinstance(plan_runtime(None, table(), SlotMap()), Reload)


# --- checks_for ---------------------------------------------------------------------------


def test_checks_for_keeps_only_checks_of_the_routed_port() -> None:
    spec = parse_spec(
        """
cluster: c
nodes: [{name: n1, address: 127.0.0.1, store: true}]
services:
  web: {command: [x], route: {http: /}, check: {http: /h}}
  api: {command: [x], ports: [main, admin], route: {http: /api}, check: {http: /h, port: admin}}
  db: {command: [x], ports: [pg], route: {tcp: 5432}, check: {tcp: true}}
  job: {command: [x], route: {http: /job}, check: {exec: ["true"]}}
  bare: {command: [x], route: {http: /bare}}
  hidden: {command: [x], check: {http: /}}
"""
    )
    checks = checks_for(spec)
    assert checks["web"] is not None and checks["web"].http == "/h"
    assert checks["db"] is not None and checks["db"].tcp == "pg"
    assert checks["api"] is None  # checks another port
    assert checks["job"] is None and checks["bare"] is None
    assert "hidden" not in checks


# --- CLI replies and counters ------------------------------------------------------------


SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
11304           master          10 [failed: 1]  0d00h00m17s     2.6.12
# workers
12022           worker          0               0d00h00m03s     2.6.12
# old workers
11990           worker          1               0d00h00m05s     2.6.12
# programs

"""


def test_parse_show_proc() -> None:
    procs = parse_show_proc(SHOW_PROC)
    assert (procs.master, procs.reloads, procs.failed_reloads) == (11304, 10, 1)
    assert procs.workers == [12022] and procs.worker == 12022
    assert procs.old_workers == [11990]


def test_refusals_ignore_what_addr_changes_say() -> None:
    reply = (
        "IP changed from '0.0.0.0' to '10.0.0.1', port changed from '1' to '20002' by 'x'\n\n"
        "no need to change the addr\nNo such server.\n"
    )
    assert refusals(reply) == ["No such server."]


HEADER = "# pxname,svname,scur,stot,wretr,wredis,hrsp_2xx,hrsp_5xx,req_tot,ttime,mode"


def stat(*rows: str) -> list[dict[str, str]]:
    return parse_stat("\n".join([HEADER, *rows]) + "\n")


def test_ledger_accumulates_across_slot_changes_and_reloads() -> None:
    ledger = TrafficLedger()
    slots = SlotMap({"web": 2}, {"web": {"a:1": 1, "b:2": 2}})
    ledger.update(
        100,
        stat(
            "http,FRONTEND,0,10,,,10,0,10,,http",
            "be_web,s1,2,6,1,0,5,0,6,3,http",
            "be_web,s2,0,4,0,1,3,1,4,30,http",
            "be_web,BACKEND,2,10,1,1,8,2,10,10,http",
        ),
        slots,
        old_rows=stat("be_web,s1,1,0,0,0,0,0,0,0,http"),
    )
    snap = ledger.snapshot()["web"]
    assert snap.total.requests == 10
    assert snap.total.responses == {"2xx": 8, "5xx": 1, "error": 1}
    assert snap.total.retries == 2
    assert snap.backends["a:1"].requests == 6
    assert snap.backends["a:1"].active == 3  # 2 now + 1 in an old worker
    assert ledger.inflight("a:1") == 3 and ledger.inflight("b:2") == 0
    assert snap.backends["b:2"].latency_counts[LATENCY_BUCKETS.index(0.05)] == 4
    assert snap.backends["b:2"].latency_sum == pytest.approx(4 * 0.03)
    # the slot of b:2 now serves c:3; the same worker counts on
    slots = SlotMap({"web": 2}, {"web": {"a:1": 1, "c:3": 2}})
    ledger.update(
        100,
        stat("be_web,s1,0,7,1,0,6,0,7,3,http", "be_web,s2,0,6,0,1,5,1,6,30,http"),
        slots,
    )
    snap = ledger.snapshot()["web"]
    assert snap.backends["a:1"].requests == 7
    assert snap.backends["b:2"].requests == 4
    assert snap.backends["c:3"].requests == 2
    # a new worker counts from zero again
    ledger.update(101, stat("be_web,s1,0,2,0,0,2,0,2,3,http"), slots)
    assert ledger.snapshot()["web"].backends["a:1"].requests == 9


def test_ledger_counts_tcp_sessions() -> None:
    ledger = TrafficLedger()
    slots = SlotMap({"db": 1}, {"db": {"a:1": 1}})
    ledger.update(1, stat("be_db,s1,1,5,0,0,,,,100,tcp", "be_db,BACKEND,1,5,0,0,,,,100,tcp"), slots)
    snap = ledger.snapshot()["db"]
    assert snap.total.requests == 5 and snap.backends["a:1"].requests == 5
    assert snap.total.active == 1


def test_sockets_move_to_a_private_short_directory_when_the_path_is_too_long(
    tmp_path: Path,
) -> None:
    from ninefold.gateway.haproxy.config import socket_dir

    assert socket_dir(tmp_path) == tmp_path
    deep = tmp_path / ("d" * 100)
    short = socket_dir(deep)
    assert len(str(short / "haproxy-master.sock")) <= 97
    assert short == socket_dir(deep)  # the same directory every time
    assert short.stat().st_mode & 0o777 == 0o700
    short.chmod(0o777)  # someone could have made it for us: refuse it
    try:
        with pytest.raises(RuntimeError, match="not a private directory"):
            socket_dir(deep)
    finally:
        short.rmdir()


def test_render_binds_the_vips_with_transparent() -> None:
    settings = GatewaySettings(
        "n1", "10.99.0.11", 8080, Path("/r"), Path("/l"), vips=("10.99.0.10",)
    )
    cfg = render(SHOP, settings, CHECKS)
    front = section(cfg, "frontend http")
    assert "bind 10.99.0.11:8080" in front
    assert "bind 10.99.0.10:8080 transparent" in front
    assert "bind 10.99.0.10:5432 transparent" in section(cfg, "frontend tcp_5432")
