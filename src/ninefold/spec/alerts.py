"""`alerts:` rules on metrics and states, the channels notices go to, and the
shipped defaults (docs/alerts.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlertsSpec(_Model):
    """Filled in by the alerts work (issue 16)."""
