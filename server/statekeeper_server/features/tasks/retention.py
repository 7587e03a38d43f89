"""Finished tasks (completed, stale, discarded) are kept for `retention_ms` after they finished,
then deleted with their TASKS_BY_NODE entry; GetTask then answers NOT_FOUND.

The TASKS_FINISHED index (storage/indexes.py) orders them by the time they finished, so a
sweep reads only what is due, a chunk at a time with a turn of the event loop between chunks,
and each chunk of the index goes with one range delete. Finished tasks never change again, so
deleting them outside the commit groups cannot race a commit. After a burst the keyspaces are
compacted on a thread (core/reclaim.py). A store written before the index existed is indexed
once in the background (its finished tasks count from then).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable

from statekeeper_server.core.engine import Engine, now_ms
from statekeeper_server.core.reclaim import Reclaimer
from statekeeper_server.domain.errors import DomainError
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.indexes import FINISHED, finished_key, task_key_of

log = logging.getLogger("statekeeper.tasks")

SWEEP_CHUNK = 500
SWEEP_INTERVAL_S = 1.0
META_INDEXED = b"tasks_finished_indexed"


def finished_records(
    index_keys: list[bytes], task: Callable[[bytes], bytes | None]
) -> list[tuple[Keyspace, bytes]]:
    """What goes with these TASKS_FINISHED entries: each finished task and its TASKS_BY_NODE
    entry (two keys a task); task(key): its stored record, or None. Shared with the cluster's
    sweep (cluster/housekeeping.py)."""
    out: list[tuple[Keyspace, bytes]] = []
    for key in index_keys:
        tkey = task_key_of(key)
        raw = task(tkey)
        if raw is None:
            continue
        record = codec.decode_task(raw)
        if record.status in FINISHED:
            out.append((Keyspace.TASKS, tkey))
            out.append((Keyspace.TASKS_BY_NODE, keys.node_key(record.address) + tkey))
    return out


class TaskRetention:
    def __init__(self, engine: Engine, retention_ms: int) -> None:
        self.engine = engine
        self.store = engine.store
        self.retention_ms = retention_ms
        self._task: asyncio.Task[None] | None = None
        self._reclaim = Reclaimer(
            engine.store, (Keyspace.TASKS, Keyspace.TASKS_BY_NODE, Keyspace.TASKS_FINISHED)
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="task-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._reclaim.close()

    async def _run(self) -> None:
        indexed = self.store.get(Keyspace.META, META_INDEXED) is not None
        while True:
            try:
                if not indexed:
                    await self._index_existing()
                    indexed = True
                if self.retention_ms:
                    await self.sweep()
            except DomainError as e:
                log.warning("deleting finished tasks failed: %s", e.message)
            except OSError as e:  # the store failed (e.g. the disk is full): the committer stops
                log.warning("deleting finished tasks failed (%s); will retry", e)
            except Exception:
                log.exception("deleting finished tasks failed; will retry")
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def sweep(self) -> int:
        """Delete the tasks that finished more than retention_ms ago; returns how many."""
        end = keys.u64(max(0, now_ms() - self.retention_ms))
        start = b""
        deleted = 0
        while True:
            found = list(itertools.islice(self.store.scan(Keyspace.TASKS_FINISHED, start, end), SWEEP_CHUNK))
            if not found:
                if deleted:
                    # An empty commit group: syncs the deletions and publishes them to readers.
                    await self.engine.write_unversioned([])
                    drained = next(iter(self.store.scan(Keyspace.TASKS_FINISHED)), None) is None
                    await self._reclaim.deleted(deleted, drained)
                return deleted
            batch = self.store.new_batch()
            doomed = finished_records([key for key, _ in found], lambda k: self.store.get(Keyspace.TASKS, k))
            for keyspace, key in doomed:
                batch.delete(keyspace, key)
            deleted += len(doomed) // 2
            start = found[-1][0] + b"\x00"
            # New entries carry the time their commit finished them: never this old (unless
            # the clock stepped back by more than the retention).
            batch.delete_range(Keyspace.TASKS_FINISHED, found[0][0], start)
            # Outside the commit groups (finished tasks never change again); durable and
            # visible with the next group. A crash that loses it only delays it.
            self.store.write(batch, sync=False)
            await asyncio.sleep(0)

    async def _index_existing(self) -> None:
        """Index the finished tasks of a store written before TASKS_FINISHED existed."""
        now = now_ms()
        start = b""
        indexed = 0
        while True:
            found = list(itertools.islice(self.store.scan(Keyspace.TASKS, start), SWEEP_CHUNK))
            batch = self.store.new_batch()
            for tkey, raw in found:
                if codec.decode_task(raw).status in FINISHED:
                    batch.put(Keyspace.TASKS_FINISHED, finished_key(now, tkey), b"")
                    indexed += 1
            if not found:
                batch.put(Keyspace.META, META_INDEXED, b"")
            self.store.write(batch, sync=False)
            if not found:
                break
            start = found[-1][0] + b"\x00"
            await asyncio.sleep(0)
        if indexed:
            log.info("indexed %d finished tasks for their retention", indexed)
