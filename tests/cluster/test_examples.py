"""The example services of examples/shop.yaml on a real 3-node cluster: the hit
counter answers through a gateway from both replicas, the Domain Registry
(seed 004's API) keeps its data in the cluster's key-value store, so a hyperty
written through one node's gateway is read, listed and deleted through others,
and the notes' files follow their active through a switchover. Every spec in
examples/ is valid (and the lab's fit the lab)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import yaml

from ninefold.lab import topology
from ninefold.spec import load_spec
from tests.cluster.harness import LocalCluster, until

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Factory = Callable[..., LocalCluster]


def shop_services() -> str:
    """The services of examples/shop.yaml, with absolute paths and this Python."""
    spec = yaml.safe_load((EXAMPLES / "shop.yaml").read_text())
    for service in spec["services"].values():
        service["command"] = [
            sys.executable if word == "python3" else str(EXAMPLES / word) if "/" in word else word
            for word in service["command"]
        ]
    return yaml.safe_dump({"services": spec["services"]}, sort_keys=False)


def gateway(c: LocalCluster, node: str) -> str:
    return f"http://{c.addresses[node]}:{c.base + 3}"


def start_shop(local_cluster: Factory) -> LocalCluster:
    c = local_cluster(shop_services())
    c.start_all()
    until("counter healthy", lambda: len(c.serving("counter")) == 2, 90)
    until("registry healthy", lambda: len(c.serving("registry")) == 2, 30)
    return c


def counters_seen(url: str) -> Callable[[], set[str]]:
    def probe() -> set[str]:
        with httpx.Client(timeout=2, trust_env=False) as http:
            answers = [http.get(url) for _ in range(8)]
        seen = {r.text.split()[0] for r in answers if r.status_code == 200}
        return seen if len(seen) == 2 else set()

    return probe


def test_counter_answers_from_both_replicas(local_cluster: Factory) -> None:
    c = start_shop(local_cluster)
    url = gateway(c, "n1") + "/counter/"
    assert until("both counters routed", counters_seen(url), 30) == {"counter-0", "counter-1"}
    counts: dict[str, list[int]] = {}
    with httpx.Client(timeout=5, trust_env=False) as http:
        for _ in range(20):
            r = http.get(url)
            assert r.status_code == 200, r.text
            name, count = r.text.split()
            counts.setdefault(name, []).append(int(count))
        r = http.get(url, headers={"Accept": "application/json"})
        assert r.status_code == 200
        body = r.json()
        assert body["instance"] in ("counter-0", "counter-1")
        assert body["node"] in c.addresses
        assert http.get(gateway(c, "n2") + "/counter/healthz").text == "ok\n"
    assert sorted(counts) == ["counter-0", "counter-1"]
    for seq in counts.values():  # each replica counts its own hits, one by one
        assert seq == list(range(seq[0], seq[0] + len(seq))), counts
    assert abs(len(counts["counter-0"]) - len(counts["counter-1"])) <= 1, counts


USER = quote("user://example.com/alice", safe="")
H1 = quote("hyperty://example.com/h1", safe="")


def hyperty(resources: list[str], schemes: list[str], descriptor: str) -> dict[str, Any]:
    """A hyperty as the reTHINK RegistryConnector registers one."""
    return {
        "descriptor": descriptor,
        "expires": 3600,
        "resources": resources,
        "dataSchemes": schemes,
        "status": "live",
        "runtime": "runtime://example.com/1",
        "p2pRequester": "requester",
        "p2pHandler": "handler",
        "guid": "guid-alice",
    }


def test_registry_serves_seed_004_api_from_the_kv_store(local_cluster: Factory) -> None:
    """Written through one node's gateway, read, listed and deleted through the
    others, from both replicas. Route by route: tests/cluster/test_registry.py."""
    c = start_shop(local_cluster)
    g1, g2, g3 = (gateway(c, n) for n in ("n1", "n2", "n3"))
    user = f"/hyperty/user/{USER}"
    h1, h2 = f"{user}/{H1}", f"{user}/h2"
    served_by: set[str] = set()

    with httpx.Client(timeout=10, trust_env=False) as http:

        def call(method: str, url: str, body: Any = None) -> httpx.Response:
            r = http.request(method, url, json=body)
            assert r.headers["content-type"] == "application/json", r.text
            served_by.add(r.headers["x-served-by"])
            return r

        until("registry routed", lambda: http.get(g1 + user).status_code == 404, 30)
        assert call("GET", g1 + user).json() == {"message": "Not Found"}
        assert call("GET", f"{g1}/hyperty/url/{H1}").status_code == 404

        # create, through n1's gateway
        r = call("PUT", g1 + h1, hyperty(["chat", "video"], ["comm"], "catalogue/h1"))
        assert (r.status_code, r.json()) == (200, {"message": "Hyperty created"})
        r = call("PUT", g1 + h2, hyperty(["chat"], ["comm", "connection"], "catalogue/h2"))
        assert r.status_code == 200

        # read through another node's gateway: the data is in the cluster's KV
        r = call("GET", f"{g2}/hyperty/url/{H1}")
        assert r.status_code == 200
        one = r.json()
        assert one["descriptor"] == "catalogue/h1"
        assert (one["userID"], one["hypertyID"]) == ("user://example.com/alice", unquote(H1))
        assert one["startingTime"] and one["lastModified"]
        key = "registry/user/user_3A_2F_2Fexample.com_2Falice/h2"
        stored = http.get(f"http://{c.addresses['n3']}:{c.base + 2}/v1/kv/{key}")
        assert stored.status_code == 200, stored.text
        assert json.loads(stored.json()["value"])["descriptor"] == "catalogue/h2"

        # all of a user's hyperties (also by guid), and a search
        for url in (g3 + user, g3 + "/hyperty/guid/guid-alice"):
            everything = call("GET", url)
            assert everything.status_code == 200
            assert sorted(everything.json()) == ["h2", "hyperty://example.com/h1"]
        r = call("GET", f"{g2}{user}/hy?resources=chat&dataSchemes=connection")
        assert (r.status_code, sorted(r.json())) == (200, ["h2"])

        # delete through n2 (a soft delete), seen from everywhere
        r = call("DELETE", g2 + h1)
        assert (r.status_code, r.json()) == (200, {"message": "Hyperty deleted"})
        for g in (g1, g3):
            r = call("GET", f"{g}/hyperty/url/{H1}")
            assert (r.status_code, r.json()["status"]) == (408, "disconnected")
        assert call("GET", g1 + "/registry/updated").json().keys() >= {unquote(H1)}

    # round robin: both replicas answered, each reading what the other wrote
    assert served_by == {"registry-0", "registry-1"}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_valid(path: Path) -> None:
    spec = load_spec(path)
    for name, service in spec.services.items():
        for word in service.command or []:  # agents start in the spec's directory
            if word.startswith("services/"):
                assert (path.parent / word).is_file(), f"{name}: no {word}"
    if not spec.nodes[0].address.startswith("127."):
        topology.plan(spec, "nf0000")  # made for `ninefold lab up`


def test_static_site_is_seed_003s_mirrored_web_servers_behind_a_vip() -> None:
    spec = load_spec(EXAMPLES / "static-site.yaml")
    web = spec.services["web"]
    assert (web.mode, web.replicas) == ("replicated", 2)
    assert web.volumes["docroot"].replicated
    assert "{volume.docroot}" in web.command
    assert web.route is not None and web.route.http == "/"
    assert spec.gateway.vip is not None
    assert spec.replicates_volumes


def test_musa_is_seed_000s_six_services_behind_mtls_and_jwt_roles() -> None:
    spec = load_spec(EXAMPLES / "musa.yaml")
    assert len(spec.services) == 6 and spec.gateway.enabled  # every node routes every service
    assert spec.security.tls is not None and spec.mesh_listens
    assert {n.region for n in spec.nodes} == {"tut", "aimes"}
    db = spec.services["postgres"]
    assert db.is_external and db.route is not None and db.route.tcp is not None
    assert db.external_check().kind == "tcp"
    run = {name: s for name, s in spec.services.items() if not s.is_external}
    assert all(s.route is not None and s.route.mtls for s in run.values())
    guarded = {name for name, s in run.items() if s.access is not None}
    assert guarded == {"mjp", "cec", "tsm"}  # table 6.2's "ACL: y"
    mjp = spec.services["mjp"].access
    assert mjp is not None and mjp.jwt.roles_claim == "authorities"
    assert {r.path: r.roles for r in mjp.rules}["/admin"] == ["ROLE_ADMIN"]


def notes_active(c: LocalCluster) -> str | None:
    """`node/instance` of the notes' active, if any."""
    return next(s["active"] for s in c.status()["services"] if s["name"] == "notes")


