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
tail's poll interval, and its consumers that the cap cut off are told so (CutOffConsumers).
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
            except Exception as e:  # e.g. the servers table could not be read (PostgreSQL down)
                log.warning("event compaction failed (%s: %s); will retry", type(e).__name__, e)

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
            if self._hub.codec.decode(revision, index, rows[0][1]).time_ms >= time_ms:
                hi = mid
            else:
                lo = max(mid, revision) + 1
        return lo if lo <= durable else None


class CutOffConsumers:
    """A compaction listener (every server, whichever compacted): this server's consumers whose
    unacknowledged events were deleted (by the cap) are told so, as on one server
    (ConsumerManager.mark_behind). A position in memory may lag what the store holds for a
    moment (its write committed, not yet settled), and the compactor went by the store: so a
    consumer that looks behind is checked against its stored position first, and marking waits
    until every one that looks behind really is."""

    SETTLE_S = 0.05
    ATTEMPTS = 100  # a position whose write's outcome was unknown may never settle: give up

    def __init__(self, store: PgStore, consumers: ConsumerManager) -> None:
        self._store = store
        self._consumers = consumers
        self._oldest = 0
        self._task: asyncio.Task[None] | None = None

    def compacted(self, oldest: int) -> None:
        self._oldest = max(self._oldest, oldest)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._mark(), name="consumers-cut-off")

    def _looks_behind(self, oldest: int) -> list[str]:
        consumers = self._consumers
        return [
            name
            for name in consumers.names()
            if (state := consumers.find(name)) is not None
            and state.error is None
            and consumers.acked_revision(state) + 1 < oldest
        ]

    async def _mark(self) -> None:
        behind: list[str] = []
        for _ in range(self.ATTEMPTS):
            oldest = self._oldest
            behind = self._looks_behind(oldest)
            if not behind:
                return
            if await self._stored_behind(behind, oldest):
                self._consumers.mark_behind(oldest)
                if oldest == self._oldest:
                    return
                continue
            await asyncio.sleep(self.SETTLE_S)
        log.warning("consumers %s look behind the retention, their stored positions do not", behind)

    async def _stored_behind(self, names: list[str], oldest: int) -> bool:
        """Whether the store's positions of all these consumers are below oldest too."""
        try:
            stored = await self._store.durable().get_many(Keyspace.CONSUMERS, [n.encode() for n in names])
        except DomainError:  # PostgreSQL unavailable: look again in a moment
            return False
        # A record gone: the consumer is being deleted (or moved); marking it changes nothing.
        return all(
            raw is None or covered_revision(codec.decode_consumer(raw)[4]) + 1 < oldest for raw in stored
        )
