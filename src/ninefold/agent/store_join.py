"""A member that joined a running store becomes a voter once it has caught up,
and every agent learns the store's members as they come and go.

`ninefold join --store` has the cluster add this node's member as an etcd
learner: it receives the log but has no vote, so adding it cannot cost the
store its quorum even if the new machine never starts. Once the learner has
the leader's log etcd accepts its promotion; from then on it counts towards
the quorum like any member. Until then etcd refuses with "can only promote a
learner member which is in sync with leader", and we ask again.
"""

from __future__ import annotations

import asyncio
import logging

from ninefold import defaults
from ninefold.agent.journal import EventJournal
from ninefold.store.base import StoreError
from ninefold.store.embedded import StoreJoin
from ninefold.store.etcd import EtcdStore

log = logging.getLogger("ninefold.store")

PROMOTE_EVERY = 0.5
"""Seconds between promotion attempts while the learner catches up."""


async def promote_when_caught_up(
    store: EtcdStore, joined: StoreJoin, node: str, every: float = PROMOTE_EVERY
) -> bool:
    """Promote this node's learner; True once it votes (at once if it did
    already), False if the store no longer lists it."""
    journal = EventJournal(store, node)
    waited = 0.0
    while True:
        try:
            member = next((m for m in await store.members() if m.id == joined.member_id), None)
            if member is None:
                log.error("store member %s (id %x) is not in the store", node, joined.member_id)
                return False
            if not member.learner:
                return True
            await store.promote_member(joined.member_id)
        except StoreError as exc:
            if waited == 0.0 or waited % 10 < every:
                log.info("store member %s is catching up: %s", node, exc)
        else:
            log.info("store member %s is a voter now", node)
            await journal.record("store-member-promoted", node, "caught up with the leader")
            return True
        await asyncio.sleep(every)
        waited += every


async def follow_store_members(store: EtcdStore, every: float = defaults.STORE_SYNC_EVERY) -> None:
    """Keep the store client's endpoints to the store's voting members, so an
    agent started before a join can fail over to the new members too."""
    while True:
        await asyncio.sleep(every)
        try:
            await store.sync_endpoints()
        except StoreError as exc:
            log.debug("store members not read: %s", exc)
