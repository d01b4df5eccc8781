"""The leader's backup scheduling (decide/backup.py): when a schedule is due,
across cron's boundaries; one run per target; a run on a dead node retried at
once elsewhere; a failed run retried after a backoff, not in a loop; a target
with nowhere to run waits and says why. And never two decisions for one
target, never a run on a dead node, whatever the state."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninefold.decide.backup import (
    FAILURE_BACKOFF,
    BackupTarget,
    LastRun,
    Running,
    Start,
    Wait,
    backup_targets,
    decide_runs,
    due_at,
    earliest_due,
    next_due,
)
from ninefold.spec import parse_spec
from ninefold.spec.backups import KeepSpec, Schedule, VolumeBackupSpec


def ts(text: str) -> float:
    """`2024-01-01 03:00` in UTC, as Unix seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


T0 = ts("2024-01-01 00:00")
HOURLY = Schedule(every=3600.0)
DB = BackupTarget("volume", "offsite", "db", "data")
CLUSTER = BackupTarget("cluster", "offsite")
CHECK = BackupTarget("check", "offsite")


# --- next_due ----------------------------------------------------------------------


def test_an_every_schedule_is_due_now_without_history_then_every_interval() -> None:
    assert next_due(HOURLY, None, T0) == T0
    assert next_due(HOURLY, T0, T0 + 10) == T0 + 3600
    # a missed slot is not caught up: due once, at the interval after the last start
    assert next_due(HOURLY, T0 - 86400, T0) == T0 - 86400 + 3600


