"""What the leader decides (`plan`): placements, moves, removals, from store state."""

from __future__ import annotations

from ninefold.decide.plan import Decision, plan
from ninefold.spec import ClusterSpec, parse_spec
from ninefold.state.records import AssignmentRecord, InstanceStatus
from ninefold.state.snapshot import ClusterState

NODES = """\
cluster: shop
nodes:
  - {name: n1, address: 10.0.0.1, zone: a, store: true, labels: {disk: ssd}}
  - {name: n2, address: 10.0.0.2, zone: b}
  - {name: n3, address: 10.0.0.3, zone: c}
  - {name: n4, address: 10.0.0.4, zone: d}
"""
ALL = frozenset({"n1", "n2", "n3", "n4"})


def make_spec(web: int = 2, db: bool = True) -> ClusterSpec:
    text = NODES + "services:\n"
    text += f"  web:\n    command: [web, --port, '{{port}}']\n    replicas: {web}\n"
    if db:
        text += "  db:\n    command: [db]\n    placement: {constraints: {disk: ssd}}\n"
    return parse_spec(text)


def apply(assignments: tuple[AssignmentRecord, ...], d: Decision) -> tuple[AssignmentRecord, ...]:
    """What the store holds after the leader wrote `d` (keys assign/<node>/<inst>)."""
    keyed = {(a.node, a.instance): a for a in assignments}
    for rec in d.remove:
        keyed.pop((rec.node, rec.instance), None)
    for rec in d.write:
        keyed[(rec.node, rec.instance)] = rec
    return tuple(keyed.values())


def where(assignments: tuple[AssignmentRecord, ...]) -> dict[str, str]:
    return {a.instance: a.node for a in assignments}


def converged(spec: ClusterSpec, alive: frozenset[str] = ALL) -> tuple[AssignmentRecord, ...]:
    first = plan(ClusterState(spec, alive, frozenset(), ()))
    return apply((), first)


def failed_status(instance: str, node: str, service: str = "web") -> InstanceStatus:
    return InstanceStatus(
        service=service, instance=instance, node=node, address="10.0.0.9", state="failed"
    )


def test_fresh_cluster_places_every_instance() -> None:
    d = plan(ClusterState(make_spec(web=3), ALL, frozenset(), ()))
    placed = where(tuple(d.write))
    assert set(placed) == {"web-0", "web-1", "web-2", "db-0"}
    assert len({placed["web-0"], placed["web-1"], placed["web-2"]}) == 3
    assert placed["db-0"] == "n1"  # the only ssd node
    assert d.remove == [] and d.moved == {} and d.unplaced == ()
    assert not d.empty


def test_converged_state_gives_an_empty_decision() -> None:
    spec = make_spec()
    current = converged(spec)
    d = plan(ClusterState(spec, ALL, frozenset(), current))
    assert d.empty
    assert d.write == [] and d.remove == [] and d.moved == {} and d.unplaced == ()


def test_a_held_service_has_no_instance_until_released() -> None:
    """A volume being restored: none of the service's instances may run."""
    spec = make_spec(web=3)
    current = converged(spec)
    held = plan(ClusterState(spec, ALL, frozenset(), current, held=frozenset({"web"})))
    assert sorted(r.instance for r in held.remove) == ["web-0", "web-1", "web-2"]
    assert held.write == []
    after = apply(current, held)
    again = plan(ClusterState(spec, ALL, frozenset(), after))
    assert sorted(r.instance for r in again.write) == ["web-0", "web-1", "web-2"]


def test_dead_node_instances_move_and_nothing_else_does() -> None:
    spec = make_spec(web=2)
    current = converged(spec)
    before = where(current)
    dead = before["web-0"]
    d = plan(ClusterState(spec, ALL - {dead}, frozenset(), current))
    on_dead = {i for i, n in before.items() if n == dead}
    assert set(d.moved) == on_dead
    for inst in on_dead:
        old, new = d.moved[inst]
        assert old == dead and new != dead and new in ALL
    assert {r.instance for r in d.write} == on_dead
    assert {(r.instance, r.node) for r in d.remove} == {(i, dead) for i in on_dead}
    after = where(apply(current, d))
    assert {i: n for i, n in after.items() if i not in on_dead} == {
        i: n for i, n in before.items() if i not in on_dead
    }
    assert d.failed_on == {}


def test_drained_node_instances_move() -> None:
    spec = make_spec(web=2)
    current = converged(spec)
    drained = where(current)["web-1"]
    d = plan(ClusterState(spec, ALL, frozenset({drained}), current))
    assert d.moved["web-1"][0] == drained
    assert d.moved["web-1"][1] != drained
    assert all(new != drained for _, new in d.moved.values())
    assert drained not in where(apply(current, d)).values()


