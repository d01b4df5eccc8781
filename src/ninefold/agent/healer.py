"""The leader's healer: reads what the pools' machines are doing, asks
decide/heal.py what to do, and does it through the providers, one step at a
time, every step an event. Only the agent holding the leader lock acts, and
every write it makes is guarded by that lock's fencing token.

What it keeps in the store (state/keys.py): one record per machine a pool
created (`pools/<pool>/machines/<node>`), and the times of the pool's recent
creations (`pools/<pool>/created`, the budget). What it keeps in memory: since
when each node has been dead, and since when each rogue machine has been seen
(a new leader starts counting again: later, never earlier).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from ninefold import __version__, defaults
from ninefold.agent.journal import EventJournal
from ninefold.agent.leader import LeaderLoop
from ninefold.decide.heal import (
    Action,
    Create,
    DestroyRogue,
    Fence,
    Forget,
    HealView,
    Hold,
    Listed,
    PoolMachine,
    RemoveMember,
    heal,
    unknown_machines,
)
from ninefold.pools.bootstrap import Bootstrap, render
from ninefold.pools.provider import (
    CLUSTER_TAG,
    NODE_TAG,
    POOL_TAG,
    MachineRequest,
    Provider,
    ProviderError,
)
from ninefold.security.ca import fingerprint
from ninefold.security.tokens import new_token
from ninefold.spec import ClusterSpec, dump_spec
from ninefold.spec.pools import PoolSpec
from ninefold.state.keys import (
    LEADER_LOCK,
    NODES,
    QUARANTINE,
    SPEC_KEY,
    created_key,
    last_segment,
    machine_key,
    node_key,
    pool_machines,
    quarantine_key,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import MachineRecord, QuarantineRecord
from ninefold.state.tokens import store_token
from ninefold.store.base import Compare, Delete, LockHold, Put, Store, StoreError, lock_key

log = logging.getLogger("ninefold.healer")

JOIN_TOKEN_TTL = 900.0


def open_provider(name: str, spec: PoolSpec) -> Provider:
    """The pool's provider (ProviderError when it cannot be set up)."""
    if spec.provider == "lab":
        from ninefold.pools.lab_provider import LabProvider

        return LabProvider(spec.settings)
    from ninefold.pools.libcloud_provider import LibcloudProvider

    provider: Provider = LibcloudProvider(spec.settings)
    return provider


