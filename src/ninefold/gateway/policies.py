"""The access policies a gateway enforces, with their keys loaded.

The keys are read in a thread (blocking file I/O), once per policy and again
only when the spec changes the policy or a key file changes on disk; a policy
whose keys could not be read refuses every request (503) and is tried again at
each later update until it loads. Each failure, and the recovery after it, is
reported once (one line naming the service and the file) to the event journal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from ninefold.gateway.access import AccessPolicy
from ninefold.security.tls import paths_stamp
from ninefold.spec import ClusterSpec
from ninefold.spec.access import AccessSpec

log = logging.getLogger("ninefold.gateway")


class Journal(Protocol):
    async def record(self, kind: str, subject: str, reason: str = "") -> object: ...


class AccessPolicies:
    """Loaded policies by service, kept in step with the spec."""

    def __init__(self) -> None:
        self.policies: dict[str, AccessPolicy] = {}
        self._stamps: dict[str, tuple[int, ...]] = {}

    async def update(
        self, spec: ClusterSpec, journal: Journal | None = None
    ) -> dict[str, AccessPolicy]:
        """The policies of `spec`'s routed services, loading what changed."""
        wanted = {
            name: svc.access
            for name, svc in spec.services.items()
            if svc.access is not None and svc.route is not None
        }
        for name in [n for n in self.policies if n not in wanted]:
            del self.policies[name]
            self._stamps.pop(name, None)
        stamps = await asyncio.to_thread(_stamps, wanted)
        for name, access in wanted.items():
            old = self.policies.get(name)
            fresh = old is not None and old.spec == access and old.error is None
            if fresh and self._stamps.get(name) == stamps[name]:
                continue
            policy = await asyncio.to_thread(AccessPolicy.load, name, access)
            self.policies[name] = policy
            self._stamps[name] = stamps[name]
            await _report(name, old, policy, journal)
        return dict(self.policies)


async def _report(
    name: str, old: AccessPolicy | None, new: AccessPolicy, journal: Journal | None
) -> None:
    if new.error is not None:
        if old is not None and old.error == new.error:
            return  # said already
        log.error("access policy of %s unavailable, requests refused (503): %s", name, new.error)
        if journal is not None:
            await journal.record("access-failed", name, new.error)
        return
    log.info("access policy of %s: %d key(s) loaded", name, len(new.keys))
    if old is not None and old.error is not None and journal is not None:
        await journal.record("access-loaded", name, f"{len(new.keys)} key(s)")


def _stamps(wanted: Mapping[str, AccessSpec]) -> dict[str, tuple[int, ...]]:
    return {name: paths_stamp(*access.jwt.key_files()) for name, access in wanted.items()}
