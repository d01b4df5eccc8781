"""Whether a node's agent is confirmed dead, so that the leader may revoke its
lease at once rather than wait for the store to expire it.

Waiting costs the lease TTL (2 s), and when the dead node's etcd member was
the store's raft leader, the election too (1-2 s) plus the lease extension
the new raft leader grants every lease (the election timeout, 1 s): the
active lock of every service active there then outlives the node by 4.5-5 s
(bench/failover_time.py).

The proof: the node's API server answered on its port while the node held
this very lease, and its kernel now refuses connections on that port. The
agent's API serves for as long as the agent does (it is closed only when the
agent stops, after its services), so a refusal under the same lease means the
agent process that held the lease is gone, and every process it started went
with it (PR_SET_PDEATHSIG, supervisor/process.py). What is never taken for
dead:

- a frozen agent (SIGSTOP, a hung machine): its kernel still completes the
  connection, which waits in the listen backlog;
- a partitioned or powered-off node: nothing answers, the probe times out;
- a node whose API server never answered under its current lease (not up
  yet, could not bind, or never started serving: a connection the kernel
  completed is not an answer): there is nothing to compare a refusal with.

A firewall that *rejects* (TCP reset or ICMP port unreachable) rather than
drops traffic to the API port would look like a dead agent: the operations
guide says so.

A VIP the dead agent held stays on its interface until its kernel lifetime
runs out (vip.py: renewed after each lease renewal). The lease of a node that
held one is revoked only once that lifetime, and a second for the kernel's own
check, have passed since the first refusal, which came after its last
renewal: two VIP holders are never possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Probe = Literal["refused", "accepted", "no-answer"]
"""What a TCP connection to the node's API port got."""

VIP_CHECK_SLACK = 1.0
"""Seconds the kernel may take past an address's lifetime to remove it (the
IPv4 lifetime check runs on a rounded-up timer)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    revoke: bool
    why: str
    retry_at: float | None = None
    """When to probe again (a VIP holder whose address may still be up)."""


def judge(
    probe: Probe,
    accepted_under_lease: bool,
    first_refused: float | None,
    now: float,
    holds_vip: bool,
    vip_lifetime: float,
) -> Verdict:
    """Whether to revoke the node's lease now.

    `accepted_under_lease`: its API server answered on its port while the
    node held the lease we would revoke. `first_refused`: when a probe under that
    lease was first refused (None if this one is the first)."""
    if probe != "refused":
        return Verdict(False, f"API port {probe}: the agent may be alive")
    if not accepted_under_lease:
        return Verdict(False, "its API never answered under this lease: no proof")
    if holds_vip:
        since = now if first_refused is None else first_refused
        clear_at = since + vip_lifetime + VIP_CHECK_SLACK
        if now < clear_at:
            return Verdict(False, "its VIP may still be on its interface", retry_at=clear_at)
    return Verdict(True, "API port refused connections: the agent is gone")
