"""What agents write to the store: one pydantic model per kind of record
(their keys: state/keys.py)."""

from __future__ import annotations

import json
import time
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls.model_validate_json(raw)


class NodeRecord(Record):
    name: str
    address: str
    zone: str
    region: str
    api_port: int
    volume_port: int = 0
    """Where its agent receives replicated volumes (0: not listening)."""
    pid: int
    started: float = Field(default_factory=time.time)
    version: str = ""


class AssignmentRecord(Record):
    service: str
    instance: str
    node: str
    avoid: list[str] = []
    generation: str = ""
    """What the instance runs (see decide/plan.py generation); a change restarts it."""


InstanceState = Literal["starting", "seeding", "running", "backoff", "failed", "stopped", "standby"]
Health = Literal["starting", "healthy", "unhealthy", "none"]
Role = Literal["replica", "active", "standby"]


class InstanceStatus(Record):
    service: str
    instance: str
    node: str
    address: str
    ports: dict[str, int] = {}
    state: InstanceState = "starting"
    health: Health = "starting"
    role: Role = "replica"
    fencing_token: int | None = None
    draining: bool = False
    """Being stopped: gateways send it no new requests, in-flight ones finish."""
    generation: str = ""
    """The assignment generation this process was started for."""
    restarts: int = 0
    pid: int | None = None
    since: float = Field(default_factory=time.time)
    detail: str = ""

    @property
    def serving(self) -> bool:
        """Running and healthy (or unchecked), i.e. fit to receive traffic."""
        return self.state == "running" and self.health in ("healthy", "none")


class GatewayReport(Record):
    """What one node's gateway tells instances being drained."""

    node: str
    draining: dict[str, int] = {}
    """backend key -> requests or connections still in flight to it"""


class EndpointHealth(Record):
    """One external endpoint as one node's checks see it."""

    service: str
    endpoint: str
    """As the spec writes it: `host:port`."""
    address: str = ""
    """What its host resolved to on that node ("": not resolved, use the host)."""
    health: Literal["starting", "healthy", "unhealthy"] = "starting"
    since: float = Field(default_factory=time.time)
    detail: str = ""
    """The last check's outcome, e.g. `connect 10.0.0.5:5432: ConnectionRefusedError`."""


class ExternalReport(Record):
    """Every external endpoint's health as one node sees it (decide/external.py)."""

    node: str
    endpoints: list[EndpointHealth] = []


