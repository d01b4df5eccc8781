"""`ninefold volumes` and the volumes section of `ninefold status`, against a
real API server on loopback (in-memory store, served from a thread), and the
table's cells for answers of every kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ninefold.api import ApiServer, create_app
from ninefold.cli.console import EXIT_USAGE
from ninefold.cli.main import app
from ninefold.cli.volumes import human_bytes, human_seconds, volume_rows
from ninefold.spec import dump_spec, parse_spec
from ninefold.state.keys import SPEC_KEY, copy_key
from ninefold.state.records import CopyRecord
from ninefold.store.memory import MemoryStore
from tests.helpers import free_port
from tests.unit.test_api import seed

runner = CliRunner()

NOW = 1_800_000_000.0


def spec_text(port: int) -> str:
    """test_api's cluster, n1's API on 127.0.0.1:`port`, db with a replicated volume."""
    return f"""\
cluster: shop
nodes:
  - {{name: n1, address: 127.0.0.1, zone: a, store: true, labels: {{disk: ssd}},
     ports: {{api: {port}}}}}
  - {{name: n2, address: 10.0.0.2, zone: b, labels: {{disk: ssd}}}}
  - {{name: n3, address: 10.0.0.3, zone: c, labels: {{disk: ssd}}}}
  - {{name: n4, address: 10.0.0.4, zone: d}}
  - {{name: n5, address: 10.0.0.5, zone: e, labels: {{disk: ssd}}}}
services:
  web:
    command: [web, "{{port}}"]
    replicas: 2
  db:
    command: [db, "{{volume.data}}"]
    mode: active-passive
    replicas: 2
    placement: {{constraints: {{disk: ssd}}}}
    volumes: {{data: {{replicate: continuous}}}}
"""


@contextlib.contextmanager
def api_with_copies(text: str, port: int, records: list[CopyRecord]) -> Iterator[None]:
    """n1's API on 127.0.0.1:`port` over test_api's seeded store, with the spec
    `text` and db/data's copies `records`, served from a thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        store = await seed(MemoryStore())
        spec = parse_spec(text)
        await store.put(SPEC_KEY, dump_spec(spec).encode())
        for record in records:
            await store.put(copy_key("db", "data", record.node), record.encode())
        server = ApiServer(create_app(store, spec, "n1"), "127.0.0.1", port)
        assert await server.start()
        ready.set()
        await stop.wait()
        await server.stop()
        await store.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"the API did not start on 127.0.0.1:{port}")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        with contextlib.suppress(Exception):
            loop.close()


