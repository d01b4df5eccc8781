"""etcd versions against the data-consistency bugs etcd published."""

from __future__ import annotations

from ninefold.store.etcd_versions import RECOMMENDED, etcd_warnings, open_bugs, parse


def test_parse_reads_plain_prefixed_and_prerelease_versions() -> None:
    assert parse("3.5.1") == (3, 5, 1)
    assert parse("v3.4.23") == (3, 4, 23)
    assert parse("3.6.0-rc.2") == (3, 6, 0)
    assert parse("three") is None


def test_the_wheels_351_is_not_for_production() -> None:
    refs = [bug.ref for bug in open_bugs("3.5.1")]
    assert "etcd#13766" in refs  # the 3.5.0-3.5.2 postmortem
    assert "etcd#19557" in refs  # introduced in 3.5.1 itself
    (line,) = etcd_warnings("3.5.1")
    assert line.startswith(f"etcd 3.5.1 has {len(refs)} known data-consistency bug(s)")
    assert "etcd#13766: committed writes lost on a member killed under load, fixed in 3.5.4" in line
    assert line.endswith("for production use 3.5.28 or later (docs/operations.md#which-etcd)")


def test_debians_3423_has_the_later_34_fixes_missing() -> None:
    refs = [bug.ref for bug in open_bugs("3.4.23")]
    assert "etcd#13766" not in refs  # 3.4 never had it
    assert "etcd#15247" in refs  # a deposed leader revoking leases
    assert etcd_warnings("3.4.23")[0].endswith(
        "use 3.4.42 or later (docs/operations.md#which-etcd)"
    )


def test_a_bug_counts_only_from_the_release_that_brought_it() -> None:
    assert "etcd#19557" not in [bug.ref for bug in open_bugs("3.5.0")]
    assert "etcd#20418" not in [bug.ref for bug in open_bugs("3.4.19")]


def test_recommended_releases_and_newer_series_have_nothing_to_say() -> None:
    for series, version in RECOMMENDED.items():
        text = ".".join(map(str, version))
        assert open_bugs(text) == [], series
        assert etcd_warnings(text) == []
    assert etcd_warnings("3.6.4") == []


def test_too_old_or_unreadable_versions_are_said() -> None:
    assert etcd_warnings("3.3.27") == [
        "etcd 3.3.27 is older than 3.4, which ninefold needs (learners, pre-vote)"
    ]
    assert etcd_warnings("dev") == [
        "etcd dev: unknown version format, cannot check it against known bugs"
    ]
