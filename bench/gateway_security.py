"""Gateway security cost: requests per second through a gateway engine with
plain HTTP, with TLS, with a JWT access policy, with both, and to the backend
through another node's mesh listener over mutual TLS (`route.mtls`), next to
each other in one run, against the same backend; ratios to plain HTTP.

Processes (nothing shares an event loop), as in gateway_throughput.py:

  backend   gateway_throughput.py's keep-alive HTTP/1.1 server (uvloop +
            httptools, a 3-byte answer), started once
  gateway   one subprocess per engine (builtin, and haproxy when installed):
            GatewaySettings on 127.0.0.1 with `gateway.tls` (a self-signed EC
            P-256 certificate made for the run), routes /open (no policy) and
            /jwt (an access policy: RS256 key, issuer, audience, a rule on /
            needing ROLE_USER) to the backend; plays node n1 (a node
            certificate from a CA made for the run) with /2gw and /mesh
            through n2
  n2        a second gateway subprocess of the same engine on 127.0.0.2
            (every 127.x address is local), node n2 with its own node
            certificate: a mesh listener piping to the backend, listed as
            n2's mtls instance mesh-0, and a TCP route to the backend
  load      wrk -t1 (it speaks https: it is linked with OpenSSL, and does not
            check certificates), every request with `Authorization: Bearer`
            of a valid token (RS256 unless --alg ES256); or, with --loadgen
            python or without wrk, a small asyncio generator in a subprocess

Targets per engine, each after a --warmup run:

  http       http://127.0.0.1:<port>/open/
  tls        https://127.0.0.1:<tls port>/open/
  jwt        http://127.0.0.1:<port>/jwt/   one token on every request: the
             builtin engine verifies its signature once, then only its times
             (ACCESS_TOKEN_CACHE); HAProxy verifies it on every request
  jwt-fresh  the same URL, each request with the next of ACCESS_TOKEN_CACHE +
             1000 distinct tokens (a wrk Lua script cycles through them), so
             no token is remembered: a signature check per request everywhere
  tls+jwt    https://127.0.0.1:<tls port>/jwt/, one token
  2gw        http://127.0.0.1:<port>/2gw/   the control for mesh: n1 passes the
             request in plain text to n2's TCP route, which pipes it on to
             the backend
  mesh       http://127.0.0.1:<port>/mesh/  n1 passes the request to n2's mesh
             port over mutual TLS (n1's certificate as client certificate,
             n2's name as server name, mesh-0 in ALPN), n2 pipes it on to the
             backend; n1 keeps its mesh connections alive like any other

The backend's address is 127.0.0.1 on n2, but n1 lists mesh-0 and hop-0 as
127.0.0.2:<port>: an instance's address:port is its key, and the builtin
engine keeps one connection pool per key, so the direct backend and the ones
reached through n2 must not share one. Nothing listens on 127.0.0.2:<backend
port>, so an answer on /mesh/ came through n2's mesh listener. On 2 shared cores the second gateway
takes CPU from the first, the backend and wrk in 2gw and mesh: those ratios
measure that sharing as well as the hop; its CPU is reported as cpu% n2.

Connections are kept alive, so a TLS handshake happens once per connection
(--connections of them), not per request.

    .venv/bin/python bench/gateway_security.py [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests, ninefold
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster, gateway_throughput

import gateway_throughput as gt

NAME = "gateway_security"
PY = sys.executable
SCRIPT = str(Path(__file__).resolve())
READY_TIMEOUT = 30.0
ISSUER = "https://login.bench"
AUDIENCE = "bench"
TARGETS = ("http", "tls", "jwt", "jwt-fresh", "tls+jwt", "2gw", "mesh")
N1, N2 = "127.0.0.1", "127.0.0.2"
LUA = """
tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = line end
i = 0
request = function()
  i = i %% #tokens + 1
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


# --- keys and certificates (made once per run, in the run's directory) ------------------------


