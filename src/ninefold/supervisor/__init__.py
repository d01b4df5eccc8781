"""Running this node's processes: start, watch, restart with backoff, stop, log.

The reconciler drives one ``SupervisedProcess`` per instance; ``run_hook`` runs
on_promote / on_demote; ``LeftoverRegistry.cleanup`` runs once when an agent
starts, before anything else is spawned.
"""

from ninefold.supervisor.leftovers import LeftoverRecord, LeftoverRegistry
from ninefold.supervisor.logs import tail
from ninefold.supervisor.process import (
    ProcessEvent,
    ProcessSpec,
    SupervisedProcess,
    describe_exit,
    run_hook,
)
from ninefold.supervisor.restart import RestartDecision, RestartPolicy, RestartTracker

__all__ = [
    "LeftoverRecord",
    "LeftoverRegistry",
    "ProcessEvent",
    "ProcessSpec",
    "RestartDecision",
    "RestartPolicy",
    "RestartTracker",
    "SupervisedProcess",
    "describe_exit",
    "run_hook",
    "tail",
]
