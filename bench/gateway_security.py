"""Gateway security cost: requests per second through a gateway engine with
plain HTTP, with TLS, with a JWT access policy, and with both, next to each
other in one run, against the same backend; ratios to plain HTTP.

Processes (nothing shares an event loop), as in gateway_throughput.py:

  backend   gateway_throughput.py's keep-alive HTTP/1.1 server (uvloop +
            httptools, a 3-byte answer), started once
  gateway   one subprocess per engine (builtin, and haproxy when installed):
            GatewaySettings on 127.0.0.1 with `gateway.tls` (a self-signed EC
            P-256 certificate made for the run), routes /open (no policy) and
            /jwt (an access policy: RS256 key, issuer, audience, a rule on /
            needing ROLE_USER) to the backend
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
TARGETS = ("http", "tls", "jwt", "jwt-fresh", "tls+jwt")
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
    """A self-signed server certificate and an issuer key pair; returns the
    files and a valid token for the /jwt route."""
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
    return {**{k: str(v) for k, v in files.items()}, "token": token}


# --- the gateway process (run as `python gateway_security.py _gateway ...`) ---------------------


def serve_gateway(engine_name: str, backend_port: int, root: Path, secrets_file: Path) -> None:
    """One engine with TLS on, /open without and /jwt with an access policy;
    prints its ports once applied."""
    import uvloop

    from ninefold.gateway.access import AccessPolicy
    from ninefold.gateway.engine import Engine, GatewaySettings
    from ninefold.gateway.routes import Backend, RoutingTable, ServiceRoutes
    from ninefold.spec.access import AccessSpec
    from ninefold.spec.routing import BalanceSpec, GatewayTlsSpec, RouteSpec

    secrets = json.loads(secrets_file.read_text())

    async def main() -> None:
        port, tls_port = gt.free_port(), gt.free_port()
        tls = GatewayTlsSpec(cert=secrets["cert"], key=secrets["key"], port=tls_port)
        settings = GatewaySettings("bench", "127.0.0.1", port, root / "run", root / "log", tls=tls)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        engine: Engine
        if engine_name == "builtin":
            from ninefold.gateway.builtin import BuiltinEngine

            engine = BuiltinEngine(settings)
        else:
            from ninefold.gateway.haproxy import HaproxyEngine

            engine = HaproxyEngine(settings)
        spec = AccessSpec.model_validate(
            {
                "jwt": {"keys": [secrets["issuer"]], "issuer": ISSUER, "audience": AUDIENCE},
                "rules": [{"path": "/", "roles": ["ROLE_USER"]}],
            }
        )
        policy = AccessPolicy.load("jwt", spec)
        if policy.error is not None:
            raise SystemExit(policy.error)
        backend = (Backend("web-0", "bench", "127.0.0.1", backend_port),)
        table = RoutingTable(
            {
                "open": ServiceRoutes("open", RouteSpec(http="/open"), BalanceSpec(), backend),
                "jwt": ServiceRoutes("jwt", RouteSpec(http="/jwt"), BalanceSpec(), backend, policy),
            }
        )
        await engine.apply(table)
        await engine.start()
        try:
            await engine.apply(table)
            print(json.dumps({"port": port, "tls_port": tls_port}), flush=True)
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
    gateway: gt.Child,
    fresh: bool = False,
) -> dict[str, Any]:
    import resource

    token, lua = secrets["token"], None
    check(url, token)
    if fresh:
        token, lua = "@" + secrets["tokens"], secrets["lua"]
    if args.warmup > 0:
        load(url, args, args.warmup, token, lua)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = gateway.cpu_seconds()
    started = time.monotonic()
    result = load(url, args, args.duration, token, lua)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    result["cpu_pct"] = {
        "gateway": round(100 * (gateway.cpu_seconds() - cpu) / wall, 1),
        "load": round(100 * used / wall, 1),
    }
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
            gateway = gt.Child(
                "_gateway",
                engine,
                str(backend.info["port"]),
                str(root / engine),
                str(root / "secrets.json"),
                log=root / f"{engine}.log",
                script=SCRIPT,
            )
            plain = f"http://127.0.0.1:{gateway.info['port']}"
            tls = f"https://127.0.0.1:{gateway.info['tls_port']}"
            urls = {
                "http": f"{plain}/open/",
                "tls": f"{tls}/open/",
                "jwt": f"{plain}/jwt/",
                "jwt-fresh": f"{plain}/jwt/",
                "tls+jwt": f"{tls}/jwt/",
            }
            try:
                results[engine] = {
                    target: measure(
                        f"{engine} {target}",
                        urls[target],
                        args,
                        secrets,
                        gateway,
                        fresh=target == "jwt-fresh",
                    )
                    for target in TARGETS
                }
            finally:
                gateway.stop()
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
            r["cpu_pct"]["load"],
            f"{100 * r['rps'] / r['cpu_pct']['gateway']:.0f}" if r["cpu_pct"]["gateway"] else "-",
        ]
        for engine, runs in results.items()
        for target, r in runs.items()
    ]
    headers = ["engine", "target", "req/s", "/ http", "p50 ms", "p99 ms", "errors"]
    headers += ["cpu% gateway", "cpu% load", "req/gateway cpu-s"]
    print(table(headers, rows))
    loadgen = "wrk, 1 thread" if args.loadgen == "wrk" else "Python asyncio load generator"
    print(
        f"load: {loadgen}, {args.connections} keep-alive connections (one TLS handshake "
        f"each), {args.duration:g}s per target after a {args.warmup:g}s warm-up; "
        f"tokens {args.alg}; jwt-fresh: a token not seen before on every request; "
        "cpu% in % of one core"
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
            serve_gateway(rest[0], int(rest[1]), Path(rest[2]), Path(rest[3]))
        elif role == "_load":
            run_load(rest[0], int(rest[1]), float(rest[2]), rest[3])
        else:
            sys.exit(f"unknown role {role}")
        sys.exit(0)
    sys.exit(main())
