"""The Domain Registry example (examples/services/registry.py) against the reTHINK
server's behaviour, route by route: status codes, bodies and messages, through
a real gateway, two replicas and the cluster's key-value store (one node).

First, the reTHINK project's own RSpec API specs, unmodified, with a small
stand-in for the `airborne` gem (tests/registry_specs/). The specs are not
copied into this repository: the test reads them from a checkout named by
NINEFOLD_REGISTRY_SPECS (its `server/specs` directory), or from a git mirror
of reTHINK-project/dev-registry-domain at MIRROR, and is skipped without
either."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.cluster.harness import LocalCluster, until
from tests.helpers import etcd_or_skip, free_port, wait_for_port

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "examples" / "services" / "registry.py"
SHIM = ROOT / "tests" / "registry_specs" / "lib"
MIRROR = Path("/work/.mirror/reTHINK-project+dev-registry-domain/repo")
"""Where a session's `fetch` of the upstream repository leaves its git directory."""
UPSTREAM_COMMIT = "f1606dcdd27bc33a8bfe89f2cdbd60f90aba850f"
SPEC_FILES = (  # in the order of the upstream .travis.yml
    "data_objects_keep_alive_spec.rb",
    "data_objects_spec.rb",
    "hyperties_spec.rb",
    "hyperty_keep_alive_spec.rb",
)
SPECS_PASSING = 118
"""Of the 118 examples in the four spec files, as measured."""
NOT_FOUND = {"message": "Not Found"}
DEAD = "disconnected"
SPARK_404 = b"<html><body><h2>404 Not found</h2></body></html>"

SERVICES = f"""services:
  registry:
    command: [{sys.executable}, {REGISTRY}, "{{address}}", "{{port}}"]
    replicas: 2
    placement: {{allow_colocate: true}}
    env: {{EXPIRES: "1"}}
    route: {{http: /, strip_prefix: false}}
    check: {{http: /healthz, interval: 200ms, fall: 3, rise: 1}}
"""


