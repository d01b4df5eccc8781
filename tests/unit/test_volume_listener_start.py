"""The agent's volume listener: started only for specs that replicate a
volume, and a port already taken is one error line, not a dead agent."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from ninefold.agent.daemon import Agent
from ninefold.spec import parse_spec
from tests.helpers import free_port

SPEC = """
cluster: v
store: {{mode: external, endpoints: ["127.0.0.1:2379"]}}
nodes:
  - {{name: n1, address: 127.0.0.1, ports: {{volumes: {port}}}}}
services:
  db:
    command: [sleep, infinity]
    mode: active-passive
    volumes: {{data: {volume}}}
"""


def agent(tmp_path: Path, port: int, volume: str) -> Agent:
    return Agent(parse_spec(SPEC.format(port=port, volume=volume)), "n1", tmp_path)


def reconciler() -> object:
    return SimpleNamespace(runners={}, ctx=SimpleNamespace(abort_transfers=None))


async def test_no_listener_without_a_replicated_volume(tmp_path: Path) -> None:
    listener = await agent(tmp_path, free_port(), "null")._start_volume_listener(reconciler())  # type: ignore[arg-type]
    assert listener is None


async def test_a_taken_port_is_one_error_line_and_the_agent_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        a = agent(tmp_path, port, "{replicate: continuous}")
        with caplog.at_level(logging.ERROR, "ninefold.agent"):
            assert await a._start_volume_listener(reconciler()) is None  # type: ignore[arg-type]
    assert f"volume transfers cannot listen on 127.0.0.1:{port}" in caplog.text


async def test_a_free_port_listens_and_refuses_what_no_runner_takes(tmp_path: Path) -> None:
    port = free_port()
    holder = reconciler()
    listener = await agent(tmp_path, port, "{replicate: continuous}")._start_volume_listener(
        holder  # type: ignore[arg-type]
    )
    assert listener is not None
    try:
        assert holder.ctx.abort_transfers is not None  # type: ignore[attr-defined]
        assert holder.ctx.abort_transfers("db") == 0  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"volume": "db/data@1", "argv": ["rsync", "--server", "."]}\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert answer.startswith(b"error: "), answer
    finally:
        await listener.stop()
