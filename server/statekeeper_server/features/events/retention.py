"""Event retention: keep what a durable consumer still needs (by its durable position, which
covers what its filter leaves out), and beyond that the newest `keep_revisions` revisions and
anything younger than `keep_age_s`; a hard cap bounds what consumers may hold back. Compaction
runs in the background and never blocks commits."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from statekeeper_server.domain.errors import DomainError
from statekeeper_server.features.events.consumers import ConsumerManager
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.retention")


@dataclass(frozen=True)
class RetentionPolicy:
    keep_revisions: int = 1_000_000
    keep_age_s: float = 0.0
    max_revisions: int = 0  # hard cap; 0 = consumers may hold back history without limit
    interval_s: float = 30.0


def age_cutoff_ms(policy: RetentionPolicy) -> int:
    """Events committed at or after this time are kept by the age rule."""
    return int((time.time() - policy.keep_age_s) * 1000)


def keep_from(policy: RetentionPolicy, durable: int, young: int | None, needed: int | None) -> int:
    """The oldest revision the rules keep (everything below it may be deleted). young: the
    first revision committed at or after age_cutoff_ms (None: none; unused without an age
    rule); needed: the oldest revision a durable consumer still needs (None: no consumer).
    The embedded and the cluster compactor (cluster/compaction.py) both decide by it."""
    p = policy
    kept = durable - p.keep_revisions + 1
    if p.keep_age_s > 0:
        kept = min(kept, young if young is not None else durable + 1)
    if needed is not None:
        if p.max_revisions:
            # The cap bounds only what consumers may hold back, not the count/age rules.
            needed = max(needed, durable - p.max_revisions + 1)
        kept = min(kept, needed)
    return min(kept, durable + 1)


class EventCompactor:
    def __init__(
        self, store: Store, hub: EventHub, consumers: ConsumerManager, policy: RetentionPolicy
    ) -> None:
        self._store = store
        self._hub = hub
        self._consumers = consumers
        self.policy = policy
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="event-compactor")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_s)
            try:
                await self.run_once()
            except DomainError as e:  # the store failed (UNAVAILABLE): the server is stopping
                log.warning("event compaction failed: %s", e.message)
            except OSError as e:  # the store failed (e.g. the disk is full): the committer stops
                log.warning("event compaction failed (%s); will retry", e)
            except Exception:
                log.exception("event compaction failed; will retry")

    def target(self) -> int:
        """The revision below which events may be deleted now."""
        p = self.policy
        young = None
        if p.keep_age_s > 0:
            young = self._first_revision_at_or_after(age_cutoff_ms(p))
        return keep_from(p, self._hub.durable_revision, young, self._consumers.retention_floor())

    async def run_once(self) -> int:
        # Consumers' positions as they are durable, moved past what their filters leave out
        # (a crash can never make needed again what is deleted here).
        await self._consumers.checkpoint()
        removed = self._hub.compact(self.target())
        if removed:
            self._consumers.mark_behind(self._hub.oldest_revision)
        return removed

    def _first_revision_at_or_after(self, time_ms: int) -> int | None:
        # Events are in commit order, and commit times only grow (one clock, one committer).
        decode = self._hub.codec.decode
        for key, raw in self._store.scan(Keyspace.EVENTS, keys.seq_key(self._hub.oldest_revision, 0)):
            revision, index = keys.seq_key_parts(key)
            if decode(revision, index, raw).time_ms >= time_ms:
                return revision
        return None
