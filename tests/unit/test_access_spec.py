"""The spec keys of issue 6's gateway part: `services.<name>.access` and
`gateway.tls`, with their errors as `FILE:LINE path: message` lines, and the
policy kept out of what decides an instance's restart."""

from __future__ import annotations

import pytest

from ninefold.decide.plan import generation
from ninefold.spec import SpecError, dump_spec, parse_spec
from ninefold.state.snapshot import ClusterState

NODES = """cluster: shop
nodes:
  - {name: n1, address: 127.0.0.1, store: true}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(NODES + text, "s.yaml")
    return [str(issue) for issue in info.value.issues]


def test_a_full_policy_and_tls_section_round_trip() -> None:
    spec = parse_spec(
        NODES
        + """gateway:
  tls: {cert: /etc/gw/cert.pem, key: /etc/gw/key.pem, port: 9443, redirect_http: true}
services:
  web:
    command: x {port}
    route: {http: /web}
    access:
      jwt:
        keys: [/etc/shop/issuer.pem]
        algorithms: [ES256]
        issuer: https://login.example
        audience: shop
        leeway: 1m
        roles_claim: realm_access.roles
        subject_header: X-User
      rules:
        - {path: /admin/, roles: [ROLE_ADMIN]}
        - {path: /, roles: [ROLE_USER, 42]}
"""
    )
    access = spec.services["web"].access
    assert access is not None
    assert access.jwt.leeway == 60.0
    assert access.rules[0].prefix == "/admin"
    assert access.rules[1].roles == ["ROLE_USER", "42"]
    assert spec.gateway.tls is not None and spec.gateway.tls.port == 9443
    assert parse_spec(dump_spec(spec)) == spec


def test_defaults() -> None:
    spec = parse_spec(
        NODES
        + """gateway: {tls: {}}
services:
  web:
    command: x {port}
    route: {http: /web}
    access: {jwt: {jwks: /etc/jwks.json}}
"""
    )
    jwt = spec.services["web"].access.jwt  # type: ignore[union-attr]
    assert (jwt.algorithms, jwt.leeway, jwt.roles_claim, jwt.subject_header) == (
        ["RS256", "ES256"],
        30.0,
        "authorities",
        "X-Subject",
    )
    assert spec.services["web"].access.rules == []  # type: ignore[union-attr]
    tls = spec.gateway.tls
    assert tls is not None
    assert (tls.cert, tls.key, tls.port, tls.redirect_http) == (None, None, 8443, False)


def test_errors_name_file_line_and_path() -> None:
    assert errors(
        """gateway:
  tls: {cert: /c.pem, port: 7070}
services:
  web:
    command: x {port}
    route: {http: /web}
    access:
      jwt:
        keys: [k.pem]
        algorithms: [RS256, none]
        roles_claim: "a..b"
        subject_header: Authorization
      rules:
        - {path: admin, roles: []}
  tcp:
    command: x {port}
    route: {tcp: 9000}
    access: {jwt: {jwks: /j.json}}
  both:
    command: x {port}
    route: {http: /both}
    access: {jwt: {jwks: /j.json, keys: [/k.pem]}}
  twice:
    command: x {port}
    route: {http: /twice}
    access:
      jwt: {keys: [/k.pem], algorithms: [PS256, HS256]}
  dup:
    command: x {port}
    route: {http: /dup}
    access:
      jwt: {keys: [/k.pem]}
      rules: [{path: /a, roles: [r]}, {path: /a/, roles: [s]}]
  spaced:
    command: x {port}
    route: {http: /spaced}
    access: {jwt: {keys: [/k.pem], issuer: "my issuer"}}
"""
    ) == [
        "s.yaml:5 gateway.tls: give both cert and key, or neither (the node's certificate "
        "from the cluster CA)",
        "s.yaml:12 services.web.access.jwt.keys[0]: 'k.pem' must be an absolute path "
        "(the gateways read it on every node)",
        "s.yaml:13 services.web.access.jwt.algorithms: 'none' is never accepted: tokens "
        "must be signed",
        "s.yaml:14 services.web.access.jwt.roles_claim: 'a..b' is not a claim name (letters, "
        "digits, '_' and '-'; 'a.b' for claim b inside claim a)",
        "s.yaml:15 services.web.access.jwt.subject_header: Authorization is a header the "
        "gateway sets or reads itself; pick another",
        "s.yaml:17 services.web.access.rules[0].path: 'admin' is not a path prefix "
        "(start it with /)",
        "s.yaml:17 services.web.access.rules[0].roles: must not be empty",
        "s.yaml:21 services.tcp.access: access needs an http route (route: {http: /...}); "
        "the service has a tcp route",
        "s.yaml:25 services.both.access.jwt: give either keys (PEM files) or jwks (a JWK Set file)",
        "s.yaml:30 services.twice.access.jwt.algorithms: unknown algorithm 'PS256' "
        "(allowed: RS256, ES256)",
        "s.yaml:36 services.dup.access.rules[1].path: prefix /a is also rules[0]",
        "s.yaml:40 services.spaced.access.jwt.issuer: 'my issuer' is not a valid issuer "
        "(printable, no spaces, quotes, '#' or '\\')",
    ]


def test_access_needs_a_route_and_tls_a_free_port() -> None:
    assert errors(
        """gateway: {tls: {port: 8080}}
services:
  web:
    command: x {port}
    access: {jwt: {jwks: /j.json}}
  db:
    command: x {port}
    route: {tcp: 8443}
"""
    ) == [
        "s.yaml:4 gateway.tls.port: port 8080 is node 'n1's gateway_http port",
        "s.yaml:8 services.web.access: access needs an http route (route: {http: /...}); "
        "the service has no route",
    ]
    assert errors(
        """gateway: {tls: {}}
services:
  db:
    command: x {port}
    route: {tcp: 8443}
"""
    ) == ["s.yaml:4 gateway.tls.port: port 8443 is also the tcp route of 'db'"]


def test_a_policy_change_restarts_no_instance() -> None:
    base = NODES + "services:\n  web:\n    command: x {port}\n    route: {http: /web}\n"
    before = parse_spec(base)
    after = parse_spec(base + "    access: {jwt: {jwks: /j.json}}\n")

    def state(spec: object) -> ClusterState:
        return ClusterState(spec, frozenset(), frozenset(), ())  # type: ignore[arg-type]

    assert generation(state(before), "web") == generation(state(after), "web")