def test_notes_are_files_that_follow_the_active_through_a_switchover(
    local_cluster: Factory,
) -> None:
    c = start_shop(local_cluster)
    until("notes active, standby healthy", lambda: len(c.serving("notes")) == 2, 60)
    first = until("a notes active", lambda: notes_active(c), 30)
    node, _, instance = first.partition("/")
    g1, g2, g3 = (gateway(c, n) for n in ("n1", "n2", "n3"))
    with httpx.Client(timeout=10, trust_env=False) as http:
        until("notes routed", lambda: http.get(g1 + "/notes/healthz").status_code == 200, 30)
        stored: dict[str, str] = {}
        for i in range(20):
            r = http.post(g1 + "/notes/", content=f"note {i}".encode())
            assert r.status_code == 200, r.text
            assert r.json()["instance"] == r.headers["x-served-by"] == instance
            stored[r.json()["id"]] = f"note {i}"
        listed = http.get(g2 + "/notes/").json()
        assert [(n["id"], n["text"]) for n in listed] == list(stored.items())  # oldest first
        some = next(iter(stored))
        assert http.get(f"{g3}/notes/{some}").text == "note 0"
        assert http.get(f"{g3}/notes/0000000000000000000-notes-9").status_code == 404
        assert http.post(g1 + "/notes/", content=b"").status_code == 400
        assert http.delete(g1 + "/notes/").status_code == 405
        volume = c.data_dir(node) / "volumes" / "notes" / "data"
        assert {p.stem for p in volume.glob("*.note")} == set(stored)

        # A planned switchover: the old active stops, its last changes are
        # sent, and only then does the standby take over: no note is lost.
        api = f"http://{c.addresses['n1']}:{c.base + 2}"
        answer = http.post(f"{api}/v1/services/notes/switchover", json={})
        assert answer.status_code == 202, answer.text
        second = until(
            "another notes active", lambda: a if (a := notes_active(c)) != first else None, 30
        )
        new = second.partition("/")[2]

        def from_the_new_active() -> httpx.Response | None:
            r = http.get(g3 + "/notes/")
            return r if r.status_code == 200 and r.headers["x-served-by"] == new else None

        after = until("the new active answering", from_the_new_active, 30).json()
        assert {n["id"]: n["text"] for n in after} == stored
        r = http.post(g2 + "/notes/", content=b"after the switchover")
        assert (r.status_code, r.json()["instance"]) == (200, new)