@pytest.mark.parametrize(
    ("cron", "last_started", "due"),
    [
        ("0 3 * * *", "2024-01-01 00:30", "2024-01-01 03:00"),
        ("0 3 * * *", "2024-01-01 03:00", "2024-01-02 03:00"),  # strictly after
        ("0 3 * * *", "2024-01-01 03:07", "2024-01-02 03:00"),  # a late start
        ("0 3 * * *", "2023-12-31 23:59", "2024-01-01 03:00"),  # year boundary
        ("0 0 1 * *", "2024-01-31 12:00", "2024-02-01 00:00"),  # month boundary
        ("0 0 29 2 *", "2023-03-01 00:00", "2024-02-29 00:00"),  # the next leap day
        ("30 2 * * *", "2024-03-31 00:00", "2024-03-31 02:30"),  # Europe's DST: UTC has none
        ("*/15 * * * *", "2024-01-01 00:14", "2024-01-01 00:15"),
        ("0 3 * * mon", "2024-01-01 03:00", "2024-01-08 03:00"),  # 2024-01-01 is a Monday
        ("@hourly", "2024-01-01 23:30", "2024-01-02 00:00"),
        ("@daily", "2024-02-28 12:00", "2024-02-29 00:00"),
    ],
)
def test_a_cron_schedule_is_due_at_its_next_time_in_utc(
    cron: str, last_started: str, due: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule = Schedule(cron=cron)
    assert next_due(schedule, ts(last_started), T0) == ts(due)
    monkeypatch.setenv("TZ", "America/New_York")  # the machine's zone changes nothing
    time.tzset()
    try:
        assert next_due(schedule, ts(last_started), T0) == ts(due)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_cron_schedule_without_history_is_due_now() -> None:
    assert next_due(Schedule(cron="0 3 * * *"), None, T0 + 7) == T0 + 7


def test_a_failure_is_retried_after_the_backoff_or_the_interval() -> None:
    failed = LastRun(started_at=T0, finished_at=T0 + 20, ok=False)
    assert due_at(HOURLY, failed, T0 + 20) == T0 + 20 + FAILURE_BACKOFF
    assert due_at(Schedule(every=60.0), failed, T0 + 20) == T0 + 20 + 60
    assert due_at(HOURLY, failed, T0 + 20, failure_backoff=30.0) == T0 + 50
    nightly = Schedule(cron="0 3 * * *")
    assert due_at(nightly, failed, T0 + 20) == T0 + 20 + FAILURE_BACKOFF
    ok = LastRun(started_at=T0, finished_at=T0 + 20, ok=True)
    assert due_at(HOURLY, ok, T0 + 20) == T0 + 3600


# --- decide_runs -------------------------------------------------------------------


def decide(
    history: dict[str, LastRun] | None = None,
    running: list[Running] | None = None,
    live: tuple[str, ...] = ("n1", "n2", "n3"),
    active: dict[str, str] | None = None,
    now: float = T0,
    leader: str | None = "n1",
    targets: dict[BackupTarget, Schedule] | None = None,
) -> list[Start | Wait]:
    return decide_runs(
        targets if targets is not None else {DB: HOURLY},
        history or {},
        running or [],
        live,
        {"db": "n2"} if active is None else active,
        now,
        leader_node=leader,
    )


def test_a_first_run_starts_at_once_on_the_active_copys_node() -> None:
    assert decide() == [Start(DB, "n2", "first run")]


def test_a_run_starts_when_due_and_not_before() -> None:
    history = {DB.key: LastRun(T0 - 3000, T0 - 2900, ok=True)}
    assert decide(history) == []
    assert decide(history, now=T0 + 600) == [Start(DB, "n2", "due")]


def test_a_repository_takes_one_run_at_a_time() -> None:
    """restic 0.14 does not wait for a lock: a backup beside another run's
    `forget --prune` fails; two first runs would both `restic init`."""
    both = {DB: HOURLY, CLUSTER: HOURLY}
    first = decide(targets=both)
    assert [type(d) for d in first] == [Start, Wait]
    assert "in use by another run" in first[1].reason  # type: ignore[union-attr]
    assert first[0].target == CLUSTER  # type: ignore[union-attr]
    running = [Running(CLUSTER, "r1", "n1", T0)]
    waiting = decide({CLUSTER.key: LastRun(T0 - 10, T0 - 5, ok=True)}, running, targets=both)
    assert [type(d) for d in waiting] == [Wait]
    elsewhere = BackupTarget("volume", "other", "db", "data")
    apart = decide(running=running, targets={CLUSTER: HOURLY, DB: HOURLY, elsewhere: HOURLY})
    assert [d.target for d in apart if isinstance(d, Start)] == [elsewhere]


def test_one_run_per_target_at_a_time() -> None:
    history = {DB.key: LastRun(T0 - 7200, T0 - 7100, ok=True)}  # long overdue
    running = [Running(DB, "r1", "n2", T0 - 60)]
    assert decide(history, running) == []
    # even if the active moved meanwhile: the run on a live node goes on
    assert decide(history, running, active={"db": "n3"}) == []


def test_a_run_interrupted_by_its_nodes_death_is_retried_at_once_elsewhere() -> None:
    history = {DB.key: LastRun(T0 - 60, T0 - 50, ok=True)}  # not due by its schedule
    running = [Running(DB, "r1", "n2", T0 - 30)]
    assert decide(history, running, live=("n1", "n3"), active={"db": "n3"}) == [
        Start(DB, "n3", "run r1 was interrupted (n2 is not live)", retry_of="r1")
    ]


def test_a_retry_waits_while_the_active_is_still_on_the_dead_node() -> None:
    running = [Running(DB, "r1", "n2", T0 - 30)]
    assert decide(running=running, live=("n1", "n3")) == [
        Wait(DB, "the node holding the active copy of db (n2) is not live")
    ]


def test_a_failed_run_is_retried_after_a_backoff_not_in_a_loop() -> None:
    history = {DB.key: LastRun(T0, T0 + 5, ok=False)}
    assert decide(history, now=T0 + 5) == []
    assert decide(history, now=T0 + 5 + FAILURE_BACKOFF - 1) == []
    assert decide(history, now=T0 + 5 + FAILURE_BACKOFF) == [
        Start(DB, "n2", "retry after a failure")
    ]


def test_a_target_whose_active_node_is_unknown_waits() -> None:
    assert decide(active={}) == [
        Wait(DB, "the node holding the active copy of db is not known yet")
    ]
    # and so does one not yet due: nothing to say
    assert decide({DB.key: LastRun(T0 - 10, T0 - 5, ok=True)}, active={}) == []


def test_the_cluster_backup_and_checks_run_on_the_leaders_node() -> None:
    targets = {CLUSTER: HOURLY, BackupTarget("check", "vault"): HOURLY}
    assert decide(targets=targets) == [
        Start(CLUSTER, "n1", "first run"),
        Start(BackupTarget("check", "vault"), "n1", "first run"),
    ]
    assert decide(targets=targets, leader=None) == [
        Wait(CLUSTER, "the leader's node is not known yet"),
        Wait(BackupTarget("check", "vault"), "the leader's node is not known yet"),
    ]


def test_a_check_has_its_repository_to_itself() -> None:
    targets = {DB: HOURLY, CHECK: HOURLY}
    # backups go first; the check waits for them
    assert decide(targets=targets) == [
        Start(DB, "n2", "first run"),
        Wait(CHECK, "repository offsite is in use by another run"),
    ]
    # and a backup waits while the repository is checked
    running = [Running(CHECK, "c1", "n1", T0 - 10)]
    assert decide(targets=targets, running=running) == [
        Wait(DB, "repository offsite is being checked")
    ]
    # other repositories are not concerned
    other = BackupTarget("volume", "vault", "db", "data")
    assert decide(targets={other: HOURLY}, running=running) == [Start(other, "n2", "first run")]


def test_earliest_due() -> None:
    history = {DB.key: LastRun(T0 - 3000, T0 - 2900, ok=True)}
    assert earliest_due({DB: HOURLY}, history, T0) == T0 + 600
    assert earliest_due({DB: HOURLY, CLUSTER: HOURLY}, history, T0) == T0
    assert earliest_due({}, history, T0) is None


def test_targets_come_from_the_spec() -> None:
    spec = parse_spec(
        "cluster: c\n"
        "nodes: [{name: n1, address: 10.0.0.1, store: true}]\n"
        "backups:\n"
        "  repositories:\n"
        "    offsite: {url: /b, password_env: PW, check: {cron: '0 4 * * sun'}}\n"
        "    vault: {url: /v, password_env: VPW}\n"
        "  cluster: {repository: offsite, every: 6h, keep: {last: 4}}\n"
        "services:\n"
        "  db:\n"
        "    command: x {volume.data}\n"
        "    volumes:\n"
        "      data: {backup: {repository: offsite, every: 1h, keep: {last: 24}}}\n"
        "      scratch: null\n"
    )
    targets = backup_targets(spec)
    assert sorted(t.key for t in targets) == [
        "check/offsite",
        "cluster/offsite",
        "volume/db/data/offsite",
    ]
    assert targets[DB].every == 3600.0
    assert targets[CHECK].cron == "0 4 * * sun"


def test_target_keys_are_stable_and_read_back() -> None:
    assert [DB.key, CLUSTER.key, CHECK.key] == [
        "volume/db/data/offsite",
        "cluster/offsite",
        "check/offsite",
    ]
    for target in (DB, CLUSTER, CHECK):
        assert BackupTarget.from_key(target.key) == target
    for bad in ("volume/db/offsite", "cluster", "cluster/", "nightly/offsite", "check/a/b"):
        with pytest.raises(ValueError):
            BackupTarget.from_key(bad)
    with pytest.raises(ValueError):
        BackupTarget("volume", "offsite")
    with pytest.raises(ValueError):
        BackupTarget("cluster", "offsite", "db")


# --- properties --------------------------------------------------------------------

NODES = ["n1", "n2", "n3"]
ALL_TARGETS = [
    BackupTarget("volume", repo, service, "data")
    for repo in ("offsite", "vault")
    for service in ("db", "web")
] + [BackupTarget(kind, repo) for kind in ("cluster", "check") for repo in ("offsite", "vault")]
VOLUME_BACKUP = VolumeBackupSpec(repository="offsite", every=600.0, keep=KeepSpec(last=1))

states = st.fixed_dictionaries(
    {
        "targets": st.lists(st.sampled_from(ALL_TARGETS), unique=True),
        "history": st.dictionaries(
            st.sampled_from([t.key for t in ALL_TARGETS]),
            st.builds(
                lambda started, took, ok: LastRun(T0 - started, T0 - started + took, ok),
                st.floats(0, 5000),
                st.floats(0, 100),
                st.booleans(),
            ),
        ),
        "running": st.lists(
            st.builds(
                Running,
                st.sampled_from(ALL_TARGETS),
                st.text("abc", min_size=1, max_size=3),
                st.sampled_from(NODES),
                st.floats(T0 - 5000, T0),
            ),
            max_size=6,
        ),
        "live": st.sets(st.sampled_from(NODES)),
        "active": st.dictionaries(st.sampled_from(["db", "web"]), st.sampled_from(NODES)),
        "leader": st.none() | st.sampled_from(NODES),
        "cron": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(states)
def test_never_two_decisions_for_a_target_nor_a_run_on_a_dead_node(state: dict) -> None:  # type: ignore[type-arg]
    schedule = Schedule(cron="*/10 * * * *") if state["cron"] else VOLUME_BACKUP
    targets = {t: schedule for t in state["targets"]}
    decisions = decide_runs(
        targets,
        state["history"],
        state["running"],
        state["live"],
        state["active"],
        T0,
        leader_node=state["leader"],
    )
    keys = [d.target.key for d in decisions]
    assert len(keys) == len(set(keys))
    busy = {r.target.key for r in state["running"] if r.node in state["live"]}
    for decision in decisions:
        assert decision.target in targets
        if isinstance(decision, Start):
            assert decision.node in state["live"]
            assert decision.target.key not in busy  # one at a time
            if decision.retry_of is not None:
                interrupted = [r for r in state["running"] if r.run_id == decision.retry_of]
                assert any(r.target == decision.target for r in interrupted)
    # and a check never starts beside another run on its repository
    started = [d.target for d in decisions if isinstance(d, Start)]
    live_runs = [r.target for r in state["running"] if r.node in state["live"]]
    for target in started:
        if target.kind == "check":
            others = [t for t in [*started, *live_runs] if t != target]
            assert all(t.repository != target.repository for t in others)
