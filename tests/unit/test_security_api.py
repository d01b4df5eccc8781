"""The agent's API over TLS (the real ApiServer, in this process): a client
certificate from another CA, an expired one, or plain text is refused; no
certificate passes the TLS layer; new files are served without a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from ninefold.api.server import ApiServer
from ninefold.security import tls as tls_module
from ninefold.security.ca import CertificateAuthority, create_ca
from ninefold.security.certs import issue_node_files, load_cert
from ninefold.security.tls import client_context
from ninefold.spec import NodeSpec
from tests.helpers import eventually, free_port
from tests.tls_probes import plain_refused, served_cert, tls_refused

NODE = NodeSpec(name="n1", address="127.0.0.1")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture
def ca() -> CertificateAuthority:
    return create_ca("c")


@pytest.fixture
def pki(tmp_path: Path, ca: CertificateAuthority) -> dict[str, Path]:
    node = issue_node_files(ca, NODE, tmp_path / "node")
    client = issue_node_files(ca, NodeSpec(name="n2", address="127.0.0.2"), tmp_path / "client")
    other = issue_node_files(create_ca("c"), NODE, tmp_path / "other")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = issue_node_files(ca, NODE, tmp_path / "expired", dt.timedelta(days=1), now=past)
    return {
        "ca": node.ca,
        "node": node.directory,
        "client_cert": client.cert,
        "client_key": client.key,
        "other_cert": other.cert,
        "other_key": other.key,
        "expired_cert": expired.cert,
        "expired_key": expired.key,
    }


async def test_api_over_mutual_tls(
    pki: dict[str, Path], ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ninefold.security.files import NodeTlsFiles

    monkeypatch.setattr(tls_module, "RELOAD_CHECK_EVERY", 0.0)
    files = NodeTlsFiles(pki["node"])
    server = ApiServer(make_app(), "127.0.0.1", free_port(), tls=files)
    assert await server.start()
    try:
        await eventually(lambda: asyncio.sleep(0, server.started), 10, "the API to start")
        url = f"https://127.0.0.1:{server.port}/v1/health"

        def get(cert: tuple[Path, Path] | None) -> int:
            ctx = client_context(pki["ca"], *(cert or (None, None)))
            with httpx.Client(verify=ctx, trust_env=False) as http:
                return http.get(url).status_code

        # A good client certificate, and none at all (bearer tokens do the rest).
        assert await asyncio.to_thread(get, (pki["client_cert"], pki["client_key"])) == 200
        assert await asyncio.to_thread(get, None) == 200
        # Another CA's certificate, an expired one, plain text: refused.
        port = server.port
        for bad in ("other", "expired"):
            refused = await asyncio.to_thread(
                tls_refused, "127.0.0.1", port, pki["ca"], pki[f"{bad}_cert"], pki[f"{bad}_key"]
            )
            assert refused, bad
        assert await asyncio.to_thread(plain_refused, "127.0.0.1", port)
        # A server with a certificate from another CA is not trusted by the client.
        with pytest.raises(httpx.ConnectError):
            ctx = client_context(pki["other_cert"])
            async with httpx.AsyncClient(verify=ctx, trust_env=False) as http:
                await http.get(url)

        # Rotation: new files are served from the next handshake on.
        before = await asyncio.to_thread(
            served_cert, "127.0.0.1", port, pki["ca"], pki["client_cert"], pki["client_key"]
        )
        issue_node_files(ca, NODE, pki["node"].parent)
        new = load_cert(files.cert).public_bytes(serialization.Encoding.DER)
        assert new != before

        async def serves_new() -> bool:
            der = await asyncio.to_thread(
                served_cert, "127.0.0.1", port, pki["ca"], pki["client_cert"], pki["client_key"]
            )
            return der == new

        await eventually(serves_new, 10, "the API to serve the new certificate")
        assert server.tls_context is not None and server.tls_context.reloads >= 1
    finally:
        await server.stop()
