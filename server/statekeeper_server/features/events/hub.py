"""The event hub: what watchers and consumers read, and how they learn there is more.

Events reach readers from a bounded in-memory window of the newest durable events, or from
the store when a reader is further behind (a lagging reader catches up from storage; memory
is bounded by the window, not by the number or slowness of readers). Readers never hold up a
commit: the committer only appends to the window and wakes them. Storage reads go a slice at a
time through the stream lane (lane.py), so streams catching up never hold the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time

from statekeeper_server.core.committer import PendingCommit
from statekeeper_server.domain.errors import OutOfRange
from statekeeper_server.domain.model import Event
from statekeeper_server.features.events.lane import SLICE_EVENTS, StreamLane
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.events")

META_COMPACTED = b"events_compacted_revision"

Position = tuple[int, int]
StoredEvent = tuple[bytes, bytes]
"""(the event's key, the bytes the store holds for it): a row as a scan of the store returns
it, so a read from the store passes its rows on as they are (keys.seq_key_parts reads the
revision and index from the key)."""


class EventHub:
    def __init__(
        self,
        store: Store,
        durable_revision: int,
        window: int = 65_536,
        event_codec: codec.EventCodec = codec.MSGPACK_EVENTS,
    ) -> None:
        self._store = store
        self.codec = event_codec
        self.durable_revision = durable_revision
        self._window = window
        # The window holds events as stored: plain tuples of numbers and bytes, which the
        # garbage collector stops tracking (tens of thousands of Event objects made every
        # collection of the old generation walk them: pauses of over 100 ms under load).
        self._stored: list[StoredEvent] = []
        self._waiter: asyncio.Future[None] | None = None
        self.lane = StreamLane()
        raw = store.get(Keyspace.META, META_COMPACTED)
        # Events with a revision below this are gone.
        self.oldest_revision = (keys.read_u64(raw) if raw is not None else 0) + 1

    # -- fed by the engine -------------------------------------------------------------------

    def on_durable(self, group: list[PendingCommit]) -> None:
        """A durable listener (one server): every commit reaches the hub through here."""
        top = self.durable_revision
        stored = self._stored
        for commit in group:
            if commit.revision:
                top = commit.revision
                stored.extend(commit.event_rows)
        self._advance(top)

    def feed(self, new: list[Event], top: int) -> None:
        """Events of every revision up to top, in order, following those fed before (cluster
        mode: read from the shared store by cluster/events.py, whichever server committed)."""
        stored = self._stored
        encode = self.codec.encode
        key = keys.seq_key
        stored.extend([(key(e.revision, e.index), e.encoded or encode(e)) for e in new])
        self._advance(top)

    def _advance(self, top: int) -> None:
        """Events up to top are in the window: trim it, wake the readers."""
        stored = self._stored
        self.durable_revision = max(self.durable_revision, top)
        if len(stored) > 2 * self._window:
            del stored[: len(stored) - self._window]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drop_window(self) -> None:
        """Forget the events held in memory (cluster mode: this server's reader fell behind a
        compaction and missed events, so the window would hide a gap; readers go to the store,
        which refuses what was compacted)."""
        self._stored.clear()

    # -- used by readers ---------------------------------------------------------------------

    async def wait(self, after_revision: int, timeout: float) -> bool:
        """Wait until a revision beyond after_revision is durable; False on timeout."""
        if self.durable_revision > after_revision:
            return True
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
        except TimeoutError:
            return False
        return self.durable_revision > after_revision

    def check_start(self, revision: int) -> None:
        if revision < self.oldest_revision:
            raise OutOfRange(
                "REVISION_COMPACTED",
                f"revision {revision} was compacted; the oldest revision still available is {self.oldest_revision}",
                oldest_revision=self.oldest_revision,
                requested_revision=revision,
            )

    async def read(self, start: Position, limit: int) -> list[Event]:
        """Up to limit durable events at or after start, in order."""
        events, _ = await self.read_upto(start, limit)
        return events

    async def read_upto(
        self, start: Position, limit: int, *, in_turn: bool = False
    ) -> tuple[list[Event], int]:
        """Up to limit durable events at or after start, in order, and the durable revision the
        read went up to: fewer than limit events means every event up to it was read.

        in_turn: the caller holds a turn of the lane (and asks for at most SLICE_EVENTS, or
        STORED_SLICE_EVENTS from read_stored_upto): the read does its work in that turn instead
        of taking turns of its own."""
        rows, top = await self.read_stored_upto(start, limit, in_turn=in_turn)
        decode, unpack = self.codec.decode, keys.seq_key_parts
        if in_turn or len(rows) <= SLICE_EVENTS:
            return [decode(*unpack(key), raw) for key, raw in rows], top
        events: list[Event] = []
        for i in range(0, len(rows), SLICE_EVENTS):
            async with self.lane.turn():
                events.extend([decode(*unpack(key), raw) for key, raw in rows[i : i + SLICE_EVENTS]])
        return events, top

    async def read_stored_upto(
        self, start: Position, limit: int, *, in_turn: bool = False
    ) -> tuple[list[StoredEvent], int]:
        """As read_upto, as stored: (key, the stored bytes), not decoded. A reader that takes
        every event sends these as they are (see EventCodec)."""
        stored = self._stored
        top = self.durable_revision
        seek = keys.seq_key(*start)
        if stored and seek >= stored[0][0]:
            # (key,) sorts before the stored (key, bytes) it names, after every smaller key.
            i = bisect.bisect_left(stored, (seek,))
            return stored[i : i + limit], top
        return await self._read_stored(start, seek, limit, top, in_turn)

    async def _read_stored(
        self, start: Position, seek: bytes, limit: int, top: int, in_turn: bool
    ) -> tuple[list[StoredEvent], int]:
        if start[0] < self.oldest_revision:
            self.check_start(start[0])
        # One view for the whole read (taken with `top`, no await between): every slice comes
        # from the same moment.
        view = self._store.durable()
        out: list[StoredEvent] = []
        last = keys.seq_key(top + 1, 0)
        while len(out) < limit:
            # In the caller's turn, one read of what it asked for (it sized it for a turn).
            want = limit - len(out) if in_turn else min(SLICE_EVENTS, limit - len(out))
            # A revision holds one event or more, so `want` events lie within the next `want`
            # revisions: bounding the scan there lets RocksDB leave alone whatever lies beyond
            # (a replay of old history was half as fast with a million newer events).
            end = min(last, keys.seq_key(keys.seq_key_parts(seek[:12])[0] + want + 1, 0))
            async with contextlib.nullcontext() if in_turn else self.lane.turn():
                found = await view.scan(Keyspace.EVENTS, seek, end, limit=want)
                out += found
            if len(found) < want:
                if end == last:
                    break
                seek = end  # fewer events than revisions there: go on past the bound
                continue
            seek = found[-1][0] + b"\x00"
        return out, top

    # -- retention ---------------------------------------------------------------------------

    def compact(self, below_revision: int) -> int:
        """Delete every event with a revision below below_revision (housekeeping: no revision)."""
        if below_revision <= self.oldest_revision:
            return 0
        started = time.perf_counter()
        batch = self._store.new_batch()
        batch.delete_range(Keyspace.EVENTS, keys.seq_key(0, 0), keys.seq_key(below_revision, 0))
        batch.put(Keyspace.META, META_COMPACTED, keys.u64(below_revision - 1))
        self._store.write(batch, sync=False)
        removed = below_revision - self.oldest_revision
        self.oldest_revision = below_revision
        log.info(
            "compacted events below revision %d (%d revisions) in %.1f ms",
            below_revision,
            removed,
            (time.perf_counter() - started) * 1000,
        )
        return removed