@dataclass
class Registry:
    cluster: LocalCluster
    url: str
    """The gateway."""
    api: str
    """The node's agent API."""
    http: httpx.Client

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if body is not None and "content" not in kw:
            kw["json"] = body
        return self.http.request(method, self.url + path, **kw)

    def get(self, path: str) -> httpx.Response:
        return self.call("GET", path)

    def put(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.call("PUT", path, body, **kw)

    def delete(self, path: str) -> httpx.Response:
        return self.call("DELETE", path)

    def answer(self, path: str, status: int, state: str | None = None) -> httpx.Response | None:
        """GET path if it answers status (and its body has that status field)."""
        r = self.get(path)
        if r.status_code != status or (state is not None and r.json().get("status") != state):
            return None
        return r

    def drain_updated(self) -> None:
        assert self.get("/registry/updated").status_code == 200


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    etcd_or_skip()
    cluster = LocalCluster(tmp_path_factory.mktemp("registry"), SERVICES, nodes=1)
    cluster.start_all()
    try:
        until("both registries healthy", lambda: len(cluster.serving("registry")) == 2, 90)
        url = f"http://127.0.0.1:{cluster.base + 3}"
        with httpx.Client(timeout=15, trust_env=False) as http:
            until("registry routed", lambda: http.get(url + "/healthz").status_code == 200, 30)
            yield Registry(cluster, url, f"http://127.0.0.1:{cluster.base + 2}", http)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


def q(text: str) -> str:
    return quote(text, safe="")


def hyperty(**changes: Any) -> dict[str, Any]:
    body = {
        "resources": ["chat", "voice"],
        "dataSchemes": ["comm"],
        "descriptor": "hyperty-catalogue://example.com/h",
        "expires": 1200,
        "status": "created",
        "runtime": "runtime://example.com/r",
        "p2pRequester": "requester",
        "p2pHandler": "handler",
        "guid": "guid-x",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def data_object(**changes: Any) -> dict[str, Any]:
    body = {
        "schema": "schema",
        "name": "n-default",
        "reporter": "rep-default",
        "resources": ["chat"],
        "dataSchemes": ["comm"],
        "status": "live",
        "expires": 1000,
        "runtime": "runtime",
        "p2pRequester": "requester",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


# --- the real server's own specs --------------------------------------------------------


def rspec_or_skip() -> str:
    rspec = shutil.which("rspec")
    if rspec is None:
        pytest.skip("rspec is not installed (apt-get install ruby ruby-rspec ruby-rest-client)")
    probe = subprocess.run(["ruby", "-e", "require 'rest-client'"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("ruby's rest-client is not installed (apt-get install ruby-rest-client)")
    return rspec


def upstream_specs(into: Path) -> Path:
    """The directory holding the upstream spec files: NINEFOLD_REGISTRY_SPECS, or
    the files of UPSTREAM_COMMIT written out of the git mirror; else skip."""
    named = os.environ.get("NINEFOLD_REGISTRY_SPECS")
    if named:
        found = Path(named)
        missing = [n for n in SPEC_FILES if not (found / n).is_file()]
        if missing:
            pytest.fail(f"NINEFOLD_REGISTRY_SPECS={named} lacks {', '.join(missing)}")
        return found
    if not MIRROR.is_dir():
        pytest.skip(
            "the reTHINK registry's specs are not here: set NINEFOLD_REGISTRY_SPECS to a "
            "checkout's server/specs (github.com/reTHINK-project/dev-registry-domain)"
        )
    for name in SPEC_FILES:
        shown = subprocess.run(
            ["git", "--git-dir", str(MIRROR), "show", f"{UPSTREAM_COMMIT}:server/specs/{name}"],
            capture_output=True,
        )
        if shown.returncode != 0:
            pytest.skip(f"{MIRROR} has no server/specs/{name} at {UPSTREAM_COMMIT[:7]}")
        (into / name).write_bytes(shown.stdout)
    return into


def test_the_real_servers_api_specs_pass_unmodified(registry: Registry, tmp_path: Path) -> None:
    rspec = rspec_or_skip()
    specs = upstream_specs(tmp_path)
    counts: dict[str, tuple[int, int]] = {}
    failures: list[str] = []
    for name in SPEC_FILES:  # one process each: they set airborne's base_url differently
        run = subprocess.run(
            [rspec, "-I", str(SHIM), "--format", "json", str(specs / name)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HOST": registry.url},
            cwd=specs,
        )
        report = json.loads(run.stdout[run.stdout.index("{") :])
        summary = report["summary"]
        counts[name] = (summary["example_count"], summary["failure_count"])
        failures += [
            f"{name}: {e['full_description']}: {e['exception']['message'][:300]}"
            for e in report["examples"]
            if e["status"] == "failed"
        ]
    examples = sum(n for n, _ in counts.values())
    passed = examples - sum(f for _, f in counts.values())
    assert examples == 118, counts
    assert passed == SPECS_PASSING, "\n".join(failures)


# --- hyperties: creation ------------------------------------------------------------------


def test_a_creation_needs_every_field_the_real_server_needs(registry: Registry) -> None:
    path = "/hyperty/user/create%40example.com/create-1"
    for missing in ("expires", "dataSchemes", "resources", "runtime", "status", "descriptor"):
        r = registry.put(path, hyperty(**{missing: None}))
        assert (r.status_code, r.content) == (400, b""), missing
    # guid and the p2p fields are optional; unknown fields are ignored
    r = registry.put(path, hyperty(guid=None, p2pRequester=None, p2pHandler=None, extra=1))
    assert (r.status_code, r.json()) == (200, {"message": "Hyperty created"})
    one = registry.get("/hyperty/url/create-1").json()
    assert "guid" not in one and "extra" not in one and "p2pHandler" not in one
    # a body that is not a JSON object, or a value of the wrong type: 400 (500 there)
    assert registry.put(path, content=b"{not json").status_code == 400
    assert registry.put(path, ["a", "list"]).status_code == 400
    assert registry.put(path, hyperty(expires="soon")).status_code == 400
    assert registry.put(path, hyperty(resources="chat")).status_code == 400
    assert registry.put(path, hyperty(status=None) | {"status": 7}).status_code == 400


def test_expires_is_capped_at_3600_and_zero_is_accepted(registry: Registry) -> None:
    r = registry.put("/hyperty/user/cap%40example.com/cap-1", hyperty(expires=99999))
    assert (r.status_code, r.json()) == (200, {"message": "Hyperty created"})
    assert registry.get("/hyperty/url/cap-1").json()["expires"] == 3600
    r = registry.put("/hyperty/user/cap%40example.com/cap-0", hyperty(expires=0, status="live"))
    assert (r.status_code, r.json()) == (200, {"message": "Hyperty created"})
    assert registry.get("/hyperty/url/cap-0").json()["expires"] == 0


def test_hyperty_ids_are_global_and_creation_replaces_ones_own(registry: Registry) -> None:
    alice = "/hyperty/user/" + q("user://example.com/alice")
    r = registry.put(f"{alice}/{q('hyperty://example.com/g1')}", hyperty(descriptor="d1"))
    assert r.json() == {"message": "Hyperty created"}
    first = registry.get("/hyperty/url/" + q("hyperty://example.com/g1")).json()
    # another user (new or existing) cannot take or change the id
    for other in ("user://example.com/bob", "user://example.com/carol"):
        r = registry.put(f"/hyperty/user/{q(other)}/{q('hyperty://example.com/g1')}", hyperty())
        assert (r.status_code, r.json()) == (404, NOT_FOUND), other
    r = registry.delete(f"/hyperty/user/{q('user://example.com/bob')}/g1")
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    # its owner replaces it: same answer, new fields, startingTime kept
    now = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # noqa: E731
    until("a new second", lambda: now() > first["lastModified"], 5)
    r = registry.put(f"{alice}/{q('hyperty://example.com/g1')}", hyperty(descriptor="d2"))
    assert (r.status_code, r.json()) == (200, {"message": "Hyperty created"})
    again = registry.get("/hyperty/url/" + q("hyperty://example.com/g1")).json()
    assert again["descriptor"] == "d2"
    assert again["startingTime"] == first["startingTime"]
    assert again["lastModified"] > first["lastModified"]


# --- hyperties: reading ---------------------------------------------------------------------


FULL_KEYS = {
    "resources",
    "dataSchemes",
    "descriptor",
    "startingTime",
    "hypertyID",
    "userID",
    "lastModified",
    "status",
    "expires",
    "guid",
    "runtime",
    "p2pRequester",
    "p2pHandler",
}


def test_reading_by_url_user_guid_and_email(registry: Registry) -> None:
    user = "user://example.com/reader@example.org"
    other = "user://other.net/reader@example.org"  # same email, another domain
    u = "/hyperty/user/" + q(user)
    registry.put(f"{u}/read-1", hyperty(guid="guid-read", resources=["chat"]))
    registry.put(f"{u}/read-2", hyperty(guid="guid-read", descriptor="two"))
    registry.put(f"/hyperty/user/{q(other)}/read-3", hyperty(guid="guid-read-other"))

    r = registry.get("/hyperty/url/read-1")
    assert r.status_code == 200
    assert set(r.json()) == FULL_KEYS
    assert r.json()["userID"] == user and r.json()["hypertyID"] == "read-1"
    assert r.json()["status"] == "created" and r.json()["guid"] == "guid-read"
    assert r.json()["startingTime"].endswith("Z") and len(r.json()["startingTime"]) == 20

    for path in (u, u + "/", "/hyperty/guid/guid-read"):
        r = registry.get(path)
        assert r.status_code == 200, path
        assert sorted(r.json()) == ["read-1", "read-2"], path
        assert set(r.json()["read-2"]) == FULL_KEYS - {"userID"}, path
        assert r.json()["read-2"]["descriptor"] == "two"

    r = registry.get("/hyperty/email/" + q("reader@example.org"))
    assert r.status_code == 200
    assert sorted(r.json()) == ["read-1", "read-2", "read-3"]
    assert r.json()["read-3"]["userID"] == other

    for path in (
        "/hyperty/url/nothing-here",
        "/hyperty/user/" + q("user://example.com/nobody"),
        "/hyperty/guid/no-such-guid",
        "/hyperty/email/nobody%40example.org",
    ):
        r = registry.get(path)
        assert (r.status_code, r.json()) == (404, NOT_FOUND), path
        assert r.headers["content-type"] == "application/json"


def test_searches_need_resources_or_data_schemes(registry: Registry) -> None:
    u = "/hyperty/user/searcher%40example.com"
    registry.put(f"{u}/s-1", hyperty(resources=["chat", "voice"], dataSchemes=["comm"]))
    registry.put(f"{u}/s-2", hyperty(resources=["chat", "video"], dataSchemes=["comm", "ctx"]))
    cases = {
        "resources=chat": ["s-1", "s-2"],
        "resources=video": ["s-2"],
        "resources=voice,chat": ["s-1"],
        "dataSchemes=ctx": ["s-2"],
        "dataSchemes=comm&resources=video,chat": ["s-2"],
        "resources=chat&resources=video": ["s-1", "s-2"],  # the first value counts
        "resources=messaging": [],
        "resources=": [],
        "dataSchemes=comm&resources=voice,video": [],
    }
    for query, expected in cases.items():
        for base in (f"{u}/anything", "/hyperty/email/searcher%40example.com/hy"):
            r = registry.get(f"{base}?{query}")
            if expected:
                assert (r.status_code, sorted(r.json())) == (200, expected), (base, query)
            else:
                assert (r.status_code, r.json()) == (404, NOT_FOUND), (base, query)
    # no query, or other parameters: "Not Found", as for one hyperty by user and id
    for path in (f"{u}/s-1", f"{u}/s-1?other=1", f"{u}/s-1?resources=chat&other=1"):
        r = registry.get(path)
        assert (r.status_code, r.json()) == (404, NOT_FOUND), path
    r = registry.get("/hyperty/user/nobody%40example.com/x?resources=chat")
    assert (r.status_code, r.json()) == (404, NOT_FOUND)


def test_all_disconnected_hyperties_answer_408_with_the_body(registry: Registry) -> None:
    user = "user://example.com/away@example.net"
    u = "/hyperty/user/" + q(user)
    registry.put(f"{u}/away-1", hyperty(status="disconnected", guid="guid-away"))
    registry.put(f"{u}/away-2", hyperty(status="disconnected", guid="guid-away"))
    for path in (
        u,
        "/hyperty/guid/guid-away",
        "/hyperty/email/away%40example.net",
        u + "/x?resources=chat",
    ):
        r = registry.get(path)
        assert r.status_code == 408, path
        assert sorted(r.json()) == ["away-1", "away-2"], path
    r = registry.get("/hyperty/url/away-1")
    assert (r.status_code, r.json()["status"]) == (408, "disconnected")
    # one live hyperty is enough for 200, and all of them are listed
    registry.put(f"{u}/away-3", hyperty(status="live", guid="guid-away"))
    r = registry.get(u)
    assert (r.status_code, sorted(r.json())) == (200, ["away-1", "away-2", "away-3"])


# --- keep-alive, update, delete, expiry, notifications -----------------------------------


def test_keep_alive_and_update_by_url(registry: Registry) -> None:
    u = "/hyperty/user/keeper%40example.com"
    registry.put(f"{u}/k-1", hyperty(status="created", expires=500))
    r = registry.put("/hyperty/url/k-1", {})
    assert (r.status_code, r.json()) == (200, {"statusChanged": "true", "message": "Keep alive"})
    assert registry.get("/hyperty/url/k-1").json()["status"] == "live"
    r = registry.put("/hyperty/url/k-1", {})
    assert r.json() == {"statusChanged": "false", "message": "Keep alive"}

    r = registry.put("/hyperty/url/k-1", {"descriptor": "new", "expires": 5000})
    assert (r.status_code, r.json()) == (
        200,
        {"statusChanged": "false", "message": "Hyperty updated"},
    )
    one = registry.get("/hyperty/url/k-1").json()
    assert (one["descriptor"], one["expires"], one["status"]) == ("new", 5000, "live")
    assert one["resources"] == ["chat", "voice"] and one["p2pHandler"] == "handler"
    r = registry.put("/hyperty/url/k-1", {"status": "busy", "userID": "someone-else"})
    assert r.json() == {"statusChanged": "true", "message": "Hyperty updated"}
    one = registry.get("/hyperty/url/k-1").json()
    assert (one["status"], one["userID"]) == ("busy", "keeper@example.com")
    r = registry.put("/hyperty/url/k-1", {"unknown": 1})
    assert r.json() == {"statusChanged": "false", "message": "Hyperty updated"}

    for body in ({}, {"descriptor": "x"}):
        r = registry.put("/hyperty/url/k-unknown", body)
        assert (r.status_code, r.json()) == (404, NOT_FOUND)
    assert registry.put("/hyperty/url/k-1", {"expires": "later"}).status_code == 400
    assert registry.put("/hyperty/url/k-1", content=b"[]").status_code == 400


def test_delete_is_a_soft_delete_reported_once_in_registry_updated(registry: Registry) -> None:
    u = "/hyperty/user/deleter%40example.com"
    registry.put(f"{u}/d-1", hyperty(status="live"))
    registry.put(f"{u}/d-2", hyperty(status="live"))
    registry.drain_updated()
    r = registry.delete(f"{u}/d-1")
    assert (r.status_code, r.json()) == (200, {"message": "Hyperty deleted"})
    r = registry.get("/hyperty/url/d-1")
    assert (r.status_code, r.json()["status"]) == (408, "disconnected")
    r = registry.get(u)
    assert (r.status_code, r.json()["d-1"]["status"]) == (200, "disconnected")
    updated = registry.get("/registry/updated")
    assert updated.status_code == 200
    assert updated.json()["d-1"]["status"] == "disconnected"
    assert "d-1" not in registry.get("/registry/updated").json()
    # deleting again answers the same and reports nothing new
    assert registry.delete(f"{u}/d-1").json() == {"message": "Hyperty deleted"}
    assert "d-1" not in registry.get("/registry/updated").json()
    for path in (f"{u}/d-9", "/hyperty/user/nobody%40example.com/d-2"):
        r = registry.delete(path)
        assert (r.status_code, r.json()) == (404, NOT_FOUND), path
    # a keep-alive brings it back
    assert registry.put("/hyperty/url/d-1", {}).json()["statusChanged"] == "true"
    assert registry.get("/hyperty/url/d-1").status_code == 200


def test_expired_hyperties_are_disconnected_and_reported(registry: Registry) -> None:
    u = "/hyperty/user/expiring%40example.com"
    registry.drain_updated()
    registry.put(f"{u}/e-read", hyperty(status="live", expires=1))
    registry.put(f"{u}/e-swept", hyperty(status="live", expires=1))
    registry.put(
        "/hyperty/user/expiring2%40example.com/e-dead", hyperty(status="disconnected", expires=0)
    )
    assert registry.get("/hyperty/url/e-read").status_code == 200
    # read after more than 1 s: disconnected (the Java server: the same read)
    r = until("e-read expired", lambda: registry.answer("/hyperty/url/e-read", 408), 10)
    assert r.json()["status"] == "disconnected"
    # e-swept is never read: the expiry sweep (EXPIRES=1 here) reports it
    seen: dict[str, Any] = {}

    def both_reported() -> bool:
        seen.update(registry.get("/registry/updated").json())
        return {"e-read", "e-swept"} <= set(seen)

    until("both expired hyperties in /registry/updated", both_reported, 15)
    assert seen["e-swept"]["status"] == "disconnected"
    assert "e-dead" not in seen  # it was disconnected from the start


# --- data objects ---------------------------------------------------------------------------


def test_data_objects(registry: Registry) -> None:
    base = "/hyperty/dataobject"
    for missing in (
        "schema",
        "name",
        "reporter",
        "resources",
        "dataSchemes",
        "status",
        "expires",
        "runtime",
    ):
        r = registry.put(f"{base}/do-x", data_object(**{missing: None}))
        assert (r.status_code, r.content) == (400, b""), missing
    assert registry.put(f"{base}/do-x", data_object(expires="x")).status_code == 400
    created = {"message": "Data object created"}
    assert registry.put(f"{base}/do-1", data_object(name="n-a", reporter="rep-a")).json() == created
    assert (
        registry.put(
            f"{base}/do-2", data_object(name="n-a", reporter="rep-b", resources=["video"])
        ).json()
        == created
    )
    r = registry.put(
        f"{base}/{q('comm://example.com/do-3')}",
        data_object(name="n-b", reporter="rep-a", expires=9999),
    )
    assert (r.status_code, r.json()) == (200, created)

    r = registry.get(f"{base}/url/do-1")
    assert r.status_code == 200
    assert len(r.json()) == 12 and r.json()["url"] == "do-1" and r.json()["name"] == "n-a"
    assert registry.get(f"{base}/url/{q('comm://example.com/do-3')}").json()["expires"] == 3600
    assert sorted(registry.get(f"{base}/name/n-a").json()) == ["do-1", "do-2"]
    assert sorted(registry.get(f"{base}/reporter/rep-a").json()) == [
        "comm://example.com/do-3",
        "do-1",
    ]
    assert sorted(registry.get(f"{base}/name/n-a/do?resources=video").json()) == ["do-2"]
    assert sorted(
        registry.get(f"{base}/reporter/rep-a/do?resources=chat&dataSchemes=comm").json()
    ) == ["comm://example.com/do-3", "do-1"]
    assert registry.get(f"{base}/url/do-2/do?resources=video").json().keys() == {"do-2"}
    for path in (
        f"{base}/url/nothing",
        f"{base}/name/nothing",
        f"{base}/reporter/nothing",
        f"{base}/name/n-a/do?resources=nothing",
        f"{base}/name/n-a/do",
        f"{base}/name/n-a/do?rr=1",
        f"{base}/url/do-1/do?resources=video",
        f"{base}/url/nothing/do?resources=video",  # 500 on the Java server
    ):
        r = registry.get(path)
        assert (r.status_code, r.json()) == (404, NOT_FOUND), path

    # keep-alive and update; a renamed object moves between names
    r = registry.put("/dataobject/url/do-1", {})
    assert (r.status_code, r.json()) == (200, {"message": "Keep alive"})
    r = registry.put("/dataobject/url/do-1", {"name": "n-c", "schema": "s2"})
    assert (r.status_code, r.json()) == (200, {"message": "data object updated"})
    assert registry.get(f"{base}/url/do-1").json()["schema"] == "s2"
    assert sorted(registry.get(f"{base}/name/n-a").json()) == ["do-2"]
    assert sorted(registry.get(f"{base}/name/n-c").json()) == ["do-1"]
    for body in ({}, {"schema": "s"}):
        r = registry.put("/dataobject/url/nothing", body)
        assert (r.status_code, r.json()) == (404, NOT_FOUND)
    assert registry.put("/dataobject/url/do-1", {"resources": "chat"}).status_code == 400

    # expiry: still 200, status disconnected, reported once
    registry.drain_updated()
    registry.put(f"{base}/do-short", data_object(name="n-short", expires=1))
    r = until("do-short expired", lambda: registry.answer(f"{base}/url/do-short", 200, DEAD), 10)
    assert registry.get(f"{base}/name/n-short").json()["do-short"]["status"] == "disconnected"
    until("do-short reported", lambda: "do-short" in registry.get("/registry/updated").json(), 10)


# --- the other routes, and errors -------------------------------------------------------------


def test_live_redirect_and_the_other_routes(registry: Registry) -> None:
    r = registry.get("/live")
    assert r.status_code == 200
    assert r.json()["status"] == "up" and r.json()["Storage_type"] == "ninefold"
    assert int(r.json()["Hyperties_stored"]) >= 1
    r = registry.http.get(registry.url + "/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (302, "/live")
    r = registry.get("/error")
    assert (r.status_code, r.json()) == (401, {"message": "Unauthorized."})
    r = registry.get("/throwexception")
    assert (r.status_code, r.json()) == (408, {"message": "Temporary Unavailable"})
    assert registry.get("/healthz").json()["status"] == "ok"
    for method, path in (
        ("GET", "/nothing"),
        ("POST", "/hyperty/user/a%40b.c/h"),
        ("DELETE", "/hyperty/url/h"),
        ("GET", "/hyperty/dataobject/other/x"),
        ("GET", "/hyperty/user/"),
    ):
        r = registry.call(method, path)
        assert (r.status_code, r.content) == (404, SPARK_404), (method, path)
        assert r.headers["content-type"].startswith("text/html")
    assert registry.get("/hyperty/url/x").headers["x-served-by"].startswith("registry-")


# --- the watch-fed cache ------------------------------------------------------------------


def replicas(registry: Registry) -> list[str]:
    """Each replica's own URL (not through the gateway)."""
    instances = [i for i in registry.cluster.status()["instances"] if i["service"] == "registry"]
    return sorted(f"http://{i['address']}:{next(iter(i['ports'].values()))}" for i in instances)


def test_a_write_through_one_replica_is_read_through_the_other(registry: Registry) -> None:
    a, b = replicas(registry)
    http = registry.http
    user, one = "/hyperty/user/cross%40example.com", "cross-1"

    def descriptor(url: str) -> str | None:
        r = http.get(f"{url}/hyperty/url/{one}")
        return r.json().get("descriptor") if r.status_code == 200 else None

    for writer, reader, text in ((a, b, "d1"), (b, a, "d2")):
        r = http.put(f"{writer}{user}/{one}", json=hyperty(descriptor=text))
        assert r.status_code == 200, r.text
        assert descriptor(writer) == text  # the writer reads its own write at once
        until(
            f"the other replica reads {text}", lambda r=reader, t=text: descriptor(r) == t, 5, 0.01
        )
    r = http.put(f"{a}/hyperty/url/{one}", json={"descriptor": "d3"})
    assert r.json()["message"] == "Hyperty updated"
    until("b reads the update", lambda: descriptor(b) == "d3", 5, 0.01)


def test_reads_go_through_to_the_store_until_the_watch_has_listed(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """registry_cache.CachedKv in this process, on the module's agent."""
    monkeypatch.syspath_prepend(str(REGISTRY.parent))
    from registry_cache import CachedKv
    from registry_kv import Kv

    from tests.helpers import eventually

    async def scenario() -> None:
        kv = Kv(registry.api)
        cache = CachedKv(kv, "registry/")
        await kv.put("registry/test/through", "1")
        assert not cache.usable
        item = await cache.get("registry/test/through")  # the copy is empty: from the store
        assert item is not None and item.value == "1"
        cache.start()
        await eventually(lambda: cache.usable, 10, "the watch's listing")
        assert [i.value for i in await cache.list("registry/test/")] == ["1"]

        async def value() -> str | None:
            item = await cache.get("registry/test/through")
            return None if item is None else item.value

        async def value_is(expected: str | None) -> bool:
            return await value() == expected

        await kv.put("registry/test/through", "2")  # by another process
        await eventually(lambda: value_is("2"), 5, "the watch to bring 2")
        written = cache.track()
        revision = await cache.put("registry/test/through", "3")
        assert await value() == "3"  # read-your-writes, before the watch says so
        await cache.settle(written)
        assert cache.revision >= revision
        assert await kv.delete("registry/test/through") is not None
        await eventually(lambda: value_is(None), 5, "the watch to bring the delete")

    asyncio.run(scenario())


def standalone(api: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """registry.py run by hand (not by an agent), on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REGISTRY), "127.0.0.1", str(port)],
        env={**os.environ, "NINEFOLD_API": api, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port)
    return proc, f"http://127.0.0.1:{port}"


def test_a_store_that_does_not_answer_is_503(registry: Registry) -> None:
    """Its cache never had a listing: the read went to the store (an empty
    cache would have answered 404)."""
    proc, url = standalone(f"http://127.0.0.1:{free_port()}", REGISTRY_STORE_WAIT="0.5")
    try:
        r = registry.http.get(url + "/hyperty/url/x")
        assert r.status_code == 503
        assert r.json()["message"].startswith("store unavailable: ")
        assert r.headers["retry-after"] == "1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_tokens_the_agent_refuses_are_502_and_NINEFOLD_TOKEN_is_sent(registry: Registry) -> None:
    """Last: it turns API tokens on for the module's cluster."""
    c = registry.cluster
    admin_file, read_file = c.root / "admin.token", c.root / "read.token"
    out = c.cli("token", "bootstrap", "--out", str(admin_file))
    assert out.returncode == 0, out.stderr
    admin_token = admin_file.read_text().strip()
    read = subprocess.run(
        [
            sys.executable,
            "-m",
            "ninefold",
            "token",
            "create",
            "--role",
            "read",
            "--out",
            str(read_file),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "NINEFOLD_SPEC": str(c.spec_path), "NINEFOLD_TOKEN": admin_token},
    )
    assert read.returncode == 0, read.stderr
    read_token = read_file.read_text().strip()

    # the agent's replicas have no token now: their writes are refused (their
    # reads come from what their watch, opened before, still delivers)
    r = registry.put("/hyperty/user/t%40example.com/t-0", hyperty())
    assert r.status_code == 502
    assert r.json()["message"].startswith("store refused the request: ")
    for token, put_status in ((read_token, 502), (admin_token, 200)):
        proc, url = standalone(registry.api, NINEFOLD_TOKEN=token)
        try:
            assert registry.http.get(url + "/hyperty/url/read-1").status_code == 200
            r = registry.http.put(url + "/hyperty/user/t%40example.com/t-1", json=hyperty())
            assert r.status_code == put_status, r.text
        finally:
            proc.terminate()
            proc.wait(10)
