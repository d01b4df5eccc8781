"""What instances and hooks inherit of the agent's environment: not the
backup repositories' passwords and credentials, nor any RESTIC_* variable."""

from __future__ import annotations

import pytest

from ninefold.supervisor import process


def test_hidden_and_restic_variables_do_not_reach_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "_HIDDEN_ENV", set())
    monkeypatch.setenv("BACKUP_PW", "secret")
    monkeypatch.setenv("S3_SECRET", "also secret")
    monkeypatch.setenv("RESTIC_PASSWORD", "restic's")
    monkeypatch.setenv("KEEP_ME", "yes")
    process.hide_from_children(["BACKUP_PW", "S3_SECRET"])
    env = process.child_environment({"NINEFOLD_ROLE": "active"})
    assert env["KEEP_ME"] == "yes" and env["NINEFOLD_ROLE"] == "active"
    assert not {"BACKUP_PW", "S3_SECRET", "RESTIC_PASSWORD"} & set(env)
