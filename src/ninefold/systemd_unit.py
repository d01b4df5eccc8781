"""The systemd unit that runs one node's agent on a real machine.

Pure: the spec, the node and the paths in, the unit file's text out
(`ninefold install-service` writes it). What the unit promises:

- `Type=notify`: the agent says READY=1 once it serves (store quorum reached,
  API and gateway listening), and STATUS= lines while it waits, so `systemctl
  status` shows why a node is not up yet. Start waits as long as the store
  needs (`TimeoutStartSec=infinity`): a machine that boots before the others
  of its store is not a failed start.
- Stop drains as `ninefold down` does: SIGTERM to the agent alone
  (`KillMode=mixed`), which moves its gateway VIP away, drains and stops its
  services and its store member; whatever is left after `TimeoutStopSec` is
  killed.
- Capabilities: only what this node's spec needs, in both the bounding and the
  ambient set (so a dedicated `User=` gets them too, and root gets no more):
  CAP_NET_ADMIN and CAP_NET_RAW for floating addresses (`ip address` and
  gratuitous ARP), CAP_NET_BIND_SERVICE for a port below 1024.
- Logs to the journal, tagged `ninefold-<node>`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ninefold.spec import ClusterSpec, NodeSpec

STOP_TIMEOUT_S = 90
"""TimeoutStopSec: the agent's drain (DRAIN_TIMEOUT), its services' and its
store member's stop timeouts, with room to spare."""
RESTART_DELAY_S = 2
"""RestartSec after the agent died."""
FILE_LIMIT = 65536
"""LimitNOFILE: the gateway holds two sockets per proxied connection."""


def unit_name(node: str) -> str:
    return f"ninefold-{node}.service"


def capabilities(spec: ClusterSpec, node: NodeSpec) -> list[str]:
    """The capabilities `node`'s agent needs for its spec, and no more."""
    caps = []
    has_vip = (spec.gateway.enabled and spec.gateway.vip is not None) or any(
        service.vip is not None for service in spec.services.values()
    )
    if has_vip:
        caps += ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    if any(port < 1024 for _, port in spec.listen_ports(node)):
        caps.append("CAP_NET_BIND_SERVICE")
    return caps


def agent_argv(python: str, spec_path: Path, node: str, data_dir: Path) -> list[str]:
    return [
        python, "-m", "ninefold", "agent",
        "--spec", str(spec_path), "--node", node, "--data-dir", str(data_dir),
    ]  # fmt: skip


def render_unit(
    spec: ClusterSpec,
    node: str,
    spec_path: Path,
    data_dir: Path,
    python: str,
    user: str | None = None,
    environment: Sequence[tuple[str, str]] = (),
) -> str:
    """The unit file's text. `python` is the interpreter ninefold is installed
    for (the wheel's environment); paths must be absolute."""
    me = spec.node(node)
    for path in (spec_path, data_dir, Path(python)):
        if not path.is_absolute():
            raise ValueError(f"{path}: the unit needs absolute paths")
    caps = " ".join(capabilities(spec, me))
    exec_start = shlex.join(agent_argv(python, spec_path, node, data_dir))
    lines = [
        "# Written by `ninefold install-service`; see docs/install.md.",
        "[Unit]",
        f"Description=ninefold agent, node {node} of cluster {spec.cluster}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        # Relative paths in the spec (a service's ./command) are the spec's directory's.
        f"WorkingDirectory={spec_path.parent}",
    ]
    if user:
        lines.append(f"User={user}")
    lines += [f"Environment={shlex.quote(f'{key}={value}')}" for key, value in environment]
    lines += [
        "TimeoutStartSec=infinity",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "Restart=on-failure",
        f"RestartSec={RESTART_DELAY_S}",
        f"LimitNOFILE={FILE_LIMIT}",
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier=ninefold-{node}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
