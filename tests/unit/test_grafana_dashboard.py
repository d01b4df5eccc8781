"""docs/grafana/ninefold.json, the Grafana dashboard the docs ship: every query
names series the agents serve (their collectors' source or the metrics tables
of the docs), and every query is PromQL that Debian's `promtool` accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "ninefold.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
NAME = re.compile(r"\bninefold_[a-z0-9_]+")


def queries() -> list[str]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def served_names() -> list[re.Pattern[str]]:
    """Series names in the collectors' source (an f-string's `{field}` matching
    any word: `ninefold_node_load{minutes}`) and in the docs' metrics tables."""
    text = "".join(p.read_text() for p in (ROOT / "src" / "ninefold").rglob("*.py"))
    templates = set(re.findall(r"\bninefold_[a-z0-9_{}]+", text))
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    names = templates | set(NAME.findall(docs))
    return [
        re.compile(
            "".join(
                r"[a-z0-9]+" if part.startswith("{") else re.escape(part)
                for part in re.split(r"(\{[a-z_]*\})", name)
            )
        )
        for name in names
    ]


def test_the_dashboard_is_grafana_json_with_the_panels_of_the_history() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["schemaVersion"] >= 36
    titles = {p["title"] for p in board["panels"]}
    assert {"CPU", "Memory used", "Requests/s", "Errors/s", "p99 latency"} <= titles
    assert {"Healthy instances", "Volume lag"} <= titles
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "cluster", "node", "service"} <= variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_names_a_served_series() -> None:
    served = served_names()
    missing = set()
    for expr in queries():
        for name in NAME.findall(expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            if not any(p.fullmatch(name) or p.fullmatch(base) for p in served):
                missing.add(name)
    assert not missing, f"the dashboard queries series no agent serves: {sorted(missing)}"


@pytest.mark.process
@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="no promtool (apt-get install prometheus)")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    """Each query, its Grafana variables filled in, as a recording rule."""
    rules = []
    for i, expr in enumerate(queries()):
        promql = expr.replace("$__rate_interval", "1m").replace("$job", "ninefold")
        promql = re.sub(r"\$[a-z]+", ".*", promql)
        rules.append({"record": f"ninefold:grafana_query_{i}", "expr": promql})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout
