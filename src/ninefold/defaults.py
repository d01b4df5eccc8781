"""Every default port and timing of ninefold, in one place.

Durations are seconds (float). The spec may override most of them; the names
here are what the docs refer to (docs/operations.md lists them).
"""

from __future__ import annotations

import os
from pathlib import Path

# --- ports (per node; a node may override each one in the spec) -----------
API_PORT = 7070
"""The agent's REST API and dashboard."""
STORE_CLIENT_PORT = 2379
"""etcd client port of an embedded store member."""
STORE_PEER_PORT = 2380
"""etcd peer port of an embedded store member."""
GATEWAY_HTTP_PORT = 8080
"""The gateway's HTTP listener."""
MESH_PORT = 8444
"""The gateway's mesh listener (mutual TLS from other nodes' gateways to this
node's instances of `route.mtls` services), with `security.tls`."""
VOLUME_PORT = 8445
"""Where an agent receives replicated volumes' transfers (rsync through the
agent, mutual TLS with `security.tls`)."""
INSTANCE_PORT_RANGE = (20000, 29999)
"""Named ports of service instances are allocated from this range."""

# --- membership and failure detection ----------------------------------------
LEASE_TTL = 2.0
"""Node lease TTL. 2 s is the smallest etcd grants with its default timing."""
KEEPALIVE_INTERVAL = LEASE_TTL / 4
"""How often an agent renews its lease."""
SELF_FENCE_AFTER = LEASE_TTL * 0.7
"""An agent that has not had a lease renewal acknowledged for this long,
counted from when the acknowledged request was *sent*, demotes its actives.
The store cannot expire the lease earlier than LEASE_TTL after that send, so
the demotion always finishes before another node can take over."""
STORE_REQUEST_TIMEOUT = 1.0
"""Timeout of one store request (get, put, txn, keepalive)."""
RESYNC_INTERVAL = 10.0
"""Level-triggered loops re-read the whole state at least this often, so a
missed watch event heals itself (watches make them react at once; this only
bounds how long a lost event can go unnoticed, and costs control traffic)."""

# --- health checks -------------------------------------------------------------
CHECK_INTERVAL = 0.5
CHECK_TIMEOUT = 1.0
CHECK_FALL = 3
CHECK_RISE = 2
CHECK_START_GRACE = 10.0
"""Failures during this time after a start do not count until the first success."""

# --- restart policy -------------------------------------------------------------
RESTART_BACKOFF = 0.2
"""First delay before restarting a crashed process; doubles each time."""
RESTART_BACKOFF_MAX = 5.0
RESTART_LIMIT = 5
"""Restarts allowed within RESTART_WINDOW before the instance is failed on
this node and the leader places it elsewhere."""
RESTART_WINDOW = 60.0

# --- stopping ----------------------------------------------------------------------
STOP_SIGNAL = "SIGTERM"
STOP_TIMEOUT = 5.0
"""Time between the stop signal and SIGKILL."""
HOOK_TIMEOUT = 10.0
"""Limit for on_promote / on_demote commands."""

# --- logs and journal ----------------------------------------------------------------
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
EVENTS_KEEP = 1000
"""The event journal keeps this many newest events."""
EVENTS_RETRY_FOR = 15.0
"""An event the store could not take (no quorum for a moment) is retried this long."""

# --- embedded store -------------------------------------------------------------------
STORE_QUORUM_REPORT_EVERY = 2.0
"""While there is no quorum, the agent says so this often."""
STORE_SYNC_EVERY = 10.0
"""Seconds between an agent's looks at the store's members, to take members
that joined (or left) since it started as its endpoints."""
STORE_HEARTBEAT_MS = 200
"""etcd's raft heartbeat. Twice etcd's default: peer heartbeats are most of a
quiet cluster's traffic, and detection of a dead store leader is governed by
the election timeout, which keeps etcd's default."""
STORE_ELECTION_TIMEOUT_MS = 1000


def data_root() -> Path:
    """Where agents keep their data unless told otherwise."""
    env = os.environ.get("NINEFOLD_DATA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/ninefold")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ninefold"


def data_dir(cluster: str, node: str) -> Path:
    """Default data directory of one agent, keyed so agents can share a machine."""
    return data_root() / cluster / node


# --- preflight checks (`ninefold doctor`) -------------------------------------------
DOCTOR_DISK_FAIL_BYTES = 1 << 30
"""`ninefold doctor` fails when the filesystem of the data directory has less
free space than this (1 GiB): the store's database, the logs and the
instances' volumes are written there, and etcd stops taking writes when its
disk is full."""
DOCTOR_DISK_WARN_BYTES = 5 << 30
"""`ninefold doctor` warns when that filesystem has less free space than this (5 GiB)."""
DOCTOR_CLOCK_FAIL = 1.0
"""`ninefold doctor` fails when another node's clock differs from this one's
by more than this (seconds): half a node lease (LEASE_TTL), and token expiries
and the event journal's times are compared across machines."""
DOCTOR_CLOCK_WARN = 0.25
"""`ninefold doctor` warns above this clock difference (seconds)."""
DOCTOR_PROBE_TIMEOUT = 1.0
"""Seconds each request `ninefold doctor` makes to an agent may take."""


