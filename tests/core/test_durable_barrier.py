"""The committer's durable barrier: a reader it releases never sees a group that is written but
not yet fsynced (guarantee 2), even when the next group is ready at once.

The window between an unsynced write and its WAL sync lasts a fraction of a millisecond on a
real store, too short to hit reliably through a server; so this drives the real Committer over
a store stand-in whose sync is slow and which counts unsynced groups. Everything end to end is
covered by the service tests and the crash test.
"""

from __future__ import annotations

import asyncio
import time

from statekeeper_server.core.committer import Committer, PendingCommit
from statekeeper_server.storage.base import Keyspace


class _Batch:
    def __init__(self) -> None:
        self.n = 0

    def put(self, *args: object) -> None:
        self.n += 1

    def delete(self, *args: object) -> None:
        self.n += 1

    def __len__(self) -> int:
        return self.n


class _SlowSyncStore:
    def __init__(self) -> None:
        self.unsynced = 0

    def new_batch(self) -> _Batch:
        return _Batch()

    def write(self, batch: _Batch, *, sync: bool) -> None:
        if not sync:
            self.unsynced += 1

    def sync_wal(self) -> None:
        time.sleep(0.0005)
        self.unsynced = 0


def test_readers_released_by_the_barrier_never_see_unsynced_writes() -> None:
    async def main() -> tuple[int, int, int]:
        store = _SlowSyncStore()
        committer = Committer(
            store,  # type: ignore[arg-type]
            fsync=True,
            durable_revision=0,
            on_durable=lambda group: None,
            on_reset=lambda: None,
            on_fatal=lambda error: None,
        )
        committer.start()
        revision = 0
        stop = False

        def commit() -> None:
            nonlocal revision
            revision += 1
            committer.enqueue(PendingCommit(revision, [(Keyspace.META, b"k", b"v")], [], []))

        async def producer() -> None:
            # New commits arrive while each group is being synced, so the next group is ready
            # the moment the sync returns: the case where a woken reader could be overtaken.
            while not stop:
                if committer.flushing is not None:
                    commit()
                await asyncio.sleep(0)

        seen_unsynced = reads = 0

        async def reader() -> None:
            nonlocal seen_unsynced, reads
            for _ in range(2000):
                await committer.durable_barrier()
                reads += 1
                if store.unsynced:
                    seen_unsynced += 1
                await asyncio.sleep(0)

        commit()
        commit()
        feeding = asyncio.ensure_future(producer())
        await asyncio.gather(*(reader() for _ in range(4)))
        stop = True
        await feeding
        await committer.stop()
        return reads, seen_unsynced, committer.stats.groups

    reads, seen_unsynced, groups = asyncio.run(main())
    assert groups > 100, "the off-loop sync path must have been exercised"
    assert reads == 8000 and seen_unsynced == 0
