# ruff: noqa: E501  (the table of bugs reads best one per line)
"""What is known to be wrong with an etcd version: the data-inconsistency bugs
etcd's maintainers published, and the release of each series that fixed them.

Pure: a version string in, warnings out. The agent logs them when it starts a
store member and `ninefold doctor` shows them; docs/operations.md explains the
recommendation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int, int]


@dataclass(frozen=True)
class KnownBug:
    ref: str
    """etcd's issue."""
    what: str
    fixed_in: dict[tuple[int, int], Version]
    """Per series (major, minor): the first release with the fix. A series not
    named here never had the bug (or etcd's changelog does not say it had)."""
    since: Version = (0, 0, 0)
    """The first release with the bug."""


def _bug(
    ref: str, what: str, v35: Version | None, v34: Version | None = None, since: Version = (0, 0, 0)
) -> KnownBug:
    fixed: dict[tuple[int, int], Version] = {}
    if v35 is not None:
        fixed[(3, 5)] = v35
    if v34 is not None:
        fixed[(3, 4)] = v34
    return KnownBug(f"etcd#{ref}", what, fixed, since)


KNOWN_BUGS: tuple[KnownBug, ...] = (
    # From etcd's CHANGELOG-3.4/3.5, its robustness-test table and postmortem
    # (docs/operations.md#which-etcd lists them with their fixes).
    _bug("13766", "committed writes lost on a member killed under load", (3, 5, 4)),
    _bug("14370", "a write lost by a one-member store killed at the wrong time", (3, 5, 5), (3, 4, 21)),
    _bug("14685", "revisions that differ between members after a crash in defrag", (3, 5, 6)),
    _bug("15096", "a learner promoted before it ever started", (3, 5, 7), (3, 4, 24)),
    _bug("15271", "watches that go back in time after a member takes a snapshot", (3, 5, 8), (3, 4, 25)),
    _bug("15247", "a deposed leader revoking leases it no longer owns", (3, 5, 13), (3, 4, 31)),
    _bug("17529", "a slow watcher that skips events after a compaction", (3, 5, 13), (3, 4, 31)),
    _bug("17780", "a revision that goes backwards after a crash during compaction", (3, 5, 14), (3, 4, 32)),
    _bug("18089", "a watch that drops a delete event hit by compaction", (3, 5, 16), (3, 4, 34)),
    _bug("18679", "a failed write transaction partly applied", (3, 5, 17)),
    _bug("19179", "a delete event missing from a watch opened at the compaction revision", (3, 5, 18), (3, 4, 36)),
    _bug(
        "19557",
        "learner promotions kept only in the v2 store (membership that disagrees; breaks upgrades to 3.6)",
        (3, 5, 24),
        since=(3, 5, 1),
    ),
    _bug("20221", "a watch on a future revision that returns old events", (3, 5, 22), (3, 4, 38)),
    _bug("20271", "corruption when a snapshot is applied during a defrag", (3, 5, 23), (3, 4, 38)),
    _bug("20418", "stale reads after the process pauses", (3, 5, 28), (3, 4, 42), since=(3, 4, 20)),
)  # fmt: skip

RECOMMENDED: dict[tuple[int, int], Version] = {(3, 5): (3, 5, 28), (3, 4): (3, 4, 42)}
"""Per series: the oldest release without any bug of KNOWN_BUGS. 3.4 is past
its end of support (3.4.45 was its last release): prefer 3.5 or 3.6."""


def parse(version: str) -> Version | None:
    """`3.5.1` (or `3.5.1-rc.0`, `v3.5.1`) as (3, 5, 1); None if unreadable."""
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if not found:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def open_bugs(version: str) -> list[KnownBug]:
    """The known bugs `version` still has."""
    parsed = parse(version)
    if parsed is None:
        return []
    series = parsed[:2]
    return [
        bug
        for bug in KNOWN_BUGS
        if series in bug.fixed_in and bug.since <= parsed < bug.fixed_in[series]
    ]


def etcd_warnings(version: str) -> list[str]:
    """Why not to run `version` in production, in one line; none when fine."""
    parsed = parse(version)
    if parsed is None:
        return [f"etcd {version}: unknown version format, cannot check it against known bugs"]
    series = parsed[:2]
    if series not in RECOMMENDED:
        if parsed < (3, 4, 0):
            return [f"etcd {version} is older than 3.4, which ninefold needs (learners, pre-vote)"]
        return []
    bugs = open_bugs(version)
    if not bugs:
        return []
    first = bugs[0]
    return [
        f"etcd {version} has {len(bugs)} known data-consistency bug(s) fixed in later "
        f"releases ({first.ref}: {first.what}, fixed in {_text(first.fixed_in[series])}); "
        f"for production use {_text(RECOMMENDED[series])} or later "
        "(docs/operations.md#which-etcd)"
    ]


def _text(version: Version) -> str:
    return ".".join(str(part) for part in version)
