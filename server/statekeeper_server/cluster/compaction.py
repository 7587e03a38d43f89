"""Event compaction in cluster mode: one server at a time compacts for the whole store — the one
holding shard 0 — in transactions fenced by shard 0's generation (store.compact_events), so a
server that lost shard 0 (paused, partitioned) deletes nothing, and a takeover of shard 0 hands
compaction over with it.

The rules and flags are the embedded store's (features/events/retention.py keep_from), with
what a cluster needs on top:
- durable consumers hold events back by their positions as the store has them, every shard's,
  whichever server holds them (each server writes its consumers' positions within a second;
  what the store has is never ahead of what is durable, so this only keeps more);
- nothing is deleted that a live server has not read yet (the revision each server reported
  with its last heartbeat), so no server's stream of events has a gap;
- the age rule's cut-off is found by a binary search over revisions: their commit times come
  from the clocks of the servers that committed them, so a clock skew moves it by as much.

Every server learns of a compaction with its next read of events (cluster/events.py): its
oldest retained revision, what Watch refuses and GetServerInfo shows, follows within the
tail's poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from statekeeper_server.core.shards import ShardMap
from statekeeper_server.domain.errors import DomainError
from statekeeper_server.features.events.consumers import ConsumerManager, covered_revision
from statekeeper_server.features.events.hub import META_COMPACTED, EventHub
from statekeeper_server.features.events.retention import RetentionPolicy, age_cutoff_ms, keep_from
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, ShardsLost
from statekeeper_server.storage.postgres.store import EVENTS_COMPACTED_KEY, PgStore

log = logging.getLogger("statekeeper.retention")

COMPACTOR_SHARD = 0
COMPACT_CHUNK = 10_000
"""Revisions deleted per transaction (each holds shard 0's row lock, so keep it short)."""
MAX_CONSUMER_KEYS = 10_000_000

assert META_COMPACTED == EVENTS_COMPACTED_KEY  # the hub reads at start what compaction writes

TailRevisions = Callable[[], Awaitable[list[int]]]
"""How far every live server has read events (their last heartbeats)."""


class ClusterCompactor:
    def __init__(
        self,
        store: PgStore,
        hub: EventHub,
        consumers: ConsumerManager,
        policy: RetentionPolicy,
        shards: ShardMap,
        tails: TailRevisions,
    ) -> None:
        self._store = store
        self._hub = hub
        self._consumers = consumers
        self.policy = policy
        self._shards = shards
        self._tails = tails
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="event-compactor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_s)
            if not self._shards.is_owned(COMPACTOR_SHARD):
                continue  # another server compacts
            try:
                await self.run_once()
            except ShardsLost:
                log.info("event compaction stopped: shard %d moved to another server", COMPACTOR_SHARD)
            except DomainError as e:  # PostgreSQL is unavailable: the next run tries again
                log.warning("event compaction failed: %s", e.message)
            except Exception:
                log.exception("event compaction failed; will retry")

    async def target(self) -> int:
        """The revision below which events may be deleted now."""
        p, hub = self.policy, self._hub
        durable = hub.durable_revision
        young = (
            await self._first_revision_at_or_after(age_cutoff_ms(p), durable) if p.keep_age_s > 0 else None
        )
        kept = keep_from(p, durable, young, await self._needed())
        tails = await self._tails()
        if tails:
            kept = min(kept, min(tails) + 1)
        return kept

    async def run_once(self) -> int:
        """One compaction run (the caller holds shard 0); returns how many revisions went."""
        started = time.perf_counter()
        # This server's consumers' positions moved past what their filters leave out, written
        # now (the other servers write theirs every second).
        await self._consumers.checkpoint()
        target = await self.target()
        first = oldest = self._hub.oldest_revision
        while oldest < target:
            mark = await self._store.compact_events(min(target, oldest + COMPACT_CHUNK), COMPACTOR_SHARD)
            oldest = max(oldest, mark + 1)
            self._hub.oldest_revision = max(self._hub.oldest_revision, oldest)
            await asyncio.sleep(0)
        removed = oldest - first
        if removed:
            self._consumers.mark_behind(self._hub.oldest_revision)
            log.info(
                "compacted events below revision %d (%d revisions) in %.1f ms",
                oldest,
                removed,
                (time.perf_counter() - started) * 1000,
            )
        return removed

    async def _needed(self) -> int | None:
        """The oldest revision a durable consumer still needs, by the positions in the store."""
        rows = await self._store.durable().scan(Keyspace.CONSUMERS, b"", None, limit=MAX_CONSUMER_KEYS)
        oldest = self._hub.oldest_revision
        needed = []
        for key, raw in rows:
            if b"\x00" in key:
                continue  # an acknowledgement above a consumer's floor, not its record
            floor = codec.decode_consumer(raw)[4]
            revision = covered_revision(floor) + 1
            # One already cut off by the cap (its subscribers are told so) holds nothing back.
            if revision >= oldest:
                needed.append(revision)
        return min(needed, default=None)

    async def _first_revision_at_or_after(self, time_ms: int, durable: int) -> int | None:
        """The first revision up to `durable` committed at or after time_ms (None: none)."""
        view = self._store.durable()
        lo, hi = self._hub.oldest_revision, durable + 1
        while lo < hi:
            mid = (lo + hi) // 2
            _, rows = await view.events(keys.seq_key(mid, 0), None, 1)
            if not rows:
                hi = mid
                continue
            revision, index = keys.seq_key_parts(rows[0][0])
            if codec.decode_event(revision, index, rows[0][1]).time_ms >= time_ms:
                hi = mid
            else:
                lo = max(mid, revision) + 1
        return lo if lo <= durable else None
