"""A service's access policy as haproxy.cfg rules (pure: text only).

HAProxy 2.6 verifies JWTs itself (``jwt_verify``, ``jwt_header_query``,
``jwt_payload_query``, ``json_query``). The backend of a service with a policy
gets, after its ``replace-path``, rules that mirror ``gateway/access.py`` step
by step, with the same statuses, RFC 6750 headers and JSON bodies:

1. a policy whose keys could not be loaded: 503 for everything;
2. a path the rules could be fooled by (``access.BAD_PATH``, the same
   expression): 400;
3. more than one Authorization header: 400; no bearer token: 401;
4. a token that is not three base64url parts, or whose header has no ``alg``:
   401 malformed; an ``alg`` not in the policy's list (so never ``none`` nor
   ``HS256``): 401;
5. the signature, by ``jwt_verify`` with the literal algorithm the header
   names and each key of that algorithm (written as PEM files by the
   engine): 401 unless one verifies;
6. the claims, in PyJWT's order: required ``exp`` (and ``iss``, ``aud`` when
   the policy names them), ``iat`` and ``nbf`` not in the future and ``exp``
   not past (with the leeway, in whole seconds), ``iss`` equal, the audience
   among ``aud``; a ``sub`` with control characters: 401;
7. roles: the longest rule prefix the path starts with picks the rule; none
   of its roles in the roles claim: 403;
8. the client's subject header is removed, and the verified ``sub`` set.

HAProxy's ``json_query`` cannot iterate an array: ``aud`` and the roles claim
are read as a string or as their first ``ACCESS_HAPROXY_ARRAY_MAX`` entries
(``$.claim[0]`` ...); a token whose matching entry comes later is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ninefold import defaults
from ninefold.gateway import access
from ninefold.gateway.access import AccessPolicy, Deny
from ninefold.gateway.jwt_keys import VerifyKey

TOKEN_SHAPE = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$"
CONTROL = "[[:cntrl:]]"

Quote = Callable[[str, str], str]


def key_path(run_dir: Path, key: VerifyKey) -> Path:
    """Where the engine writes a policy key for jwt_verify."""
    return run_dir / "jwt" / f"{key.digest}.pem"


def _return(service: str, deny: Deny) -> str:
    """`http-request return` giving the same answer as the builtin engine."""
    body = access.body_text(service, deny)
    line = f"    http-request return status {deny.status} content-type application/json"
    line += f" string '{body}'"
    challenge = access.challenge(service, deny)
    if challenge is not None:
        line += f" hdr WWW-Authenticate '{challenge.replace('%', '%%')}'"
    return line


def _json_path(claim: str) -> str:
    return "$." + claim


def access_rules(policy: AccessPolicy, run_dir: Path, quote: Quote) -> list[str]:
    """The backend lines that enforce `policy` (after the path is stripped)."""
    name = policy.service
    spec = policy.spec.jwt

    def refuse(deny: Deny, condition: str) -> str:
        return f"{_return(name, deny)} if {condition}"

    def invalid(description: str, condition: str) -> str:
        return refuse(Deny(401, description, "invalid_token"), condition)

    lines = ["    # access policy (docs/gateway.md#access-policy)"]
    if policy.error is not None:
        return [*lines, _return(name, Deny(503, access.UNAVAILABLE))]
    bad_path = Deny(400, access.BAD_PATH_TEXT, "invalid_request")
    lines.append(refuse(bad_path, f"{{ path -m reg {_single(access.BAD_PATH.pattern)} }}"))
    many = Deny(400, access.MANY_TOKENS, "invalid_request")
    lines.append(refuse(many, "{ req.fhdr_cnt(authorization) gt 1 }"))
    lines.append("    http-request set-var(txn.nf_tok) http_auth_bearer")
    lines.append(refuse(Deny(401, access.NO_TOKEN), "!{ var(txn.nf_tok) -m found }"))
    lines.append("    http-request set-var(txn.nf_alg) var(txn.nf_tok),jwt_header_query('$.alg')")
    malformed = f"!{{ var(txn.nf_tok) -m reg {_single(TOKEN_SHAPE)} }} || "
    malformed += "!{ var(txn.nf_alg) -m found }"
    lines.append(invalid(access.MALFORMED, malformed))
    algorithms = " ".join(spec.algorithms)
    lines.append(invalid(access.BAD_ALGORITHM, f"!{{ var(txn.nf_alg) -m str {algorithms} }}"))

    for key in policy.keys:
        path = quote(str(key_path(run_dir, key)), "run_dir")
        lines.append(
            f"    http-request set-var(txn.nf_sig) var(txn.nf_tok),jwt_verify('{key.algorithm}',"
            f"{path}) if {{ var(txn.nf_alg) -m str {key.algorithm} }} "
            "!{ var(txn.nf_sig) -m int 1 }"
        )
    lines.append(invalid(access.BAD_SIGNATURE, "!{ var(txn.nf_sig) -m int 1 }"))

    lines += _claims(policy, quote, invalid)
    lines += _roles(policy, quote, refuse)
    header = spec.subject_header
    lines += [
        f"    http-request del-header {header}",
        f"    http-request set-header {header} %[var(txn.nf_sub)]"
        " if { var(txn.nf_sub) -m found }",
    ]
    return lines


def _claims(policy: AccessPolicy, quote: Quote, invalid: Callable[[str, str], str]) -> list[str]:
    spec = policy.spec.jwt
    leeway = max(0, round(spec.leeway))
    pl = "var(txn.nf_pl)"
    lines = [
        # jwt_payload_query without a path gives nothing in 2.6: decode it here
        "    http-request set-var(txn.nf_pl) var(txn.nf_tok),word(2,.),ub64dec",
        "    http-request set-var(txn.nf_now) date",
    ]
    # required claims, in the order PyJWT checks them
    lines.append(invalid(access.missing_claim("exp"), f"!{{ {pl},json_query('$.exp') -m found }}"))
    if spec.issuer is not None:
        lines.append(
            invalid(access.missing_claim("iss"), f"!{{ {pl},json_query('$.iss') -m found }}")
        )
    if spec.audience is not None:
        lines.append(
            invalid(
                access.missing_claim("aud"),
                f"!{{ {pl},json_query('$.aud') -m found }} "
                f"!{{ {pl},json_query('$.aud[0]') -m found }}",
            )
        )
    # iat and nbf: not after now + leeway; exp: after now - leeway (whole seconds).
    # Only positive numbers are subtracted from: HAProxy 2.6's `sub` of a
    # positive value from a negative one gives LLONG_MAX.
    lines.append(f"    http-request set-var(txn.nf_late) var(txn.nf_now),add({leeway})")
    for claim, arithmetic in (
        ("iat", "sub(txn.nf_late)"),
        ("nbf", "sub(txn.nf_late)"),
        ("exp", f"add({leeway}),sub(txn.nf_now)"),
    ):
        lines.append(
            f"    http-request set-var(txn.nf_{claim}) {pl},json_query('$.{claim}','int'),"
            + arithmetic
        )
        not_int = access.bad_claim("iat") if claim == "iat" else access.MALFORMED
        lines.append(
            invalid(
                not_int,
                f"{{ {pl},json_query('$.{claim}') -m found }} !{{ var(txn.nf_{claim}) -m found }}",
            )
        )
        if claim == "exp":
            lines.append(invalid(access.EXPIRED, "{ var(txn.nf_exp) -m int le 0 }"))
        else:
            lines.append(invalid(access.NOT_YET_VALID, f"{{ var(txn.nf_{claim}) -m int gt 0 }}"))
    if spec.issuer is not None:
        issuer = quote(spec.issuer, "issuer")
        wrong = f"!{{ {pl},json_query('$.iss') -m str {issuer} }}"
        lines.append(invalid(access.WRONG_ISSUER, wrong))
    if spec.audience is not None:
        audience = quote(spec.audience, "audience")
        lines += [
            f"    acl nf_aud {pl},json_query('{path}') -m str {audience}"
            for path in _entries("aud")
        ]
        lines.append(invalid(access.WRONG_AUDIENCE, "!nf_aud"))
    lines += [
        f"    http-request set-var(txn.nf_sub) {pl},json_query('$.sub')",
        invalid(access.bad_claim("sub"), f"{{ var(txn.nf_sub) -m reg {_single(CONTROL)} }}"),
    ]
    return lines


def _roles(policy: AccessPolicy, quote: Quote, refuse: Callable[[Deny, str], str]) -> list[str]:
    if not policy.rules:
        return []
    pl = "var(txn.nf_pl)"
    lines: list[str] = []
    # rules are longest prefix first; set shortest first, so the longest match stays
    for i in reversed(range(len(policy.rules))):
        prefix = policy.rules[i].prefix
        if prefix == "/":
            lines.append(f"    http-request set-var(txn.nf_rule) int({i})")
            continue
        p = quote(prefix, "access rule path")
        beg = f"{quote(prefix + '/', 'access rule path')} {quote(prefix + ';', 'access rule path')}"
        lines.append(
            f"    http-request set-var(txn.nf_rule) int({i})"
            f" if {{ path -m str {p} }} || {{ path_beg {beg} }}"
        )
    claim = policy.spec.jwt.roles_claim
    for i, rule in enumerate(policy.rules):
        roles = " ".join(quote(role, "role") for role in rule.roles)
        lines += [
            f"    acl nf_role_{i} {pl},json_query('{path}') -m str {roles}"
            for path in _entries(claim)
        ]
        deny = Deny(403, access.MISSING_ROLE, "insufficient_scope", tuple(rule.roles))
        lines.append(refuse(deny, f"{{ var(txn.nf_rule) -m int {i} }} !nf_role_{i}"))
    return lines


def _entries(claim: str) -> list[str]:
    """JSON paths of a claim as a string and of its first array entries."""
    base = _json_path(claim)
    return [base] + [f"{base}[{n}]" for n in range(defaults.ACCESS_HAPROXY_ARRAY_MAX)]


def _single(pattern: str) -> str:
    """A pattern in single quotes: HAProxy takes everything in them literally."""
    if "'" in pattern:
        raise ValueError(f"cannot quote {pattern!r} for haproxy.cfg")
    return f"'{pattern}'"
