"""From the spec's `backups:` to the driver's terms: a repository to open, a
keep policy, and the tags and host a target's snapshots carry.

Every snapshot ninefold takes is tagged `ninefold`, `cluster=<name>`, and
`target=<key>` (`volume/db/data/offsite`, `cluster/offsite`); its host is
`<cluster>/<target>` rather than the node's name, so that restic finds the
previous snapshot of a volume (and sends only the changes) whichever node
holds the active copy this time."""

from __future__ import annotations

from pathlib import Path

from ninefold.backup.repository import Repository
from ninefold.backup.restic import KeepPolicy
from ninefold.spec.backups import KeepSpec, RepositorySpec

TAG = "ninefold"
CA_KEY_TARGET = "ca-key"
"""The target key of the CA key's snapshots, in `ca_key`'s repository."""


def repository_of(spec: RepositorySpec) -> Repository:
    return Repository(
        url=spec.url,
        password_file=Path(spec.password_file) if spec.password_file else None,
        password_env=spec.password_env,
        credentials_file=Path(spec.credentials_file) if spec.credentials_file else None,
        credentials_env=tuple(spec.credentials_env or ()),
        ssh_command=tuple(spec.ssh_command or ()),
    )


def keep_policy(keep: KeepSpec) -> KeepPolicy:
    """restic takes no rule of 0: a rule of 0 is left out."""
    rules = {name: n for name, n in keep.rules().items() if n > 0}
    return KeepPolicy(**rules)


def target_tags(cluster: str, target: str) -> list[str]:
    return [TAG, f"cluster={cluster}", f"target={target}"]


def target_host(cluster: str, target: str) -> str:
    """restic's `--host` for a target: one word (no spaces), stable across nodes."""
    return f"{cluster}/{target}".replace(" ", "_")