def make_secrets(root: Path, alg: str) -> dict[str, str]:
    """A self-signed server certificate, an issuer key pair, and a CA with
    node certificates for n1 and n2 (in <root>/n1|n2/tls/); returns the
    files (the nodes' data directories) and a valid token for the /jwt route."""
    import ipaddress

    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-gateway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    files = {"cert": root / "gateway.crt", "key": root / "gateway.key", "issuer": root / "iss.pem"}
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["key"].chmod(0o600)
    signer: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    files["issuer"].write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    claims = {
        "sub": "bench-user",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(time.time()),
        "exp": int(time.time()) + 24 * 3600,
        "authorities": ["ROLE_USER"],
    }
    token = jwt.encode(claims, signer, algorithm=alg)
    from ninefold import defaults

    fresh = root / "tokens.txt"
    with fresh.open("w") as out:
        for n in range(defaults.ACCESS_TOKEN_CACHE + 1000):
            out.write(jwt.encode({**claims, "jti": str(n)}, signer, algorithm=alg) + "\n")
    script = root / "fresh.lua"
    script.write_text(LUA % fresh)
    files.update(tokens=fresh, lua=script)
    from ninefold.security.ca import create_ca
    from ninefold.security.certs import issue_node_files
    from ninefold.spec import NodeSpec

    ca = create_ca("bench")
    for node, address in (("n1", N1), ("n2", N2)):
        issue_node_files(ca, NodeSpec(name=node, address=address), root / node)
        files[node] = root / node
    return {**{k: str(v) for k, v in files.items()}, "token": token}


# --- the gateway process (run as `python gateway_security.py _gateway ...`) ---------------------


def serve_gateway(
    engine_name: str, backend_port: int, root: Path, secrets_file: Path, n2: dict[str, int]
) -> None:
    """n1: one engine with TLS on, /open without and /jwt with an access
    policy, /2gw and /mesh through n2 (`n2`: its ports); prints its ports
    once applied."""
    from ninefold.gateway.access import AccessPolicy
    from ninefold.gateway.engine import GatewaySettings
    from ninefold.gateway.routes import Backend, MeshHop, RoutingTable, ServiceRoutes
    from ninefold.security.files import NodeTlsFiles
    from ninefold.spec.access import AccessSpec
    from ninefold.spec.routing import BalanceSpec, GatewayTlsSpec, RouteSpec

    secrets = json.loads(secrets_file.read_text())
    port, tls_port = gt.free_port(), gt.free_port()
    tls = GatewayTlsSpec(cert=secrets["cert"], key=secrets["key"], port=tls_port)
    files = NodeTlsFiles.of_data_dir(Path(secrets["n1"]))
    settings = GatewaySettings("n1", N1, port, root / "run", root / "log", tls=tls, node_tls=files)
    spec = AccessSpec.model_validate(
        {
            "jwt": {"keys": [secrets["issuer"]], "issuer": ISSUER, "audience": AUDIENCE},
            "rules": [{"path": "/", "roles": ["ROLE_USER"]}],
        }
    )
    policy = AccessPolicy.load("jwt", spec)
    if policy.error is not None:
        raise SystemExit(policy.error)
    backend = (Backend("web-0", "n1", N1, backend_port),)
    hop = Backend("hop-0", "n2", N2, n2["tcp_port"])
    mesh = MeshHop(N2, n2["mesh_port"], "n2", "mesh-0")
    remote = Backend("mesh-0", "n2", N2, backend_port, mesh=mesh)
    balance = BalanceSpec()
    table = RoutingTable(
        {
            "open": ServiceRoutes("open", RouteSpec(http="/open"), balance, backend),
            "jwt": ServiceRoutes("jwt", RouteSpec(http="/jwt"), balance, backend, policy),
            "2gw": ServiceRoutes("2gw", RouteSpec(http="/2gw"), balance, (hop,)),
            "mesh": ServiceRoutes("mesh", RouteSpec(http="/mesh", mtls=True), balance, (remote,)),
        },
        "n1",
    )
    run_engine(engine_name, settings, table, {"port": port, "tls_port": tls_port})


def serve_n2(engine_name: str, backend_port: int, root: Path, secrets_file: Path) -> None:
    """n2: one engine on 127.0.0.2 with a mesh listener for its mtls instance
    mesh-0 and a TCP route hop, both the backend; prints their ports."""
    from ninefold.gateway.engine import GatewaySettings
    from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
    from ninefold.security.files import NodeTlsFiles
    from ninefold.spec.routing import BalanceSpec, RouteSpec
    from tests.helpers import free_ports

    secrets = json.loads(secrets_file.read_text())
    port, mesh_port, tcp_port = free_ports(3, N2)
    files = NodeTlsFiles.of_data_dir(Path(secrets["n2"]))
    settings = GatewaySettings(
        "n2", N2, port, root / "run", root / "log", node_tls=files, mesh_port=mesh_port
    )
    local = (Backend("mesh-0", "n2", N1, backend_port),)
    hop = (Backend("hop-0", "n2", N1, backend_port),)
    table = RoutingTable(
        {
            "mesh": ServiceRoutes("mesh", RouteSpec(http="/mesh", mtls=True), BalanceSpec(), local),
            "hop": ServiceRoutes("hop", RouteSpec(tcp=tcp_port), BalanceSpec(), hop),
        },
        "n2",
    )
    run_engine(engine_name, settings, table, {"mesh_port": mesh_port, "tcp_port": tcp_port})


