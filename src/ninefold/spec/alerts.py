"""`alerts:` rules on metrics and states, the channels notices go to, and the
shipped defaults (docs/alerts.md).

A rule's condition is one of a fixed set of kinds (`when: {node_down: {}}`,
`when: {disk: {over: 0.9}}`), each with its own parameters: no query
language. The leader evaluates them (decide/alerts.py) on facts it reads from
the store. The spec names where an SMTP password is (a file or a variable),
never the password: the spec is stored and shown.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from .backups import AbsolutePath, Command, PositiveDuration
from .duration import Duration
from .errors import Problem
from .secrets import refuse_password


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
        serialize_by_alias=True,
    )  # fmt: skip


def _name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value) or len(value) > 63:
        raise ValueError(
            f"{value!r} is not a valid name (lowercase letters, digits, '-' and '_', at most 63)"
        )
    return value


AlertName = Annotated[str, AfterValidator(_name)]


def _label(value: str) -> str:
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", value):
        raise ValueError(f"{value!r} is not a label name (letters, digits and '_')")
    return value


LabelName = Annotated[str, AfterValidator(_label)]

Severity = Literal["critical", "warning", "info"]

# --- conditions ------------------------------------------------------------------


class NodeDown(_Model):
    """A node of the spec whose lease is gone."""


class InstanceUnhealthy(_Model):
    """An instance failing its health check, failed, or in restart backoff."""

    service: str | None = None
    """Only this service's instances (default: every service)."""


class EventHappened(_Model):
    """An event of one of `kinds` in the journal: firing for `within` after it."""

    kinds: Annotated[list[str], Field(min_length=1)] = ["failover"]
    within: PositiveDuration = 300.0


class RestartLoop(_Model):
    """An instance restarted `restarts` times or more within `within`."""

    restarts: Annotated[int, Field(ge=1)] = 3
    within: PositiveDuration = 600.0


class VolumeLag(_Model):
    """A copy of a replicated volume behind its source by more than `over`."""

    over: PositiveDuration = 30.0


class BackupAge(_Model):
    """A backup target whose last good run is older than `factor` times its
    schedule's interval (or that never succeeded though it ran)."""

    factor: Annotated[float, Field(gt=1.0)] = 1.5


class DiskUsage(_Model):
    """The disk of a node's data directory fuller than `over` (a ratio)."""

    over: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9


class StoreQuorum(_Model):
    """Fewer live store members than a majority plus `margin`: with margin 1
    (the default) it fires while one more loss would stop the cluster."""

    margin: Annotated[int, Field(ge=0)] = 1


class CertExpiry(_Model):
    """A node's certificate expiring within `within`."""

    within: PositiveDuration = 14 * 86400.0


CONDITION_KINDS: dict[str, tuple[str, ...]] = {
    "node_down": ("node",),
    "instance_unhealthy": ("node", "service", "instance"),
    "failover": ("service", "node", "kind", "reason"),
    "restart_loop": ("node", "service", "instance"),
    "volume_lag": ("node", "service", "volume"),
    "backup_age": ("target",),
    "disk": ("node", "path"),
    "store_quorum": ("alive", "members"),
    "cert_expiry": ("node", "expires"),
}
"""Each condition kind and the labels (and text placeholders) its alerts carry,
besides `value`, `rule` and `severity`."""


def _bare_kind(value: Any) -> Any:
    """`when: node_down` is `when: {node_down: {}}`."""
    if isinstance(value, str):
        return {value: {}}
    return value