class Event(Record):
    time: float = Field(default_factory=time.time)
    kind: str
    subject: str
    reason: str = ""
    node: str = ""
    data: dict[str, Any] = {}

    def line(self) -> str:
        millis = int(self.time * 1000)
        stamp = time.strftime("%H:%M:%S", time.localtime(millis // 1000))
        frac = f".{millis % 1000:03d}"
        extra = " ".join(f"{k}={v}" for k, v in self.data.items())
        parts = [f"{stamp}{frac}", self.kind, self.subject, self.reason, extra]
        return "  ".join(p for p in parts if p)


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class CopyRecord(Record):
    """One node's copy of a replicated volume, as its last completed transfer
    left it. Its generation (token, seq) orders copies by freshness: the
    fencing token of the active that sent it, then that active's transfer
    count."""

    node: str
    source: str
    """The node whose active sent it (equal to `node` for the active's own copy)."""
    token: int
    seq: int
    synced_at: float
    """Wall-clock time the transfer that made this copy started: everything the
    active had written before then is in it."""
    bytes_sent: int = 0
    seconds: float = 0.0
    """Bytes and seconds of the last completed transfer."""
    completed_at: float = 0.0
    """Wall-clock time the last transfer into this copy completed (0: never)."""
    behind_since: float = 0.0
    """Wall-clock time of the oldest change at the source not yet in this copy,
    as the source last saw it (0: none). Lag = now - behind_since."""
    bytes_behind: int = 0
    """Size of the files changed at the source and not yet in this copy."""
    seeding: bool = False
    """The copy is being made for the first time (its instance waits for it)."""
    seed_done: int = 0
    seed_total: int = 0
    """Bytes of the first transfer done so far, out of how many (rsync's count)."""
    verified_at: float = 0.0
    """When a checksum comparison with the source last completed (0: never)."""
    diverged: int = 0
    """Files the last checksum comparison found different though unchanged at
    the source (repaired by that comparison; an event named them)."""
    error: str = ""
    """Why the last transfer to this copy failed ("" when it succeeded)."""
    written_at: float = Field(default_factory=time.time)
    """When the source wrote this record."""

    @property
    def generation(self) -> tuple[int, int]:
        return (self.token, self.seq)

    @property
    def complete(self) -> bool:
        """Whether the copy holds a whole transfer (a source's own copy always does)."""
        return self.source == self.node or self.completed_at > 0

    def lag(self, now: float) -> float:
        """Seconds the oldest change not in this copy has waited (0: in sync)."""
        return max(0.0, now - self.behind_since) if self.behind_since else 0.0


class MachineRecord(Record):
    """A machine a node pool created, as the leader's healer tracks it
    (`pools/<pool>/machines/<node>`)."""

    pool: str
    node: str
    machine_id: str
    """The provider's id of the machine."""
    zone: str
    created_at: float
    phase: Literal["creating", "joined", "fenced"]
    store_member: bool = False
    fenced_at: float | None = None


class CertSerials(Record):
    """The serial numbers of the certificates a node has used (`certs/<node>`):
    what a quarantine revokes. Written at its join and by its agent."""

    node: str
    serials: list[str] = []
    """Hexadecimal (JSON numbers lose the high bits of a 159-bit serial)."""


class QuarantineRecord(Record):
    """A quarantined node (`quarantine/<node>`): its certificates revoked, its
    tokens deleted, drained; the healer fences, removes and replaces it."""

    node: str
    at: float
    reason: str = ""
    serials: list[str] = []
    tokens: list[str] = []
    """Ids of the tokens deleted."""
    pool: str | None = None
    fenced_at: float | None = None
    """When the provider confirmed its power-off (None: not fenced, or not in a pool)."""


class BackupRun(Record):
    """A backup, cluster backup or repository check in progress
    (`backups/runs/<target>`): written by the leader when it starts one on
    `node`, deleted by that node when it ends. While it exists and `node` is
    alive, the target runs nowhere else."""

    target: str
    run_id: str
    node: str
    started_at: float
    why: str = ""
    retry_of: str | None = None


class BackupResultRecord(Record):
    """How a target's last run ended (`backups/last/<target>`)."""

    target: str
    run_id: str
    node: str
    started_at: float
    finished_at: float
    ok: bool
    error: str = ""
    snapshot_id: str = ""
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    data_added: int = 0
    """Bytes the run added to the repository (after deduplication)."""
    total_bytes: int = 0
    """Bytes the run read."""
    kept: int = 0
    removed: int = 0
    """Snapshots the retention policy kept and removed after the run."""
    last_good_at: float | None = None
    """When the last successful run of the target ended (this one or an earlier one)."""


class RestoreRecord(Record):
    """A restore of a service's volume from a snapshot (`restores/<service>`).

    While `state` is `stopping`, `restoring` or `failed` the leader places none
    of the service's instances (none may run on the data being replaced, nor
    on copies a failed restore left different). Each node
    in `nodes` (those holding a copy of the volume) restores its own copy once
    no instance of the service runs anywhere, and adds itself to `done`; the
    last one sets `state` to `done` (or `failed`, and a node down for
    RESTORE_NODE_GRACE counts as failed), and the service is placed again once
    it is done or cancelled."""

    service: str
    volume: str
    repository: str
    snapshot: str
    """The snapshot's full id."""
    nodes: list[str]
    state: Literal["stopping", "restoring", "done", "failed", "cancelled"] = "stopping"
    done: list[str] = []
    errors: dict[str, str] = {}
    """node -> why its restore failed."""
    asked_at: float
    finished_at: float | None = None
    run_id: str

    @property
    def holds(self) -> bool:
        """Whether the service must stay stopped: also after a failed restore,
        whose copies may differ (restore again, or cancel)."""
        return self.state in ("stopping", "restoring", "failed")

    @property
    def in_progress(self) -> bool:
        return self.state in ("stopping", "restoring")


class DownRecord(Record):
    """An outage of a service's route as one node's probes saw it, through
    its own gateway (agent/probes.py; decide/availability.py merges the
    nodes'). Times are when the probes were sent."""

    service: str
    node: str
    first_failed: float
    last_failed: float
    """The newest failed probe when it was written (while `first_ok` is None)."""
    last_ok: float | None = None
    """The last good probe before it; None: the node began probing during it."""
    first_ok: float | None = None
    """The first good probe after it; None: still down, or the node stopped probing."""
    error: str = ""
    """What the first failed probe saw: `503`, `connection refused`, `timed out`."""
    failed_probes: int = 1


class ProbingRecord(Record):
    """When one node probed one service's route: the spans of its probing
    (start, end), the last one rewritten every PROBING_WRITE_EVERY while it
    goes on (`open`)."""

    service: str
    node: str
    target: str = ""
    """What it probes, e.g. `http://127.0.0.1:8080/web`."""
    spans: list[tuple[float, float]] = []
    open: bool = False
    written_at: float = 0.0


class TrafficRecord(Record):
    """One node's gateway's client requests of one service in one hour, by
    minute (the node's own probes taken out); after two hours, the hour's
    sums alone (`whole`)."""

    service: str
    node: str
    hour: float
    minutes: dict[int, tuple[int, int]] = {}
    """Minute of the hour -> (answered, failed: a 5xx or the gateway's own error)."""
    whole: tuple[int, int] | None = None
    """The hour's (answered, failed) once its minutes were summed up."""

    def buckets(self) -> list[tuple[float, float, int, int]]:
        """(start, seconds, answered, failed) of each counted minute, or of the hour."""
        if self.whole is not None:
            return [(self.hour, 3600.0, *self.whole)]
        return [(self.hour + 60 * m, 60.0, a, f) for m, (a, f) in sorted(self.minutes.items())]
