"""What every tier shares: a closing count per tier, with the unit tests that
start programs (marker `process`) counted apart from the pure ones."""

from __future__ import annotations

from collections import Counter

import pytest

OUTCOMES = ("passed", "failed", "error", "skipped")


def tier_of(report: pytest.TestReport) -> str:
    parts = report.nodeid.split("/")
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
    if tier == "unit" and "process" in report.keywords:
        return "unit (starts programs)"
    return tier


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for outcome in OUTCOMES:
        for report in terminalreporter.stats.get(outcome, []):
            if isinstance(report, pytest.TestReport):
                counts[(tier_of(report), outcome)] += 1
    tiers = sorted({tier for tier, _ in counts})
    if len(tiers) < 2:
        return
    terminalreporter.section("tiers")
    for tier in tiers:
        said = ", ".join(f"{counts[(tier, o)]} {o}" for o in OUTCOMES if counts[(tier, o)])
        terminalreporter.write_line(f"{tier}: {said}")
