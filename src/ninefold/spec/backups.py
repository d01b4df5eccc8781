"""`backups:` where restic repositories are, and when the cluster itself (an
etcd snapshot and the CA certificate) is backed up; `backup:` on a volume says
when that volume is. docs/spec.md#backups lists the keys.

The spec only names where a repository's password and credentials are (a file
or environment variables), never the secrets: the spec is stored in the
cluster, shown by the API and written into events, and losing a restic
password loses every snapshot it encrypts.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol, Self

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .duration import Duration
from .errors import Loc, Problem
from .secrets import refuse_password

# --- field types -----------------------------------------------------------------


def _repository_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value) or len(value) > 63:
        raise ValueError(
            f"{value!r} is not a valid repository name (lowercase letters, digits and '-', "
            "at most 63)"
        )
    return value


RepositoryName = Annotated[str, AfterValidator(_repository_name)]

CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _cron(value: str) -> str:
    """Five fields (minute hour day month weekday) or an `@daily`-like alias,
    read in UTC. Six-field (seconds) and random (`R`) forms are refused: the
    first is rarely meant, the second would make the schedule differ from one
    leader to the next."""
    text = " ".join(value.split())
    fields = text.split(" ")
    random = any(t.lower() == "r" for f in fields for t in re.split(r"[,/-]", f))
    alias = len(fields) == 1 and text.lower() in CRON_ALIASES
    if not (alias or len(fields) == 5) or random or not croniter.is_valid(text):
        raise ValueError(
            f"{value!r} is not a cron expression (five fields: minute hour day month "
            "weekday, e.g. '0 3 * * *', or @hourly, @daily, @weekly, @monthly, @yearly)"
        )
    return text


Cron = Annotated[str, AfterValidator(_cron)]


def next_cron(expression: str, after: float) -> float:
    """The first time strictly after `after` (Unix seconds) that `expression` names, in UTC."""
    start = datetime.fromtimestamp(after, UTC)
    return croniter(expression, start).get_next(float)


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute)]


RESTIC_VARIABLES = frozenset(
    {
        "RESTIC_REPOSITORY",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
    }
)
"""Set for restic from the repository itself: a variable of that name passed
on would change which repository or password restic uses."""


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} is not an environment variable name")
    if value in RESTIC_VARIABLES:
        raise ValueError(f"cannot be {value}: it is set for restic from the repository")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]

_URL_SCHEMES = ("sftp:", "s3:")


def _repository_url(value: str) -> str:
    if not (value.startswith("/") or value.startswith(_URL_SCHEMES)):
        raise ValueError(
            f"{value!r} is not a restic repository this supports (an absolute path, "
            "sftp:user@host:/path or s3:http(s)://host/bucket/path)"
        )
    _, sep, rest = value.partition("://")
    userinfo = rest.split("/", 1)[0].rpartition("@")[0] if sep else ""
    if ":" in userinfo:
        raise ValueError(
            "url holds a password; name it in credentials_file or credentials_env instead"
        )
    return value


RepositoryUrl = Annotated[str, AfterValidator(_repository_url)]


def _words(value: Any) -> Any:
    """A string is split like a shell would; a YAML number in a list is text
    (`[ssh, -p, 2222]`)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r} into words: {exc}") from None
    if isinstance(value, list):
        return [
            str(w) if isinstance(w, int | float) and not isinstance(w, bool) else w for w in value
        ]
    return value


Command = Annotated[list[str], BeforeValidator(_words), Field(min_length=1)]
"""A command line: a list of words, or one string split like a shell would."""


def _subset(value: str) -> str:
    """restic's `--read-data-subset`: `n/t`, `x%` or a size like `500M`."""
    ok = False
    if match := re.fullmatch(r"(\d+)/(\d+)", value):
        ok = 1 <= int(match[1]) <= int(match[2])
    elif match := re.fullmatch(r"(\d+(?:\.\d+)?)%", value):
        ok = 0 < float(match[1]) <= 100
    else:
        ok = bool(re.fullmatch(r"[1-9]\d*[kKmMgGtT]?", value))
    if not ok:
        raise ValueError(
            f"{value!r} is not a subset restic reads (n/t like 1/5, a percentage like 5%, "
            "or a size like 500M)"
        )
    return value


# --- models ------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Scheduled(Protocol):
    """When something runs: every `every` seconds, or at the times of `cron`
    (UTC); exactly one is set. The decider (decide/backup.py) turns it and the
    last start into the next due time."""

    @property
    def every(self) -> float | None: ...
    @property
    def cron(self) -> str | None: ...


def _one_schedule(what: str, every: float | None, cron: str | None) -> None:
    if (every is None) == (cron is None):
        got = " (got both)" if every is not None else ""
        raise ValueError(f"{what} needs exactly one of every, cron{got}")


class Schedule(_Model):
    """A bare schedule: what `check:` of a repository is built on."""

    every: PositiveDuration | None = None
    cron: Cron | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        _one_schedule("a schedule", self.every, self.cron)
        return self


NonNegative = Annotated[int, Field(ge=0)]