class Condition(_Model):
    """Exactly one kind, with its parameters."""

    node_down: NodeDown | None = None
    instance_unhealthy: InstanceUnhealthy | None = None
    failover: EventHappened | None = None
    restart_loop: RestartLoop | None = None
    volume_lag: VolumeLag | None = None
    backup_age: BackupAge | None = None
    disk: DiskUsage | None = None
    store_quorum: StoreQuorum | None = None
    cert_expiry: CertExpiry | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: ({} if v is None else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        set_ = [k for k in CONDITION_KINDS if getattr(self, k) is not None]
        if len(set_) != 1:
            got = f" (got {', '.join(set_)})" if set_ else ""
            raise ValueError(f"needs exactly one of {', '.join(CONDITION_KINDS)}{got}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in CONDITION_KINDS if getattr(self, k) is not None)

    @property
    def params(self) -> BaseModel:
        value: BaseModel = getattr(self, self.kind)
        return value


When = Annotated[Condition, BeforeValidator(_bare_kind)]


class RuleSpec(_Model):
    """A rule; a rule named like a shipped default changes only the keys it sets."""

    when: When | None = None
    for_: Duration | None = Field(None, alias="for")
    """How long the condition holds before the alert fires (default 0)."""
    severity: Severity | None = None
    labels: dict[LabelName, str] = {}
    text: str | None = None
    """What the notice says; `{node}`, `{service}`, `{value}`... are filled in."""
    notify_healed: bool | None = None
    """Also notify a failure that ended before `for:` (healed by ninefold itself)."""
    repeat: PositiveDuration | None = None
    """Notify again this often while it fires (default: alerts.repeat)."""
    channels: list[AlertName] | None = None
    """Where its notices go (default: every channel)."""
    enabled: bool = True


class Rule(_Model):
    """A rule with every key settled: the default merged with the spec's."""

    name: str
    when: Condition
    for_: float = 0.0
    severity: Severity = "warning"
    labels: dict[str, str] = {}
    text: str = ""
    notify_healed: bool = False
    repeat: float
    channels: tuple[str, ...] = ()


# --- channels --------------------------------------------------------------------


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    userinfo = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
    if ":" in userinfo:
        raise ValueError("the URL holds a password; the spec is stored and shown")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class _Retried(_Model):
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Tries after the first, with a backoff doubling from 1 s up to 60 s."""
    timeout: PositiveDuration = 10.0
    """Seconds one try may take."""


class WebhookSpec(_Retried):
    """JSON POSTed in Alertmanager's format (a list of alerts), so an
    Alertmanager (`.../api/v2/alerts`) can route the notices."""

    url: HttpUrl
    headers: dict[str, str] = {}


class EmailSpec(_Retried):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    from_: str = Field(alias="from")
    to: Annotated[list[str], Field(min_length=1)]
    starttls: bool = False
    """STARTTLS after connecting (port 587 usually)."""
    tls: bool = False
    """TLS from the start (port 465 usually)."""
    username: str | None = None
    password_file: AbsolutePath | None = None
    password_env: EnvName | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secret_here(cls, data: Any) -> Any:
        return refuse_password(data)

    @model_validator(mode="after")
    def _login(self) -> Self:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("password_file and password_env: one or the other")
        has_password = self.password_file is not None or self.password_env is not None
        if has_password != (self.username is not None):
            raise ValueError("username and a password (password_file or password_env) go together")
        if self.starttls and self.tls:
            raise ValueError("starttls and tls: one or the other")
        return self


class CommandSpec(_Retried):
    """A program run with the notice as JSON on its standard input."""

    argv: Command


class ChannelSpec(_Model):
    webhook: WebhookSpec | None = None
    email: EmailSpec | None = None
    command: CommandSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _argv_shortcut(cls, data: Any) -> Any:
        """`command: [page, --now]` is `command: {argv: [page, --now]}`."""
        if isinstance(data, dict) and isinstance(data.get("command"), list | str):
            return {**data, "command": {"argv": data["command"]}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        set_ = [k for k in ("webhook", "email", "command") if getattr(self, k) is not None]
        if len(set_) != 1:
            got = f" (got {', '.join(set_)})" if set_ else ""
            raise ValueError(f"a channel needs exactly one of webhook, email, command{got}")
        return self

    @property
    def kind(self) -> Literal["webhook", "email", "command"]:
        if self.webhook is not None:
            return "webhook"
        return "email" if self.email is not None else "command"


# --- defaults --------------------------------------------------------------------

DEFAULT_REPEAT = 4 * 3600.0

DEFAULT_RULES: dict[str, dict[str, Any]] = {
    "node-down": {
        "when": {"node_down": {}}, "for": 10.0, "severity": "critical",
        "text": "node {node} is down",
    },
    "instance-unhealthy": {
        "when": {"instance_unhealthy": {}}, "for": 30.0, "severity": "warning",
        "text": "{instance} of {service} on {node} is {value}",
    },
    "failover": {
        "when": {"failover": {}}, "severity": "warning", "notify_healed": True,
        "text": "{service} failed over: {reason}",
    },
    "restart-loop": {
        "when": {"restart_loop": {}}, "severity": "warning",
        "text": "{instance} of {service} on {node} restarted {value} times",
    },
    "volume-lag": {
        "when": {"volume_lag": {}}, "for": 60.0, "severity": "warning",
        "text": "copy of {service}/{volume} on {node} is {value}s behind",
    },
    "backup-age": {
        "when": {"backup_age": {}}, "severity": "warning",
        "text": "last good backup of {target} is {value}s old",
    },
    "disk-full": {
        "when": {"disk": {}}, "for": 300.0, "severity": "warning",
        "text": "disk of {path} on {node} is {value} full",
    },
    "store-quorum": {
        "when": {"store_quorum": {}}, "for": 10.0, "severity": "critical",
        "text": "store has {alive} of {members} members: quorum at risk",
    },
    "cert-expiry": {
        "when": {"cert_expiry": {}}, "severity": "warning",
        "text": "certificate of {node} expires {expires}",
    },
}  # fmt: skip
"""The shipped rules (docs/alerts.md#default-rules); `alerts.rules.NAME`
changes one, `enabled: false` turns it off, `defaults: false` drops them all."""


def placeholders(text: str) -> list[str]:
    """The `{name}` fields of `text`; raises ValueError if it is malformed."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


class AlertsSpec(_Model):
    defaults: bool = True
    """Whether the shipped rules are there (each can still be changed or turned off)."""
    repeat: PositiveDuration = DEFAULT_REPEAT
    """How often a firing alert is notified again (a rule's `repeat` overrides it)."""
    rules: dict[AlertName, RuleSpec] = {}
    channels: dict[AlertName, ChannelSpec] = {}

    def effective_rules(self) -> list[Rule]:
        """Every enabled rule, the defaults merged with the spec's keys. Rules
        with problems (see `problems`) are left out."""
        out: list[Rule] = []
        names = [*(DEFAULT_RULES if self.defaults else {}), *self.rules]
        for name in dict.fromkeys(names):
            rule = self._rule(name)
            if rule is not None:
                out.append(rule)
        return out

    def _rule(self, name: str) -> Rule | None:
        base: dict[str, Any] = dict(DEFAULT_RULES.get(name, {})) if self.defaults else {}
        given = self.rules.get(name)
        if given is not None:
            if not given.enabled:
                return None
            for key in given.model_fields_set - {"enabled"}:
                value = getattr(given, key)
                if value is not None:
                    base["for" if key == "for_" else key] = value
        if "when" not in base:
            return None
        when = base["when"]
        condition = when if isinstance(when, Condition) else Condition.model_validate(when)
        channels = base.get("channels")
        try:
            return Rule(
                name=name,
                when=condition,
                for_=base.get("for", 0.0),
                severity=base.get("severity", "warning"),
                labels=base.get("labels", {}),
                text=base.get("text") or f"{name}: {{value}}",
                notify_healed=base.get("notify_healed", False),
                repeat=base.get("repeat", self.repeat),
                channels=tuple(channels) if channels is not None else tuple(self.channels),
            )
        except ValueError:
            return None

    def problems(self) -> list[Problem]:
        """Rules without a condition, unknown channels, unknown placeholders."""
        out: list[Problem] = []
        for name, given in self.rules.items():
            loc = ("alerts", "rules", name)
            if given.when is None and not (self.defaults and name in DEFAULT_RULES):
                out.append(Problem(loc, "a rule that is not a default one needs when:"))
                continue
            for i, channel in enumerate(given.channels or []):
                if channel not in self.channels:
                    known = ", ".join(self.channels) or "alerts declares no channels"
                    out.append(
                        Problem((*loc, "channels", i), f"no channel named '{channel}' ({known})")
                    )
            rule = self._rule(name) if given.enabled else None
            if rule is None or given.text is None:
                continue
            allowed = {*CONDITION_KINDS[rule.when.kind], "value", "rule", "severity", *rule.labels}
            try:
                unknown = [p for p in placeholders(given.text) if p not in allowed]
            except ValueError as exc:
                out.append(Problem((*loc, "text"), f"cannot read the text: {exc}"))
                continue
            if unknown:
                out.append(
                    Problem(
                        (*loc, "text"),
                        f"unknown placeholder {{{unknown[0]}}} "
                        f"(a {rule.when.kind} rule has: {', '.join(sorted(allowed))})",
                    )
                )
        return out
