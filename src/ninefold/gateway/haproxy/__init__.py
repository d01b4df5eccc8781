"""The haproxy gateway engine (``gateway.engine: haproxy``).

config.py renders haproxy.cfg and plans runtime changes (pure); runtime.py
talks to HAProxy's master CLI; metrics.py turns its counters into the
engine's; engine.py runs HAProxy under the supervisor.
"""

from ninefold.gateway.haproxy.config import (
    Reload,
    RuntimePlan,
    SlotMap,
    allocate_slots,
    checks_for,
    plan_runtime,
    render,
)
from ninefold.gateway.haproxy.engine import (
    HaproxyEngine,
    HaproxyReloadError,
    haproxy_available,
    haproxy_binary,
)

__all__ = [
    "HaproxyEngine",
    "HaproxyReloadError",
    "Reload",
    "RuntimePlan",
    "SlotMap",
    "allocate_slots",
    "checks_for",
    "haproxy_available",
    "haproxy_binary",
    "plan_runtime",
    "render",
]