# --- gateway ---------------------------------------------------------------------------
GATEWAY_CONNECT_TIMEOUT = 1.0
GATEWAY_CLIENT_TIMEOUT = 30.0
"""Idle time allowed on a client connection (keep-alive included)."""
GATEWAY_SERVER_TIMEOUT = 30.0
"""Time allowed for a backend to start answering."""
GATEWAY_RETRIES = 2
"""Other instances a request may be retried on when that is safe."""
DRAIN_TIMEOUT = 10.0
"""Longest wait for in-flight requests before a draining instance is stopped."""
STICKY_COOKIE = "NINEFOLD_STICKY"
BACKEND_DOWN_FOR = 1.0
"""After a refused or reset connection, a backend gets no new requests for this
long (passive check), unless it is the only one left."""

EVENTS_WRITE_WAIT = 0.3
"""Seconds a decision waits for its journal line to be written before going on
(the write goes on in the background)."""

# --- floating addresses (VIPs) ---------------------------------------------------
VIP_GARP_COUNT = 5
"""Gratuitous ARPs sent when a node takes a VIP (keepalived sends 5 too)."""
VIP_GARP_INTERVAL = 0.2
"""Seconds between them: a switch or client that missed one catches the next."""
VIP_ADDRESS_LIFETIME = 1
"""Seconds the kernel keeps a VIP on the interface unless the agent refreshes it.
The agent refreshes it after each acknowledged lease renewal, so an agent that
dies or hangs loses the address (about 1.0-1.25 s later, the kernel checks
lifetimes once a second) before its lease (TTL 2 s) can expire anywhere else."""
VIP_CHECK_INTERVAL = 0.5
"""How often a node checks that its own gateway answers (keepalived's track_script)."""
VIP_CHECK_TIMEOUT = 0.5
VIP_CHECK_FALL = 2
VIP_CHECK_RISE = 2
VIP_PREFER_GRACE = 1.0
"""Seconds a node waits for a more preferred, eligible node to take a free VIP
before it campaigns itself."""

# --- gateway TLS and access policy -------------------------------------------------
GATEWAY_HTTPS_PORT = 8443
"""The gateway's TLS listener when `gateway.tls` is set (same port on every node)."""
GATEWAY_TLS_HANDSHAKE_TIMEOUT = 10.0
"""Longest TLS handshake a client may take (builtin engine)."""
GATEWAY_TLS_CHECK_INTERVAL = 1.0
"""How often the gateway looks whether its certificate files changed (a rotated
node certificate is served from the next connection on, without a restart)."""
ACCESS_JWT_LEEWAY = 30.0
"""Clock skew allowed when checking a token's exp, nbf and iat."""
ACCESS_ROLES_CLAIM = "authorities"
"""The claim holding a token's roles (seed 000's layout, Spring Security's)."""
ACCESS_SUBJECT_HEADER = "X-Subject"
"""The request header that passes a verified token's `sub` on to the instance."""
ACCESS_HAPROXY_ARRAY_MAX = 16
"""The haproxy engine reads at most this many entries of the roles claim and
of `aud` (HAProxy 2.6's json_query cannot iterate an array)."""
ACCESS_TOKEN_CACHE = 4096
"""Tokens a gateway remembers as verified, per access policy: a token seen
again skips the signature check (its exp, nbf and iat are checked again)."""


# --- inner timings and sizes of the parts (not set by the spec) ---------------------

# supervisor/process.py
LOG_CHECK_INTERVAL = 10.0
"""How often the log file of a running child is checked against LOG_MAX_BYTES."""

# gateway/haproxy/config.py
HAPROXY_MIN_SLOTS = 4
"""Server slots rendered per backend at least; a reload grows them to twice
the instance count when a service outgrows its slots."""
HAPROXY_HARD_STOP_AFTER = 60.0
"""After a reload, the old HAProxy worker closes connections still open this long."""
HAPROXY_RUNTIME_TIMEOUT = 2.0
"""Limit of one request to HAProxy's master CLI."""
HAPROXY_START_TIMEOUT = 10.0
"""Longest wait for HAProxy's first worker."""
HAPROXY_RELOAD_TIMEOUT = 10.0
"""Longest wait for the new worker of a reload."""
HAPROXY_STATS_INTERVAL = 0.2
"""How often the counters behind ``inflight`` and ``snapshot`` are read."""