class Healer:
    def __init__(
        self, store: Store, journal: EventJournal, leader: LeaderLoop, ca_file: Path | None
    ) -> None:
        self._store = store
        self._journal = journal
        self._leader = leader
        self._ca_file = ca_file
        self._dead_since: dict[str, float] = {}
        self._unknown_since: dict[str, float] = {}
        self._listed: dict[str, tuple[Listed, ...]] = {}
        self._listed_at: dict[str, float] = {}
        self._providers: dict[str, Provider] = {}
        self._said: dict[str, str] = {}
        """pool or machine -> the last hold or failure said (said once)."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(defaults.HEAL_INTERVAL)
            hold = self._leader.hold
            if hold is None:
                self._dead_since.clear()
                self._unknown_since.clear()
                continue
            try:
                await self.step(hold)
            except StoreError as exc:
                log.debug("heal step put off: %s", exc)
            except Exception:  # a bug here must not stop the agent: said, tried again
                log.exception("heal step failed")
                await asyncio.sleep(5.0)

    # -- reading -----------------------------------------------------------------------
    async def _view(
        self,
        spec: ClusterSpec,
        alive: frozenset[str],
        records: list[MachineRecord],
        quarantined: frozenset[str] = frozenset(),
    ) -> HealView:
        now = time.time()
        for node in spec.nodes:
            if node.name in alive:
                self._dead_since.pop(node.name, None)
            else:
                self._dead_since.setdefault(node.name, now)
        machines = [
            PoolMachine(r.pool, r.node, r.machine_id, r.zone, r.created_at, r.phase, r.store_member)
            for r in records
        ]
        created = {pool: tuple(await self._created(pool)) for pool in spec.pools}
        zone_nodes: dict[str, set[str]] = {}
        for node in spec.nodes:
            zone_nodes.setdefault(node.zone, set()).add(node.name)
        voting, voters = await self._voting()
        await self._list_pools(spec, now)
        view = HealView(
            now=now,
            pools=spec.pools,
            machines=tuple(machines),
            alive=alive,
            dead_since=dict(self._dead_since),
            zone_nodes={z: frozenset(n) for z, n in zone_nodes.items()},
            voting=voting,
            store_voters=voters,
            created=created,
            listed=dict(self._listed),
            unknown_since=dict(self._unknown_since),
            quarantined=quarantined,
        )
        unknown = unknown_machines(view)
        for machine_id in list(self._unknown_since):
            if machine_id not in unknown:
                del self._unknown_since[machine_id]
        for machine_id in unknown:
            self._unknown_since.setdefault(machine_id, now)
        return view

    async def _voting(self) -> tuple[frozenset[str], int]:
        members = getattr(self._store, "members", None)
        if members is None:
            return frozenset(), 0
        listed = [m for m in await members() if not m.learner]
        return frozenset(m.name for m in listed if m.name), len(listed)

    async def _list_pools(self, spec: ClusterSpec, now: float) -> None:
        for pool, pool_spec in spec.pools.items():
            if now - self._listed_at.get(pool, 0.0) < defaults.POOL_LIST_INTERVAL:
                continue
            self._listed_at[pool] = now
            try:
                provider = self._provider(pool, pool_spec)
                found = await asyncio.to_thread(provider.list, self._tags(spec, pool))
            except ProviderError as exc:
                await self._say_once(pool, "pool-provider-failed", pool, f"listing: {exc}")
                continue
            self._listed[pool] = tuple(
                Listed(pool, m.id, m.tags.get(NODE_TAG, ""))
                for m in found
                if m.state != "terminated"
            )

    def _provider(self, pool: str, spec: PoolSpec) -> Provider:
        if pool not in self._providers:
            self._providers[pool] = open_provider(pool, spec)
        return self._providers[pool]

    @staticmethod
    def _tags(spec: ClusterSpec, pool: str) -> dict[str, str]:
        return {CLUSTER_TAG: spec.cluster, POOL_TAG: pool}

    # -- doing -------------------------------------------------------------------------
    async def step(self, hold: LockHold) -> None:
        spec = self._leader.spec
        quarantined = frozenset(
            last_segment(i.key) for i in (await self._store.list(QUARANTINE)).items
        )
        if not spec.pools and not quarantined:
            return
        alive = frozenset(last_segment(i.key) for i in (await self._store.list(NODES)).items)
        records: list[MachineRecord] = []  # one read per pool per step
        for pool in spec.pools:
            for item in (await self._store.list(pool_machines(pool))).items:
                record = MachineRecord.decode(item.value)
                if record.phase == "creating" and record.node in alive:
                    # a machine being created whose agent holds a lease has joined
                    record = record.model_copy(update={"phase": "joined"})
                    await self._write(hold, [Put(item.key, record.encode())])
                    await self._journal.record(
                        "machine-joined", record.node,
                        f"pool {pool}: joined {time.time() - record.created_at:.1f}s "
                        "after it was created", pool=pool, machine=record.machine_id,
                    )  # fmt: skip
                records.append(record)
        view = await self._view(spec, alive, records, quarantined)
        for action in heal(view, [n.name for n in spec.nodes]):
            if self._leader.hold is not hold:
                return
            await self._do(hold, spec, action)

    async def _do(self, hold: LockHold, spec: ClusterSpec, action: Action) -> None:
        match action:
            case Fence():
                await self._fence(hold, spec, action)
            case RemoveMember():
                await self._remove_member(action)
            case Forget():
                await self._forget(hold, spec, action)
            case Create():
                await self._create(hold, spec, action)
            case DestroyRogue():
                await self._destroy_rogue(spec, action)
            case Hold():
                subject = action.pool or "quarantine"
                await self._say_once(subject, "pool-held", subject, action.reason)

    async def _fence(self, hold: LockHold, spec: ClusterSpec, action: Fence) -> None:
        provider = self._provider(action.pool, spec.pools[action.pool])
        started = time.monotonic()
        try:
            await asyncio.to_thread(provider.power_off, action.machine_id)
        except ProviderError as exc:
            await self._say_once(action.node, "machine-fence-failed", action.node, str(exc))
            return
        key = machine_key(action.pool, action.node)
        got = await self._store.get(key)
        if got is None:
            return
        record = MachineRecord.decode(got.value).model_copy(
            update={"phase": "fenced", "fenced_at": time.time()}
        )
        await self._write(hold, [Put(key, record.encode())])
        await self._journal.record(
            "machine-fenced", action.node,
            f"pool {action.pool}: {action.why}; powered off through {provider.name} "
            f"in {time.monotonic() - started:.2f}s",
            pool=action.pool, machine=action.machine_id,
        )  # fmt: skip
        await self._free_locks(hold, action.node)

    async def _free_locks(self, hold: LockHold, node: str) -> None:
        """The provider confirmed the power-off: a lease the machine still
        holds (a quarantined machine was alive) is revoked now rather than
        left to expire, so its locks (an active's, a VIP's) are free at once."""
        item = await self._store.get(node_key(node))
        if item is not None and item.lease:
            await self._store.revoke_lease(item.lease)
            await self._journal.record(
                "machine-locks-freed", node, "its lease revoked after the confirmed power-off"
            )
        got = await self._store.get(quarantine_key(node))
        if got is not None:
            record = QuarantineRecord.decode(got.value)
            if record.fenced_at is None:
                record = record.model_copy(update={"fenced_at": time.time()})
                await self._write(hold, [Put(quarantine_key(node), record.encode())])

    async def _remove_member(self, action: RemoveMember) -> None:
        members = getattr(self._store, "members", None)
        remove = getattr(self._store, "remove_member", None)
        if members is None or remove is None:
            return
        for member in await members():
            if member.name == action.node:
                await remove(member.id)
                what = (
                    f"pool {action.pool}: the fenced machine's store member removed"
                    if action.pool
                    else "the quarantined node's store member removed"
                )
                await self._journal.record(
                    "store-member-removed", action.node, what, pool=action.pool
                )

    async def _forget(self, hold: LockHold, spec: ClusterSpec, action: Forget) -> None:
        provider = self._provider(action.pool, spec.pools[action.pool])
        try:
            await asyncio.to_thread(provider.destroy, action.machine_id)
        except ProviderError as exc:
            await self._say_once(action.node, "machine-destroy-failed", action.node, str(exc))
            return
        for _ in range(5):
            current = await self._store.get(SPEC_KEY)
            stored = await read_spec(self._store, spec)
            nodes = [n for n in stored.nodes if n.name != action.node]
            ops: list[Put | Delete] = [Delete(machine_key(action.pool, action.node))]
            if len(nodes) != len(stored.nodes):
                text = dump_spec(stored.model_copy(update={"nodes": nodes}))
                ops.append(Put(SPEC_KEY, text.encode()))
            guard = Compare(SPEC_KEY, "mod", "==", current.mod_revision if current else 0)
            if await self._write(hold, ops, [guard]):
                break
        else:
            return
        self._dead_since.pop(action.node, None)
        await self._journal.record(
            "machine-replaced", action.node,
            f"pool {action.pool}: destroyed and removed from the cluster", pool=action.pool,
        )  # fmt: skip

    async def _create(self, hold: LockHold, spec: ClusterSpec, action: Create) -> None:
        pool = spec.pools[action.pool]
        provider = self._provider(action.pool, pool)
        token, record = new_token(kind="join", name=f"pool {action.pool}: {action.node}",
                                  uses=1, ttl=JOIN_TOKEN_TTL)  # fmt: skip
        record = record.model_copy(update={"node": action.node})
        await store_token(self._store, record)
        boot = Bootstrap(
            cluster=spec.cluster,
            node=action.node,
            zone=action.zone,
            labels=pool.node_labels(action.pool),
            apis=[n.host_port(n.ports.api) for n in spec.nodes if n.name not in self._dead_since],
            token=token,
            ca_hash=self._ca_hash(),
            store=action.store_member,
            data_dir=pool.data_dir,
            install=pool.install or f"ninefold=={__version__}",
        )
        adapt = getattr(provider, "bootstrap", None)
        if adapt is not None:  # the lab's machines run this installation's code
            boot = adapt(boot)
        tags = {**self._tags(spec, action.pool), NODE_TAG: action.node}
        request = MachineRequest(action.node, action.zone, pool.template, tags, render(boot))
        now = time.time()
        history = [t for t in (await self._created(action.pool)) if now - t < pool.budget.window]
        history.append(now)  # a failed creation counts too: a broken image must not storm
        try:
            machine = await asyncio.to_thread(provider.create, request)
        except ProviderError as exc:
            await self._write(hold, [Put(created_key(action.pool), json.dumps(history).encode())])
            await self._journal.record(
                "machine-create-failed", action.node, f"pool {action.pool}: {exc}",
                pool=action.pool, zone=action.zone,
            )  # fmt: skip
            return
        record_ = MachineRecord(
            pool=action.pool, node=action.node, machine_id=machine.id, zone=action.zone,
            created_at=now, phase="creating", store_member=action.store_member,
        )  # fmt: skip
        await self._write(hold, [
            Put(machine_key(action.pool, action.node), record_.encode()),
            Put(created_key(action.pool), json.dumps(history).encode()),
        ])  # fmt: skip
        await self._journal.record(
            "machine-created", action.node,
            f"pool {action.pool}: {action.why}; {machine.id} in zone {action.zone}"
            + (" (store member)" if action.store_member else ""),
            pool=action.pool, zone=action.zone, machine=machine.id,
        )  # fmt: skip

    async def _destroy_rogue(self, spec: ClusterSpec, action: DestroyRogue) -> None:
        provider = self._provider(action.pool, spec.pools[action.pool])
        try:
            await asyncio.to_thread(provider.destroy, action.machine_id)
        except ProviderError as exc:
            await self._say_once(action.machine_id, "machine-destroy-failed", action.pool, str(exc))
            return
        self._unknown_since.pop(action.machine_id, None)
        await self._journal.record(
            "machine-rogue-destroyed", action.machine_id,
            f"pool {action.pool}: carried the cluster's tags"
            + (f" as node {action.node}" if action.node else "")
            + " but the store does not know it", pool=action.pool,
        )  # fmt: skip

    # -- helpers -----------------------------------------------------------------------
    async def _created(self, pool: str) -> list[float]:
        got = await self._store.get(created_key(pool))
        return list(json.loads(got.value)) if got is not None else []

    def _ca_hash(self) -> str:
        if self._ca_file is None:
            return ""
        return fingerprint(self._ca_file.read_bytes())

    async def _write(
        self, hold: LockHold, ops: list[Put | Delete], guards: list[Compare] | None = None
    ) -> bool:
        guard = Compare(lock_key(LEADER_LOCK), "create", "==", hold.fencing_token)
        result = await self._store.txn([guard, *(guards or [])], ops)
        return bool(result.succeeded)

    async def _say_once(
        self, about: str, kind: str, subject: str, reason: str, **data: Any
    ) -> None:
        if self._said.get(about) == f"{kind}:{reason}":
            return
        self._said[about] = f"{kind}:{reason}"
        log.warning("%s %s: %s", kind, subject, reason)
        with contextlib.suppress(StoreError):
            await self._journal.record(kind, subject, reason, **data)