def copies_now() -> list[CopyRecord]:
    """db/data: the source on n1, n2 behind by 4.5 kB for about 2 minutes, n3
    seeding (45%), n5 (no lease) down, n4 failing."""
    now = time.time()
    hours_ago = now - 3 * 3600
    return [
        CopyRecord(node="n1", source="n1", token=3, seq=12, synced_at=now - 1),
        CopyRecord(
            node="n2",
            source="n1",
            token=3,
            seq=11,
            synced_at=hours_ago,
            completed_at=hours_ago,
            behind_since=now - 125,
            bytes_behind=4500,
        ),
        CopyRecord(
            node="n3",
            source="n1",
            token=3,
            seq=1,
            synced_at=now - 5,
            seeding=True,
            seed_done=4_500_000,
            seed_total=10_000_000,
        ),
        CopyRecord(
            node="n4",
            source="n1",
            token=3,
            seq=9,
            synced_at=hours_ago,
            completed_at=hours_ago,
            error="connection refused",
        ),
        CopyRecord(
            node="n5", source="n1", token=3, seq=12, synced_at=now - 1, completed_at=now - 0.5
        ),
    ]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("NINEFOLD_TOKEN", "NINEFOLD_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    port = free_port()
    text = spec_text(port)
    path = tmp_path / "ninefold.yaml"
    path.write_text(text)
    with api_with_copies(text, port, copies_now()):
        yield path


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def row_of(table: str, node: str) -> str:
    found = [line for line in table.splitlines() if re.search(rf"│ {node}\s+│", line)]
    assert len(found) == 1, table
    return found[0]


def test_the_table_shows_each_copy(cluster: Path) -> None:
    code, table, err = cli("volumes", "--spec", str(cluster))
    assert code == 0, err
    for column in ("SERVICE/VOLUME", "NODE", "ROLE", "STATE", "LAG", "BEHIND", "LAST SYNC"):
        assert column in table
    assert re.search(r"db/data\s+│ n1\s+│ source\s+│ source\s+│\s+- │\s+- │ 1\.\ds ago", table)
    n2 = row_of(table, "n2")
    assert re.search(r"│ copy\s+│ behind\s+│\s+2m0\ds │\s+4\.5 kB │ 3h00m ago\s+│ never", n2)
    assert "seeding 45% (4.5 MB of 10 MB)" in row_of(table, "n3")
    n4 = row_of(table, "n4")
    assert "failing" in n4 and "connection refused" in n4
    assert "down" in row_of(table, "n5")


def test_json_is_the_api_s_answer(cluster: Path) -> None:
    code, text, err = cli("volumes", "db", "--spec", str(cluster), "-o", "json")
    assert code == 0, err
    answer = json.loads(text)
    assert set(answer) == {"time", "volumes"}
    (volume,) = answer["volumes"]
    assert (volume["service"], volume["volume"], volume["source"]) == ("db", "data", "n1")
    states = {c["node"]: c["state"] for c in volume["copies"]}
    assert states == {
        "n1": "source",
        "n2": "behind",
        "n3": "seeding",
        "n4": "failing",
        "n5": "down",
    }


def test_a_service_without_replicated_volumes(cluster: Path) -> None:
    code, text, err = cli("volumes", "web", "--spec", str(cluster))
    assert (code, text.strip(), err) == (0, "web has no replicated volumes", "")


def test_an_unknown_service_is_a_usage_error_in_one_line(cluster: Path) -> None:
    code, text, err = cli("volumes", "shop", "--spec", str(cluster))
    assert code == EXIT_USAGE and text == ""
    assert err.strip() == "error: no service named 'shop' (services: db, web)"


def test_status_has_a_volumes_section(cluster: Path) -> None:
    code, table, err = cli("status", "--spec", str(cluster))
    assert code == 0, err
    section = table[table.index("volumes") :]
    assert re.search(r"db/data\s+│ n2\s+│ copy\s+│ behind\s+│ 12\d\.\ds", section)
    assert re.search(r"db/data\s+│ n3\s+│ copy\s+│ seeding 45%", section)
    code, text, err = cli("status", "--spec", str(cluster), "-o", "json")
    assert code == 0, err
    view = json.loads(text)
    assert [c["node"] for c in view["volumes"][0]["copies"]] == ["n1", "n2", "n3", "n4", "n5"]
    assert {"cluster", "nodes", "services", "instances"} <= set(view)


# --- the cells, for answers of every kind ---------------------------------------------


def answer(*copies: dict[str, Any], source: str | None = "n1") -> dict[str, Any]:
    return {
        "time": NOW,
        "volumes": [{"service": "db", "volume": "data", "source": source, "copies": list(copies)}],
    }


def a_copy(node: str, state: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node": node,
        "role": "source" if state == "source" else "copy",
        "state": state,
        "alive": state != "down",
        "sent_by": "n1",
        "lag_seconds": 0.0,
        "bytes_behind": 0,
        "last_sync": NOW - 2,
        "seeding": state == "seeding",
        "seed_done": 0,
        "seed_total": 0,
        "verified_at": None,
        "diverged": 0,
        "error": "",
    }
    return {**base, **fields}


def test_cells_of_each_state() -> None:
    rows = volume_rows(
        answer(
            a_copy("n1", "source"),
            a_copy("n2", "in-sync", verified_at=NOW - 300, diverged=2),
            a_copy("n3", "behind", lag_seconds=0.42, bytes_behind=1_500_000),
            a_copy("n4", "seeding", seed_done=1_000, seed_total=0, last_sync=None),
            a_copy("n5", "down", sent_by="n0"),
        )
    )
    assert rows == [
        ["db/data", "n1", "source", "source", "-", "-", "2.0s ago", "never", ""],
        [
            "db/data",
            "n2",
            "copy",
            "in-sync",
            "0.0s",
            "0 B",
            "2.0s ago",
            "5m00s ago, 2 repaired",
            "",
        ],
        ["db/data", "n3", "copy", "behind", "0.4s", "1.5 MB", "2.0s ago", "never", ""],
        ["db/data", "n4", "copy", "seeding (1.0 kB so far)", "0.0s", "0 B", "never", "never", ""],
        ["db/data", "n5", "copy", "down", "0.0s", "0 B", "2.0s ago", "never", "last sent by n0"],
    ]


def test_a_volume_without_copies_says_so() -> None:
    assert volume_rows(answer(source=None)) == [
        ["db/data", "-", "-", "no copies yet", "", "", "", "", ""]
    ]


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0 B"), (999, "999 B"), (4500, "4.5 kB"), (10_000_000, "10 MB"), (2.5e12, "2.5 TB")],
)
def test_bytes_in_human_units(count: float, shown: str) -> None:
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.04, "0.0s"),
        (2.25, "2.2s"),
        (42, "42s"),
        (125, "2m05s"),
        (7380, "2h03m"),
        (273600, "3d04h"),
    ],
)
def test_durations_in_human_units(seconds: float, shown: str) -> None:
    assert human_seconds(seconds) == shown


# --- --follow ---------------------------------------------------------------------------


def one_node_spec(tmp_path: Path, port: int) -> Path:
    """What the CLI needs to find n1's API, and no other node to try."""
    path = tmp_path / "one.yaml"
    path.write_text(
        "cluster: shop\n"
        f"nodes: [{{name: n1, address: 127.0.0.1, store: true, ports: {{api: {port}}}}}]\n"
        "services: {web: {command: [web, '{port}']}}\n"
    )
    return path


def test_follow_prints_each_new_answer_until_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    pauses: list[None] = []

    def pause() -> None:  # instead of a second's sleep; the third is Ctrl-C
        pauses.append(None)
        if len(pauses) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("ninefold.cli.volumes._wait", pause)
    with api_with_copies(spec_text(port), port, copies_now()):
        code, text, err = cli(
            "volumes", "-f", "-o", "json", "-s", str(one_node_spec(tmp_path, port))
        )
    assert code == 0, err
    answers = [json.loads(line) for line in text.splitlines()]
    assert len(answers) == 3  # the first, then one after each pause
    assert all(a["volumes"][0]["source"] == "n1" for a in answers)
    assert answers[0]["time"] <= answers[1]["time"] <= answers[2]["time"]


def test_follow_keeps_going_while_no_agent_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    spec = one_node_spec(tmp_path, port)
    server = contextlib.ExitStack()
    pauses: list[None] = []

    def pause() -> None:  # the first pause stops the API; the second is Ctrl-C
        pauses.append(None)
        if len(pauses) == 1:
            server.close()
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr("ninefold.cli.volumes._wait", pause)
    with server:
        server.enter_context(api_with_copies(spec_text(port), port, copies_now()))
        code, text, err = cli("volumes", "-f", "-s", str(spec))
    assert code == 0, err
    assert text.count("SERVICE/VOLUME") == 2  # the table, then the same one again
    assert "no answer (cluster shop unreachable" in text and "retrying" in text