# gateway/builtin/pool.py
GATEWAY_POOL_MAX_IDLE = 64
"""Idle keep-alive connections kept per backend; more are closed on release."""
GATEWAY_POOL_IDLE_TIMEOUT = 5.0
"""An idle pooled connection is closed after this long (before most backends'
own keep-alive timeout, so a reused connection is rarely a stale one)."""
GATEWAY_POOL_REUSE_UNSAFE_MAX_IDLE = 1.0
"""A request that is not safe to retry (POST, PATCH) only reuses a connection
idle for less than this; otherwise it opens a fresh one."""
GATEWAY_RETRY_BODY_MAX = 64 * 1024
"""Request bodies up to this size are kept until the response starts, so the
request can be retried on another backend; a longer one is streamed only."""
GATEWAY_SWEEP_EVERY = 1.0
"""How often idle pooled connections and expired down marks are cleared."""
GATEWAY_LISTEN_BACKLOG = 1024
"""listen(2) backlog of the builtin gateway's sockets: connections the kernel
queues before the event loop accepts them (a burst at failover)."""

# store/etcd.py
STORE_FAILBACK_AFTER = 10.0
"""Seconds after failing over to another member before trying the first
(this node's own) member again."""


# --- replicated volumes ----------------------------------------------------------
FRESHER_COPY_GRACE = 1.0
"""A standby with an older copy leaves a free active lock this long to the
standby with the freshest copy, then campaigns all the same."""
MIRROR_DEBOUNCE = 0.05
"""Changes seen within this long of each other go out in one transfer."""
MIRROR_RESYNC_INTERVAL = 5.0
"""A mirror transfers at least this often even without a change it saw (a
standby that came back, a change inotify missed)."""
MIRROR_RETRY_MAX = 2.0
"""Longest wait between retries of a failed transfer (it is retried until it succeeds)."""
MIRROR_TRANSFER_TIMEOUT = 300.0
"""One transfer taking longer is stopped and retried."""
MIRROR_FLUSH_TIMEOUT = 30.0
"""A planned handover (switchover, drain, move) waits this long at most for the
last changes to reach the standbys."""
MIRROR_ROUND_WAIT = 1.0
"""A round waits this long for its transfers; one still running then (a slow
or hung target, a first copy) goes on alone, and the next rounds serve the
other targets meanwhile."""
MIRROR_SEED_TIMEOUT = 6 * 3600.0
"""A first copy (seeding) may take this long before it is stopped and resumed."""
MIRROR_PUBLISH_INTERVAL = 1.0
"""A mirror writes each copy's record (generation, lag, bytes behind) to the
store at most this often, at once when a copy completes its first transfer or
a handover; under constant writes that is one put per copy per second."""
MIRROR_VERIFY_INTERVAL = 3600.0
"""Default of a volume's `verify`: how often each copy is compared with the
source by checksum."""
MIRROR_TRACKED_CHANGES = 100_000
"""Changed paths a mirror remembers for bytes behind and for telling a real
divergence from a change not yet sent; beyond that both are left unknown."""
REPLICATED_SOURCE_CHECK = 2.0
"""How often an instance of a replicated service asks whether its node should
be the source of its replicated volumes (instance 0's, or the lowest ordinal
with a complete copy)."""
SEED_WAIT_ALONE = 30.0
"""An instance waiting for its first copy starts without one after this long
if no living node has a complete copy to send it."""

# --- node pools (docs/pools.md) ---------------------------------------------------------
POOL_REPLACE_AFTER = 10.0
"""A pool machine dead this long is fenced and replaced (lab default; minutes for clouds)."""
POOL_BOOT_TIMEOUT = 120.0
"""A created machine that has not joined after this long is destroyed and made again."""
POOL_ROGUE_GRACE = 60.0
"""A tagged machine the store does not know is destroyed after this long."""
POOL_BUDGET_REPLACEMENTS = 3
POOL_BUDGET_WINDOW = 600.0
"""At most this many machines created per pool per window."""
POOL_LIST_INTERVAL = 5.0
"""How often the leader lists a pool's machines at the provider (rogue machines)."""
HEAL_INTERVAL = 1.0
"""How often the leader decides on its pools."""

# --- history (docs/observability.md#history) ----------------------------------------------
HISTORY_INTERVAL = 10.0
"""How often each agent samples its own series for the dashboard's plots."""
HISTORY_KEEP = 24 * 3600.0
"""How far back each agent's history goes (8640 samples at 10 s)."""

# --- config templates (docs/templates.md) ---------------------------------------------------
TEMPLATE_WAIT = 0.2
"""`wait.min` of a template: the state must stay quiet this long before it renders
(`wait.max`, when not set, is 4 times it)."""
TEMPLATE_COMMAND_TIMEOUT = 30.0
"""A template's reload command still running after this long is killed and failed."""
