"""`pools:` machines ninefold owns: created through a provider, fenced and
replaced when they die (docs/pools.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ninefold import defaults

from .duration import Duration


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


def _pool_name(value: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9]*", value) or len(value) > 40:
        raise ValueError(
            f"{value!r} is not a valid pool name (lowercase letters and digits, "
            "starting with a letter, at most 40: its machines are named <pool>-<n>)"
        )
    return value


PoolName = Annotated[str, AfterValidator(_pool_name)]

POOL_LABEL = "pool"
"""The label every node a pool creates carries: its pool's name."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PoolBudget(_Model):
    """At most `replacements` machines created per `window`: a lost zone or a
    broken image must not cause a storm of creations."""

    replacements: int = Field(default=defaults.POOL_BUDGET_REPLACEMENTS, ge=1)
    window: PositiveDuration = defaults.POOL_BUDGET_WINDOW


class PoolSpec(_Model):
    provider: Literal["lab", "libcloud"]
    """`lab`: namespaces of the running lab; `libcloud`: a cloud through Apache Libcloud."""
    settings: dict[str, Any] = {}
    """Provider settings (libcloud: driver, region, endpoint, credentials_file...).
    Never credentials themselves: those come from a file or the environment."""
    template: dict[str, Any] = {}
    """The machine template: image, size and provider-specific options."""
    count: int = Field(ge=1)
    zones: list[str] = Field(min_length=1)
    """Zones the machines are spread over (the provider's zone names)."""
    store_members: int = Field(default=0, ge=0)
    """How many of its machines are members of the embedded store."""
    replace_after: PositiveDuration = defaults.POOL_REPLACE_AFTER
    """How long a machine may be dead before it is fenced and replaced."""
    boot_timeout: PositiveDuration = defaults.POOL_BOOT_TIMEOUT
    """A machine created but not joined after this long is destroyed and made again."""
    rogue_grace: PositiveDuration = defaults.POOL_ROGUE_GRACE
    """A machine with the cluster's tags that the store does not know is
    destroyed after this long."""
    labels: dict[str, str] = {}
    """Labels its nodes carry, besides `pool: <name>`."""
    data_dir: str | None = None
    """Where its machines keep their data (default: by cluster and node name)."""
    install: str | None = None
    """What a cloud machine's bootstrap installs with pip (default: this
    version of ninefold, `ninefold==<version>`); the lab installs nothing."""
    budget: PoolBudget = Field(default_factory=PoolBudget)

    @model_validator(mode="after")
    def _members_within_count(self) -> Self:
        if self.store_members > self.count:
            raise ValueError(
                f"store_members ({self.store_members}) cannot exceed count ({self.count})"
            )
        if len(set(self.zones)) != len(self.zones):
            raise ValueError("zones are listed twice")
        if POOL_LABEL in self.labels:
            raise ValueError(f"labels: {POOL_LABEL!r} is set by the pool itself")
        return self

    def node_labels(self, pool: str) -> dict[str, str]:
        return {**self.labels, POOL_LABEL: pool}


def pool_of(labels: Mapping[str, str]) -> str | None:
    """The pool a node belongs to (its `pool` label), None for a hand-written node."""
    return labels.get(POOL_LABEL)


def machine_name(pool: str, number: int) -> str:
    return f"{pool}-{number}"


def machine_number(pool: str, node: str) -> int | None:
    prefix = f"{pool}-"
    rest = node[len(prefix) :] if node.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None