def run_engine(engine_name: str, settings: Any, table: Any, info: dict[str, int]) -> None:
    """Start the engine with `table` applied, print `info`, run until told to stop."""
    import uvloop

    from ninefold.gateway.engine import Engine

    async def main() -> None:
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        engine: Engine
        if engine_name == "builtin":
            from ninefold.gateway.builtin import BuiltinEngine

            engine = BuiltinEngine(settings)
        else:
            from ninefold.gateway.haproxy import HaproxyEngine

            engine = HaproxyEngine(settings)
        await engine.apply(table)
        await engine.start()
        try:
            await engine.apply(table)
            print(json.dumps(info), flush=True)
            await gt.until_told_to_stop()
        finally:
            await engine.stop()

    uvloop.run(main())


# --- the fallback load generator (`_load URL CONNECTIONS SECONDS TOKEN`) -----------------------


def run_load(url: str, connections: int, duration: float, token: str) -> None:
    """gateway_throughput's load generator, with the token (`@file`: one per line, in turn)."""
    tokens = Path(token[1:]).read_text().split() if token.startswith("@") else [token]
    gt.run_load(url, connections, duration, tokens)


# --- the bench ---------------------------------------------------------------------------------


def check(url: str, token: str) -> None:
    """One request must get the backend's answer (and one without a token a 401 on /jwt)."""
    import httpx

    with httpx.Client(verify=False, timeout=5) as client:
        r = client.get(url, headers={"Authorization": f"Bearer {token}"})
        if r.status_code != 200 or r.content != gt.BODY:
            raise RuntimeError(f"{url} answered {r.status_code} {r.content[:80]!r}")
        if "/jwt/" in url and client.get(url).status_code != 401:
            raise RuntimeError(f"{url} let a request without a token through")


def load(
    url: str, args: argparse.Namespace, duration: float, token: str, lua: str | None
) -> dict[str, Any]:
    """One load run; `lua`: the wrk script sending fresh tokens (`token` is
    then `@file` of them, for the Python generator)."""
    seconds = max(1, round(duration))
    if args.loadgen == "wrk":
        cmd = [args.wrk, "-t1", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "5s"]
        cmd += ["--latency"]
        cmd += ["-s", lua] if lua else ["-H", f"Authorization: Bearer {token}"]
        cmd.append(url)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
        return gt.parse_wrk(out.stdout)
    cmd = [PY, SCRIPT, "_load", url, str(args.connections), str(seconds), token]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def measure(
    label: str,
    url: str,
    args: argparse.Namespace,
    secrets: dict[str, str],
    gateways: tuple[gt.Child, gt.Child],
    fresh: bool = False,
) -> dict[str, Any]:
    token, lua = secrets["token"], None
    check(url, token)
    if fresh:
        token, lua = "@" + secrets["tokens"], secrets["lua"]
    if args.warmup > 0:
        load(url, args, args.warmup, token, lua)
    gateway, n2 = gateways
    result = gt.with_cpu(lambda: load(url, args, args.duration, token, lua), gateway=gateway, n2=n2)
    result["url"] = url
    print(
        f"{label:18s} {result['rps']:9.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
        f"p99 {result['p99_ms']:.2f} ms",
        file=sys.stderr,
    )
    return result


