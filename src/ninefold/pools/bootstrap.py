"""The script a new pool machine runs at first boot (its cloud user-data):
join the cluster with a one-use token, then run the agent.

For the lab the code is already on the machine (`python -m ninefold`, and
`join --start` starts the agent). For a cloud machine (`install`), the script
installs ninefold with pip first and runs the agent as a systemd service
(`join --no-start`, then `install-service --start`): docs/pools.md.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bootstrap:
    cluster: str
    node: str
    zone: str
    labels: Mapping[str, str]
    apis: Sequence[str]
    """host:port of the cluster's living nodes' APIs, tried in turn."""
    token: str
    """A one-use join token: the only secret in the script."""
    ca_hash: str
    store: bool = False
    data_dir: str | None = None
    ninefold: Sequence[str] = ("ninefold",)
    """How to run ninefold on the machine."""
    install: str | None = None
    """A pip requirement to install first (a cloud machine), e.g. `ninefold==0.9`."""
    join_rounds: int = 15
    """Rounds over `apis` before the script gives up, 2 s apart (a machine
    whose network comes up late, a node that restarts: about half a minute)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Exported before anything runs (the lab's id for the lab provider)."""


ADDRESS = "address=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n 1)"


def render(boot: Bootstrap) -> str:
    q = shlex.quote
    nf = " ".join(q(word) for word in boot.ninefold)
    join = [
        "join", '"$api"', "--token", q(boot.token), "--ca-hash", q(boot.ca_hash),
        "--name", q(boot.node), "--address", '"$address"', "--zone", q(boot.zone),
    ]  # fmt: skip
    for key, value in sorted(boot.labels.items()):
        join += ["--label", q(f"{key}={value}")]
    if boot.store:
        join.append("--store")
    cloud = boot.install is not None
    where = boot.data_dir or (f"/var/lib/ninefold/{boot.cluster}/{boot.node}" if cloud else None)
    if where:
        join += ["--data-dir", q(where)]
    if cloud:
        join.append("--no-start")
    lines = [
        "#!/bin/sh",
        f"# ninefold bootstrap: node {boot.node} of cluster {boot.cluster} (zone {boot.zone})",
        "set -u",
        *(f"export {k}={q(v)}" for k, v in sorted(boot.env.items())),
    ]
    if cloud:
        lines += [
            "python3 -m venv /opt/ninefold || exit 1",
            f"/opt/ninefold/bin/pip install --quiet {q(boot.install or '')} || exit 1",
            "ln -sf /opt/ninefold/bin/ninefold /usr/local/bin/ninefold",
        ]
    lines += [
        ADDRESS,
        'test -n "$address" || { echo "no address on this machine" >&2; exit 1; }',
        "joined=",
        f"for attempt in $(seq {boot.join_rounds}); do",
        f"  for api in {' '.join(q(a) for a in boot.apis)}; do",
        f"    if {nf} {' '.join(join)}; then joined=$api; break 2; fi",
        "  done",
        "  sleep 2",
        "done",
        'test -n "$joined" || { echo "could not join through any node" >&2; exit 1; }',
    ]
    if cloud:
        assert where is not None
        lines.append(
            f"{nf} install-service --spec {q(where + '/spec.yaml')} --node {q(boot.node)} "
            f"--data-dir {q(where)} --start"
        )
    return "\n".join(lines) + "\n"
