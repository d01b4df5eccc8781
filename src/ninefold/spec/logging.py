"""`logging:` where agents forward their log lines and their instances' output
(syslog, RFC 5424 over TCP, TLS as an option; docs/logs.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoggingSpec(_Model):
    """Filled in by the logs work (issue 16)."""