def bench(args: argparse.Namespace) -> int:
    from _cluster import ROOT, table, write_result

    from ninefold.gateway.haproxy import haproxy_binary

    started = time.monotonic()
    engines = ["builtin"] + (["haproxy"] if haproxy_binary() and not args.builtin_only else [])
    notes = []
    if haproxy_binary() is None:
        notes.append("haproxy engine skipped: no haproxy binary (apt-get install haproxy)")
    if args.loadgen == "wrk" and not args.wrk:
        args.loadgen = "python"
        notes.append("no wrk: load from the Python asyncio generator (slower than wrk)")
    cores = os.cpu_count() or 1
    notes.append(
        f"{cores} cores shared by the backend, the gateway and the load generator "
        f"(load average {os.getloadavg()[0]:.1f} at the start)"
    )
    root = Path(tempfile.mkdtemp(prefix="nf-gs-", dir="/tmp"))  # short: unix socket paths
    secrets = make_secrets(root, args.alg)
    (root / "secrets.json").write_text(json.dumps(secrets))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    backend = gt.Child("_backend", "0", log=root / "backend.log")
    try:
        for engine in engines:
            port, keys = str(backend.info["port"]), str(root / "secrets.json")
            log = root / f"{engine}.log"
            n2 = gt.Child("_n2", engine, port, f"{root / engine}-n2", keys, log=log, script=SCRIPT)
            try:
                n1 = (port, str(root / engine), keys, json.dumps(n2.info))
                gateway = gt.Child("_gateway", engine, *n1, log=log, script=SCRIPT)
            except BaseException:
                n2.stop()
                raise
            plain = f"http://127.0.0.1:{gateway.info['port']}"
            tls = f"https://127.0.0.1:{gateway.info['tls_port']}"
            urls = {
                "http": f"{plain}/open/",
                "tls": f"{tls}/open/",
                "jwt": f"{plain}/jwt/",
                "jwt-fresh": f"{plain}/jwt/",
                "tls+jwt": f"{tls}/jwt/",
                "2gw": f"{plain}/2gw/",
                "mesh": f"{plain}/mesh/",
            }
            try:
                results[engine] = {
                    target: measure(
                        f"{engine} {target}",
                        urls[target],
                        args,
                        secrets,
                        (gateway, n2),
                        fresh=target == "jwt-fresh",
                    )
                    for target in TARGETS
                }
            finally:
                gateway.stop()
                n2.stop()
    finally:
        backend.stop()
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started

    for runs in results.values():
        base = runs["http"]["rps"]
        for r in runs.values():
            r["ratio"] = round(r["rps"] / base, 3) if base else None
    path = write_result(
        NAME,
        {
            "bench": NAME,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "elapsed_s": round(elapsed, 1),
            "cores": cores,
            "loadgen": "wrk -t1" if args.loadgen == "wrk" else "python asyncio",
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "token_alg": args.alg,
            "notes": notes,
            "results": results,
        },
    )
    rows = [
        [
            engine,
            target,
            f"{r['rps']:.0f}",
            f"{r['ratio']:.2f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            r["non_2xx"] + r["socket_errors"],
            r["cpu_pct"]["gateway"],
            r["cpu_pct"]["n2"],
            r["cpu_pct"]["load"],
            f"{100 * r['rps'] / r['cpu_pct']['gateway']:.0f}" if r["cpu_pct"]["gateway"] else "-",
        ]
        for engine, runs in results.items()
        for target, r in runs.items()
    ]
    headers = ["engine", "target", "req/s", "/ http", "p50 ms", "p99 ms", "errors"]
    headers += ["cpu% gateway", "cpu% n2", "cpu% load", "req/gateway cpu-s"]
    print(table(headers, rows))
    loadgen = "wrk, 1 thread" if args.loadgen == "wrk" else "Python asyncio load generator"
    print(
        f"load: {loadgen}, {args.connections} keep-alive connections (one TLS handshake "
        f"each), {args.duration:g}s per target after a {args.warmup:g}s warm-up; "
        f"tokens {args.alg}; jwt-fresh: a token not seen before on every request; "
        "2gw, mesh: through a second gateway n2 (plain text, mutual TLS); cpu% in % of one core"
    )
    for note in notes:
        print(f"note: {note}")
    print(f"result: {path.relative_to(ROOT)}")
    parts = []
    for engine, runs in results.items():
        ratios = ", ".join(f"{t} {runs[t]['ratio']:.2f}" for t in TARGETS[1:])
        parts.append(f"{engine} http {runs['http']['rps']:.0f} req/s, {ratios}")
    print(f"gateway security: {'; '.join(parts)} (of plain http); bench took {elapsed:.0f}s")
    errors = sum(
        r["non_2xx"] + r["socket_errors"] for runs in results.values() for r in runs.values()
    )
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--alg", choices=["RS256", "ES256"], default="RS256", help="token alg")
    parser.add_argument("--builtin-only", action="store_true", help="skip the haproxy engine")
    parser.add_argument(
        "--loadgen",
        choices=["wrk", "python"],
        default="wrk",
        help="load generator (python: the asyncio one; used anyway when wrk is missing)",
    )
    args = parser.parse_args()
    args.wrk = gt.wrk_binary()
    return bench(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "_gateway":
            serve_gateway(rest[0], int(rest[1]), Path(rest[2]), Path(rest[3]), json.loads(rest[4]))
        elif role == "_n2":
            serve_n2(rest[0], int(rest[1]), Path(rest[2]), Path(rest[3]))
        elif role == "_load":
            run_load(rest[0], int(rest[1]), float(rest[2]), rest[3])
        else:
            sys.exit(f"unknown role {role}")
        sys.exit(0)
    sys.exit(main())