class KeepSpec(_Model):
    """restic's keep rules (`restic forget --keep-*`), applied after each run.
    A snapshot any rule keeps is kept."""

    last: NonNegative | None = None
    hourly: NonNegative | None = None
    daily: NonNegative | None = None
    weekly: NonNegative | None = None
    monthly: NonNegative | None = None

    @model_validator(mode="after")
    def _keeps_something(self) -> Self:
        rules = self.rules()
        if not rules:
            raise ValueError("needs at least one rule: last, hourly, daily, weekly, monthly")
        if not any(rules.values()):
            raise ValueError("would keep no snapshot at all (every rule is 0)")
        return self

    def rules(self) -> dict[str, int]:
        """The rules set, in restic's order: `{"last": 7, "daily": 7}`."""
        names = ("last", "hourly", "daily", "weekly", "monthly")
        return {name: n for name in names if (n := getattr(self, name)) is not None}

    def restic_args(self) -> list[str]:
        """`--keep-last 7 --keep-daily 7 ...` for `restic forget`."""
        return [arg for name, n in self.rules().items() for arg in (f"--keep-{name}", str(n))]


class RepositoryCheck(Schedule):
    """`restic check` on its own schedule; with `read_data_subset`, it also
    reads that part of the data back (`--read-data-subset`)."""

    read_data_subset: Annotated[str, AfterValidator(_subset)] | None = None


class RepositorySpec(_Model):
    url: RepositoryUrl
    """The restic repository: `/local/path`, `sftp:user@host:/path` or
    `s3:http(s)://host/bucket/path`."""
    password_file: AbsolutePath | None = None
    password_env: EnvName | None = None
    credentials_file: AbsolutePath | None = None
    """`KEY=VALUE` lines given to restic's environment (e.g. AWS_ACCESS_KEY_ID)."""
    credentials_env: Annotated[list[EnvName], Field(min_length=1)] | None = None
    """Variables of the agent's environment passed on to restic."""
    ssh_command: Command | None = None
    """sftp only: the ssh program and its options, without the destination
    (`ssh -i /etc/ninefold/backup_key -o BatchMode=yes`); the user, host and
    port come from `url`."""
    check: RepositoryCheck | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secret_here(cls, data: Any) -> Any:
        return refuse_password(data)

    @model_validator(mode="after")
    def _one_source_each(self) -> Self:
        if (self.password_file is None) == (self.password_env is None):
            got = " (got both)" if self.password_file is not None else ""
            raise ValueError(f"a repository needs exactly one of password_file, password_env{got}")
        if self.credentials_file is not None and self.credentials_env is not None:
            raise ValueError("credentials_file and credentials_env: one or the other")
        if self.ssh_command is not None and self.kind != "sftp":
            raise ValueError(f"ssh_command is for sftp repositories, not {self.kind}")
        return self

    @property
    def kind(self) -> Literal["local", "sftp", "s3"]:
        if self.url.startswith("sftp:"):
            return "sftp"
        return "s3" if self.url.startswith("s3:") else "local"

    def password_source(self) -> tuple[str, str]:
        """("file", path) or ("env", name): two repositories with the same
        source share a password."""
        if self.password_file is not None:
            return ("file", self.password_file)
        return ("env", self.password_env or "")


class VolumeBackupSpec(_Model):
    """`backup:` on a volume: taken on the node that holds the active copy."""

    repository: RepositoryName
    every: PositiveDuration | None = None
    cron: Cron | None = None
    keep: KeepSpec

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        _one_schedule("a backup", self.every, self.cron)
        return self


class ClusterBackupSpec(_Model):
    """The cluster itself: an etcd snapshot and the CA certificate."""

    repository: RepositoryName
    every: PositiveDuration | None = None
    cron: Cron | None = None
    keep: KeepSpec
    ca_key: RepositoryName | None = None
    """Another repository, keyed separately, that the CA key goes into; without
    it the CA key is not backed up (a restored cluster then cannot sign)."""

    @field_validator("ca_key")
    @classmethod
    def _ca_key_elsewhere(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("repository"):
            raise ValueError(
                f"must be another repository than '{value}' (the CA key needs one keyed separately)"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        _one_schedule("a backup", self.every, self.cron)
        return self


class BackupsSpec(_Model):
    repositories: dict[RepositoryName, RepositorySpec] = {}
    cluster: ClusterBackupSpec | None = None

    def problems(self) -> list[Problem]:
        """Repository names that name nothing; a CA key repository that
        shares the cluster repository's place or password."""
        out: list[Problem] = []
        cluster = self.cluster
        if cluster is None:
            return out
        loc = ("backups", "cluster")
        if (p := self.reference_problem((*loc, "repository"), cluster.repository)) is not None:
            out.append(p)
        if cluster.ca_key is None:
            return out
        if (p := self.reference_problem((*loc, "ca_key"), cluster.ca_key)) is not None:
            out.append(p)
            return out
        main = self.repositories.get(cluster.repository)
        vault = self.repositories[cluster.ca_key]
        if main is not None and main.url == vault.url:
            msg = f"repository '{cluster.ca_key}' has the same url as '{cluster.repository}'"
            out.append(Problem((*loc, "ca_key"), msg))
        elif main is not None and main.password_source() == vault.password_source():
            msg = (
                f"repository '{cluster.ca_key}' has the same password as "
                f"'{cluster.repository}' (the CA key needs its own)"
            )
            out.append(Problem((*loc, "ca_key"), msg))
        return out

    def reference_problem(self, loc: Loc, name: str) -> Problem | None:
        """A problem at `loc` if `name` is not a declared repository."""
        if name in self.repositories:
            return None
        known = ", ".join(self.repositories)
        where = f"repositories: {known}" if known else "backups declares no repositories"
        return Problem(loc, f"no repository named '{name}' ({where})")
