"""Every key of the store, relative to the cluster's namespace
(``/ninefold/<cluster>/``)::

    spec                       the desired state: the spec as YAML
    nodes/<node>               NodeRecord, under the node's lease (alive while it is)
    drain/<node>               present while the node is drained
    assign/<node>/<inst>       AssignmentRecord, written by the leader only
    status/<node>/<inst>       InstanceStatus, under the node's lease
    locks/leader               the leader lock (holder = node name)
    locks/active/<service>     the active lock of an active-passive service
    locks/vip/gateway          the gateway VIP's lock (holder = node name)
    vipcand/gateway/<node>     nodes whose gateway answers, under their lease
    events/<time>-<node>       Event, pruned by count
    restarts/<service>         token of the last restart asked for (rolling restart)
    moves/<instance>           node an operator asked the instance to move to
    switchover/<service>       {"to": node or null, "from": holder}, under a short lease
    kv/<key>                   the users' key-value store
    gateways/<node>            GatewayReport: in-flight counts to draining backends
    external/<node>            ExternalReport: the external endpoints' health as
                               that node sees them, under its lease
    volumes/<svc>/<vol>/<node> CopyRecord: the generation of that node's copy of a
                               replicated volume (kept when the node dies)
    tokens/<id>                TokenRecord (a hash of the secret, never the secret)
    tokens-bootstrapped        present once the first admin token was made
    certs/<node>               CertSerials: every certificate serial the node's agent used
    security/crl               the cluster's revocation list (PEM, signed by the CA)
    quarantine/<node>          QuarantineRecord: the node is quarantined (kept)
    backups/runs/<target>      BackupRun: a run in progress (the target's lock), by the leader
    backups/last/<target>      BackupResultRecord: how the target's last run ended
    backups/asked/<target>     a run asked for now (`ninefold backup run`)
    restores/<service>         RestoreRecord: a restore of one of its volumes (kept when done)
    alerts/state/<id>          AlertState: one alert (pending, firing, resolved), by the leader
    alerts/silences/<id>       Silence: matchers and an expiry
    alerts/acks/<alert id>     Ack: no repeat of that alert until it resolves or the ack expires
    alerts/facts/<node>        NodeFacts: the node's disk and certificate, under its lease
    availability/down/<svc>/<node>/<start_ms>   DownRecord: an outage the node's probes saw
    availability/probing/<svc>/<node>           ProbingRecord: when the node was probing it
    availability/traffic/<svc>/<node>/<hour_ms> TrafficRecord: its gateway's requests by minute
                               (all three pruned after 30 days by the node that wrote them)

Locks are named here and kept under ``locks/`` by the store's lock primitive
(`Store.try_lock`, `store.base.lock_key`).
"""

from __future__ import annotations

SPEC_KEY = "spec"
NODES = "nodes/"
DRAIN = "drain/"
ASSIGN = "assign/"
STATUS = "status/"
RESTARTS = "restarts/"
MOVES = "moves/"
SWITCHOVER = "switchover/"
KV = "kv/"
GATEWAYS = "gateways/"
EXTERNAL = "external/"
EVENTS = "events/"
VOLUMES = "volumes/"
POOLS = "pools/"
TOKENS = "tokens/"
BOOTSTRAPPED = "tokens-bootstrapped"
CERTS = "certs/"
CRL_KEY = "security/crl"
QUARANTINE = "quarantine/"
BACKUPS = "backups/"
BACKUP_RUNS = "backups/runs/"
BACKUP_LAST = "backups/last/"
BACKUP_ASKED = "backups/asked/"
RESTORES = "restores/"
AVAILABILITY = "availability/"
AVAILABILITY_DOWN = "availability/down/"
AVAILABILITY_PROBING = "availability/probing/"
AVAILABILITY_TRAFFIC = "availability/traffic/"
VIP_CANDIDATES = "vipcand/gateway/"
"""Nodes whose gateway answers, each under its lease: who may hold the gateway VIP."""

LEADER_LOCK = "leader"
"""The leader lock's name (its key: locks/leader)."""
GATEWAY_VIP_LOCK = "vip/gateway"
"""The gateway VIP's lock name (its key: locks/vip/gateway)."""


