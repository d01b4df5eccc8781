"""The first-boot script of a pool machine (pools/bootstrap.py), run by sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ninefold.pools.bootstrap import Bootstrap, render

BOOT = Bootstrap(
    cluster="shop",
    node="web-3",
    zone="b",
    labels={"pool": "web", "tier": "front end"},
    apis=["10.0.0.11:7070", "10.0.0.12:7070"],
    token="nf1.abc.s3cr'et",
    ca_hash="sha256:ff",
)


@pytest.mark.process
def test_the_lab_script_joins_through_each_node_in_turn(tmp_path: Path) -> None:
    fake = tmp_path / "ninefold"
    calls = tmp_path / "calls"
    # a ninefold whose join fails at the first node and works at the second
    fake.write_text(f"""#!/bin/sh
printf '%s\\n' "$*" >> {calls}
case "$2" in 10.0.0.11:7070) exit 3;; esac
""")
    fake.chmod(0o755)
    boot = Bootstrap(
        **{**BOOT.__dict__, "ninefold": (str(fake),), "env": {"NINEFOLD_LAB_ID": "nf0001"}}
    )
    script = render(boot)
    assert "export NINEFOLD_LAB_ID=nf0001" in script
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["10.0.0.11:7070", "10.0.0.12:7070"]
    second = lines[1]
    assert "--token nf1.abc.s3cr'et" in second  # quoted for sh, passed whole
    assert "--label pool=web --label tier=front end" in second
    assert "--name web-3" in second and "--zone b" in second and "--no-start" not in second


@pytest.mark.process
def test_a_script_that_cannot_join_anywhere_fails(tmp_path: Path) -> None:
    boot = Bootstrap(**{**BOOT.__dict__, "ninefold": ("false",), "join_rounds": 2})
    result = subprocess.run(["sh", "-c", render(boot)], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 1
    assert "could not join through any node" in result.stderr


def test_a_cloud_machine_installs_ninefold_and_runs_the_agent_as_a_service() -> None:
    boot = Bootstrap(**{**BOOT.__dict__, "install": "ninefold==0.9", "store": True})
    script = render(boot)
    assert "pip install --quiet ninefold==0.9" in script
    assert "--store" in script and "--no-start" in script
    assert (
        "ninefold install-service --spec /var/lib/ninefold/shop/web-3/spec.yaml --node web-3 "
        "--data-dir /var/lib/ninefold/shop/web-3 --start"
    ) in script


def test_the_lab_provider_says_which_lab_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ninefold.pools.lab_provider import LabProvider
    from ninefold.pools.provider import ProviderError

    with pytest.raises(ProviderError, match=r"which lab\? set the pool's settings.lab"):
        LabProvider({}, environ={})
    monkeypatch.setenv("NINEFOLD_LAB_ROOT", str(tmp_path))
    provider = LabProvider({}, environ={"NINEFOLD_LAB_ID": "nf9999"})
    with pytest.raises(ProviderError, match="lab provider: no lab nf9999"):
        provider.zones()


def test_the_cloud_user_data_in_the_docs_is_what_ninefold_renders() -> None:
    boot = Bootstrap(
        cluster="shop", node="web-4", zone="eu-west-1b", labels={"pool": "web"},
        apis=["10.0.1.11:7070", "10.0.2.12:7070", "10.0.3.13:7070"],
        token="nf1.<id>.<secret>", ca_hash="sha256:<fingerprint>", install="ninefold==0.9.0",
    )  # fmt: skip
    docs = (Path(__file__).resolve().parents[2] / "docs" / "pools.md").read_text()
    assert f"```sh\n{render(boot)}```" in docs
