"""`logging:` where agents forward their log lines and their instances' output
(syslog, RFC 5424 over TCP, TLS as an option; docs/logs.md)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .errors import Problem

FACILITY_NAMES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", *(f"local{n}" for n in range(8)),
)  # fmt: skip
"""Syslog facilities (RFC 5424 section 6.2.1), in code order."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_address(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError otherwise."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not host:port (e.g. logs.example.com:6514)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return host, port


def _address(value: str) -> str:
    split_address(value)
    return value.strip()


def _app_name(value: str) -> str:
    if not re.fullmatch(r"[\x21-\x7e]{1,48}", value):
        raise ValueError(
            f"{value!r} is not an APP-NAME (1 to 48 printable ASCII characters, no spaces)"
        )
    return value


def _facility(value: str) -> str:
    if value not in FACILITY_NAMES:
        raise ValueError(f"{value!r} is not a facility ({', '.join(FACILITY_NAMES)})")
    return value


class SyslogSpec(_Model):
    address: Annotated[str, AfterValidator(_address)]
    """The receiver, `host:port` (rsyslog's imtcp, syslog-ng, Logstash, Promtail...)."""
    tls: bool = False
    """TLS on the connection (RFC 5425): the receiver's certificate is checked."""
    ca: str | None = None
    """The CA file the receiver's certificate is checked against (with tls);
    default: the system's trusted CAs."""
    app_name: Annotated[str, AfterValidator(_app_name)] = "ninefold"
    facility: Annotated[str, AfterValidator(_facility)] = "daemon"
    instances: bool = True
    """Forward the instances' output too, not only the agent's own records."""
    queue: int = Field(default=10_000, ge=10, le=1_000_000)
    """Messages held while the receiver is away; more are dropped and counted."""

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]


class LoggingSpec(_Model):
    syslog: SyslogSpec | None = None
    """Forward every agent's log records (and its instances' output) to a syslog receiver."""

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        syslog = self.syslog
        if syslog is not None and syslog.ca is not None and not syslog.tls:
            out.append(Problem(("logging", "syslog", "ca"), "needs tls: true"))
        return out
