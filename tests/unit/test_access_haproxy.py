"""Access policies rendered into haproxy.cfg (pure), and accepted by `haproxy -c`
when the binary exists. What HAProxy then answers is checked against a real
HAProxy in tests/cluster/test_gateway_security.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ninefold.gateway.access import AccessPolicy
from ninefold.gateway.engine import GatewaySettings
from ninefold.gateway.haproxy import Reload, allocate_slots, haproxy_binary, plan_runtime, render
from ninefold.gateway.haproxy.access import key_path
from ninefold.gateway.haproxy.engine import _write_keys
from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
from ninefold.spec.routing import BalanceSpec, RouteSpec
from tests.unit.test_access import Issuer, policy_spec


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings("n1", "127.0.0.1", 8080, tmp_path / "run", tmp_path / "log")


def table(policy: AccessPolicy | None, prefix: str = "/shop") -> RoutingTable:
    backend = Backend("shop-0", "n1", "127.0.0.1", 20001)
    routes = ServiceRoutes("shop", RouteSpec(http=prefix), BalanceSpec(), (backend,), policy)
    return RoutingTable({"shop": routes})


def backend_section(cfg: str) -> list[str]:
    lines = cfg.split("backend be_shop\n", 1)[1].splitlines()
    return [line.strip() for line in lines]


def test_rules_follow_the_path_strip_and_use_each_key(issuer: Issuer, tmp_path: Path) -> None:
    policy = AccessPolicy.load("shop", policy_spec(issuer))
    lines = backend_section(render(table(policy), settings(tmp_path)))
    start = lines.index("# access policy (docs/gateway.md#access-policy)")
    assert lines[start - 1].startswith("http-request replace-path")
    for key in policy.keys:
        path = key_path(tmp_path / "run", key)
        assert any(
            f"jwt_verify('{key.algorithm}','{path}') if {{ var(txn.nf_alg) -m str "
            f"{key.algorithm} }}" in line
            for line in lines
        )
    assert "http-request del-header X-Subject" in lines
    assert lines.index("http-request del-header X-Subject") > lines.index(
        next(line for line in lines if "missing role" in line)
    )
    assert any("!{ var(txn.nf_alg) -m str RS256 ES256 }" in line for line in lines)
    # the longest prefix is set last, so it wins
    rules = [line for line in lines if line.startswith("http-request set-var(txn.nf_rule)")]
    assert [r.split("'")[1] for r in rules] == ["/admin", "/orders"]
    assert rules[-1].startswith("http-request set-var(txn.nf_rule) int(0)")


def test_unavailable_policy_renders_a_503_for_everything(issuer: Issuer, tmp_path: Path) -> None:
    broken = AccessPolicy.load("shop", policy_spec(issuer, keys=[str(tmp_path / "no.pem")]))
    lines = backend_section(render(table(broken), settings(tmp_path)))
    start = lines.index("# access policy (docs/gateway.md#access-policy)")
    assert lines[start + 1] == (
        "http-request return status 503 content-type application/json string "
        '\'{"error": "access policy unavailable", "service": "shop"}\''
    )
    assert not any("jwt_verify" in line for line in lines)


def test_a_policy_change_reloads(issuer: Issuer, tmp_path: Path) -> None:
    one = table(AccessPolicy.load("shop", policy_spec(issuer)))
    slots = allocate_slots(one)
    same = table(AccessPolicy.load("shop", policy_spec(issuer)))
    assert not isinstance(plan_runtime(one, same, slots), Reload)
    other = table(AccessPolicy.load("shop", policy_spec(issuer, audience="x")))
    plan = plan_runtime(one, other, slots)
    assert isinstance(plan, Reload)
    assert "access policy" in plan.reason
    assert isinstance(plan_runtime(one, table(None), slots), Reload)


def test_no_rules_no_role_checks(issuer: Issuer, tmp_path: Path) -> None:
    spec = policy_spec(issuer)
    spec.rules.clear()
    cfg = render(table(AccessPolicy.load("shop", spec)), settings(tmp_path))
    assert "nf_rule" not in cfg
    assert "missing role" not in cfg


@pytest.mark.process
@pytest.mark.skipif(haproxy_binary() is None, reason="no haproxy binary")
@pytest.mark.parametrize("jwks", [False, True])
def test_haproxy_accepts_rendered_policies(issuer: Issuer, tmp_path: Path, jwks: bool) -> None:
    fields = {"keys": None, "jwks": str(issuer.jwks())} if jwks else {}
    spec = policy_spec(issuer, **fields)
    spec.rules[0].roles.append("42")
    spec.rules.append(type(spec.rules[0])(path="/", roles=["ROLE_ANY"]))
    policy = AccessPolicy.load("shop", spec)
    assert policy.error is None
    run = tmp_path / "run"
    run.mkdir()
    for prefix in ("/shop", "/"):
        t = table(policy, prefix)
        _write_keys(run, t)
        path = run / "haproxy.cfg"
        path.write_text(render(t, settings(tmp_path)))
        out = subprocess.run(
            [str(haproxy_binary()), "-c", "-q", "-f", str(path)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (run / "jwt").iterdir()) == sorted(
        f"{k.digest}.pem" for k in policy.keys
    )