def test_failed_instance_moves_and_avoids_the_node() -> None:
    spec = make_spec(web=2)
    current = converged(spec)
    bad = where(current)["web-0"]
    d = plan(ClusterState(spec, ALL, frozenset(), current, (failed_status("web-0", bad),)))
    assert set(d.moved) == {"web-0"}
    assert d.moved["web-0"][0] == bad
    (rec,) = d.write
    assert rec.instance == "web-0" and rec.node != bad
    assert bad in rec.avoid
    assert d.failed_on == {"web-0": bad}
    # Once moved, the old failed status (still under the old node) changes nothing.
    after = apply(current, d)
    again = plan(ClusterState(spec, ALL, frozenset(), after, (failed_status("web-0", bad),)))
    assert again.empty


def test_stale_failed_status_on_another_node_changes_nothing() -> None:
    spec = make_spec(web=2)
    current = converged(spec)
    here = where(current)["web-0"]
    elsewhere = sorted(ALL - {here})[0]
    d = plan(ClusterState(spec, ALL, frozenset(), current, (failed_status("web-0", elsewhere),)))
    assert d.empty and d.moved == {} and d.failed_on == {}


def test_scale_down_removes_the_highest_ordinals() -> None:
    current = converged(make_spec(web=4))
    d = plan(ClusterState(make_spec(web=2), ALL, frozenset(), current))
    assert d.write == []
    assert sorted(r.instance for r in d.remove) == ["web-2", "web-3"]
    assert d.moved == {}
    assert set(where(apply(current, d))) == {"web-0", "web-1", "db-0"}


def test_removed_service_loses_its_assignments() -> None:
    current = converged(make_spec(web=2))
    d = plan(ClusterState(make_spec(web=2, db=False), ALL, frozenset(), current))
    assert d.write == []
    assert [r.instance for r in d.remove] == ["db-0"]
    assert set(where(apply(current, d))) == {"web-0", "web-1"}


def test_unplaced_when_no_node_fits() -> None:
    spec = make_spec(web=2)
    current = converged(spec)
    # db runs only on n1 (ssd); with n1 dead it has nowhere to go.
    d = plan(ClusterState(spec, ALL - {"n1"}, frozenset(), current))
    assert d.unplaced == ("db-0",)
    assert "db-0" not in where(apply(current, d))
    assert "db-0" not in d.moved
    # With every node down nothing can be placed at all.
    nothing = plan(ClusterState(make_spec(web=2), frozenset(), frozenset(), ()))
    assert nothing.unplaced == ("db-0", "web-0", "web-1")
    assert nothing.write == []


def test_a_move_request_moves_only_that_instance_to_its_target() -> None:
    spec = make_spec(web=2)
    before = converged(spec)
    spare = sorted(ALL - {a.node for a in before if a.service == "web"} - {"n1"})[0]
    moves = {"web-0": spare}
    d = plan(ClusterState(spec, ALL, frozenset(), before, moves=moves))
    after = where(apply(before, d))
    assert after["web-0"] == spare
    assert d.moved == {"web-0": (where(before)["web-0"], spare)}
    assert {i: n for i, n in after.items() if i != "web-0"} == {
        i: n for i, n in where(before).items() if i != "web-0"
    }


def test_a_move_the_target_cannot_take_changes_nothing() -> None:
    spec = make_spec(web=2)
    before = converged(spec)
    other_web = where(before)["web-1"]
    for target in ("n9", other_web):  # unknown node; node already running web
        d = plan(ClusterState(spec, ALL, frozenset(), before, moves={"web-0": target}))
        assert d.empty, target
    down = sorted(ALL - {a.node for a in before})[0]
    d = plan(ClusterState(spec, ALL - {down}, frozenset(), before, moves={"web-0": down}))
    assert "web-0" not in d.moved
    d = plan(ClusterState(spec, ALL, frozenset(), before, moves={"db-0": "n2"}))
    assert d.empty  # n2 lacks the disk: ssd label db needs


def test_a_volume_s_backup_schedule_does_not_restart_its_service() -> None:
    from ninefold.decide.plan import generation

    def spec_with(backup: str) -> ClusterSpec:
        return parse_spec(f"""
cluster: c
nodes: [{{name: n1, address: 10.0.0.1, store: true}}]
services:
  db:
    command: [sleep, "1"]
    volumes: {{data: {{replicate: none{backup}}}}}
backups:
  repositories: {{r: {{url: /srv/r, password_file: /etc/pw}}}}
""")

    digests = {
        generation(ClusterState(spec_with(b), ALL, frozenset(), ()), "db")
        for b in ("", ", backup: {repository: r, every: 1h, keep: {last: 2}}",
                  ", backup: {repository: r, every: 2h, keep: {last: 9}}")
    }  # fmt: skip
    assert len(digests) == 1