def active_lock(service: str) -> str:
    """The name of an active-passive service's active lock."""
    return f"active/{service}"


def node_key(node: str) -> str:
    return f"{NODES}{node}"


def drain_key(node: str) -> str:
    return f"{DRAIN}{node}"


def assign_key(node: str, instance: str) -> str:
    return f"{ASSIGN}{node}/{instance}"


def node_assignments(node: str) -> str:
    """The prefix of one node's assignments."""
    return f"{ASSIGN}{node}/"


def status_key(node: str, instance: str) -> str:
    return f"{STATUS}{node}/{instance}"


def node_statuses(node: str) -> str:
    """The prefix of the statuses of one node's instances."""
    return f"{STATUS}{node}/"


def gateway_key(node: str) -> str:
    return f"{GATEWAYS}{node}"


def external_key(node: str) -> str:
    return f"{EXTERNAL}{node}"


def vip_candidate_key(node: str) -> str:
    return f"{VIP_CANDIDATES}{node}"


def move_key(instance: str) -> str:
    return f"{MOVES}{instance}"


def switchover_key(service: str) -> str:
    return f"{SWITCHOVER}{service}"


def restart_key(service: str) -> str:
    return f"{RESTARTS}{service}"


def kv_key(key: str) -> str:
    return f"{KV}{key}"


def volume_copies(service: str, volume: str) -> str:
    """The prefix of every copy's record of one replicated volume."""
    return f"{VOLUMES}{service}/{volume}/"


def copy_key(service: str, volume: str, node: str) -> str:
    return f"{VOLUMES}{service}/{volume}/{node}"


def token_key(ident: str) -> str:
    return f"{TOKENS}{ident}"


def event_key(time: float, node: str) -> str:
    """Events sort by time: nanoseconds, zero-padded, then the writing node."""
    return f"{EVENTS}{int(time * 1e9):020d}-{node}"


def last_segment(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def pool_machines(pool: str) -> str:
    """Prefix of the machines a pool created (`MachineRecord`s, the leader's healer)."""
    return f"{POOLS}{pool}/machines/"


def machine_key(pool: str, node: str) -> str:
    return f"{pool_machines(pool)}{node}"


def created_key(pool: str) -> str:
    """The times of a pool's recent creations (its budget), a JSON list."""
    return f"{POOLS}{pool}/created"


def cert_key(node: str) -> str:
    return f"{CERTS}{node}"


def quarantine_key(node: str) -> str:
    return f"{QUARANTINE}{node}"


def backup_run_key(target: str) -> str:
    """`target`: a BackupTarget's key (decide/backup.py), e.g. `volume/db/data/offsite`."""
    return f"{BACKUP_RUNS}{target}"


def backup_last_key(target: str) -> str:
    return f"{BACKUP_LAST}{target}"


def backup_asked_key(target: str) -> str:
    return f"{BACKUP_ASKED}{target}"


def restore_key(service: str) -> str:
    return f"{RESTORES}{service}"


def down_key(service: str, node: str, start: float) -> str:
    """An outage of a service's route as one node's probes saw it, by its first failure."""
    return f"{AVAILABILITY_DOWN}{service}/{node}/{int(start * 1000):013d}"


def node_downs(service: str, node: str) -> str:
    """The prefix of one node's outages of one service, oldest first."""
    return f"{AVAILABILITY_DOWN}{service}/{node}/"


def probing_key(service: str, node: str) -> str:
    return f"{AVAILABILITY_PROBING}{service}/{node}"


def traffic_key(service: str, node: str, hour: float) -> str:
    """One node's gateway's requests of a service in the hour starting at `hour`."""
    return f"{AVAILABILITY_TRAFFIC}{service}/{node}/{int(hour * 1000):013d}"


ALERTS = "alerts/"
ALERT_STATES = "alerts/state/"
SILENCES = "alerts/silences/"
ACKS = "alerts/acks/"
ALERT_FACTS = "alerts/facts/"


def alert_state_key(ident: str) -> str:
    return f"{ALERT_STATES}{ident}"


def silence_key(ident: str) -> str:
    return f"{SILENCES}{ident}"


def ack_key(alert: str) -> str:
    return f"{ACKS}{alert}"


def alert_facts_key(node: str) -> str:
    return f"{ALERT_FACTS}{node}"
