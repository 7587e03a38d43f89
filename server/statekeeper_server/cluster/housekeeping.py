"""Request ids and finished tasks in cluster mode: each server deletes what expired in the shards
it owns, every second, by the same rules as one server (core/requests.py expired_records,
features/tasks/retention.py finished_records).

Request ids and tasks live in their shard's rows. Every chunk of deletions is one transaction
that first passes the shard's fence, as a commit does (PgStore.fenced): a server that lost the
shard (paused, partitioned, rebalanced) deletes nothing in it, and while the chunk runs no
commit for the shard can (the fence's row lock), so what it reads is what it deletes. Which
shards have anything due is asked first, in one read, so idle shards cost no transaction.
Expiry is by the clock of the server that sweeps (request ids: that of the server that
committed them; finished tasks: likewise), so a clock skew between servers moves it by as much.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from statekeeper_server.core.requests import SWEEP_CHUNK as REQUEST_CHUNK
from statekeeper_server.core.requests import expired_records, now_ms
from statekeeper_server.core.shards import ShardMap
from statekeeper_server.domain.errors import DomainError
from statekeeper_server.features.tasks.retention import SWEEP_CHUNK as TASK_CHUNK
from statekeeper_server.features.tasks.retention import finished_records
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace, ShardsLost
from statekeeper_server.storage.indexes import task_key_of
from statekeeper_server.storage.postgres.store import PgStore

log = logging.getLogger("statekeeper.housekeeping")

SWEEP_INTERVAL_S = 1.0


class ShardSweeps:
    def __init__(
        self, store: PgStore, shards: ShardMap, task_retention_ms: int, interval_s: float = SWEEP_INTERVAL_S
    ) -> None:
        self._store = store
        self._shards = shards
        self.task_retention_ms = task_retention_ms
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="shard-sweeps")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except DomainError as e:  # PostgreSQL is unavailable: the next round tries again
                log.warning("deleting expired request ids and finished tasks failed: %s", e.message)
            except Exception:
                log.exception("deleting expired request ids and finished tasks failed; will retry")

    async def sweep(self) -> tuple[int, int]:
        """Delete what is due in the shards owned now; returns (request ids, tasks) deleted."""
        requests = await self._each(Keyspace.REQUEST_EXPIRY, keys.u64(now_ms() + 1), self._requests)
        tasks = 0
        if self.task_retention_ms:
            end = keys.u64(max(0, now_ms() - self.task_retention_ms))
            tasks = await self._each(Keyspace.TASKS_FINISHED, end, self._tasks)
        return requests, tasks

    async def _each(
        self, index: Keyspace, end: bytes, chunk: Callable[[int, bytes], Awaitable[int | None]]
    ) -> int:
        """Every owned shard with an index entry below end, a chunk at a time."""
        due = await self._store.durable().due_shards(index, end, sorted(self._shards.owned))
        deleted = 0
        swept: list[int] = []
        for shard in due:
            try:
                while (done := await chunk(shard, end)) is not None:
                    deleted += done
                    await asyncio.sleep(0)  # let the loop serve between chunks
            except ShardsLost:
                continue  # given up meanwhile: its new owner sweeps it
            swept.append(shard)
        if deleted:
            log.log(
                logging.INFO if deleted >= 10 * REQUEST_CHUNK else logging.DEBUG,
                "deleted %d %s in shard(s) %s",
                deleted,
                "expired request ids" if index is Keyspace.REQUEST_EXPIRY else "finished tasks",
                swept,
            )
        return deleted

    async def _requests(self, shard: int, end: bytes) -> int | None:
        async with self._store.fenced(shard) as work:
            found = [k for k, _ in await work.scan(Keyspace.REQUEST_EXPIRY, b"", end, REQUEST_CHUNK)]
            if not found:
                return None
            records = await work.get_many(Keyspace.REQUESTS, [k[8:] for k in found])
            for request_id in expired_records(found, records.get):
                work.delete(Keyspace.REQUESTS, request_id)
            for key in found:
                work.delete(Keyspace.REQUEST_EXPIRY, key)
            return len(found)

    async def _tasks(self, shard: int, end: bytes) -> int | None:
        async with self._store.fenced(shard) as work:
            found = [k for k, _ in await work.scan(Keyspace.TASKS_FINISHED, b"", end, TASK_CHUNK)]
            if not found:
                return None
            tasks = await work.get_many(Keyspace.TASKS, [task_key_of(k) for k in found])
            doomed = finished_records(found, tasks.get)
            for keyspace, key in doomed:
                work.delete(keyspace, key)
            for key in found:
                work.delete(Keyspace.TASKS_FINISHED, key)
            return len(doomed) // 2
