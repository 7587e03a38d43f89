"""Disk space back after a burst of deletions (request ids past their TTL, finished tasks past
their retention). RocksDB's own compactions drop deleted keys in steady traffic; after a burst
that is then deleted, nothing may compact for a long time. So once `after` keys were deleted and
the sweep left nothing more to delete (the keyspaces hold only what the burst left behind), the
keyspaces are compacted on a thread, which the store must outlive (close())."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.reclaim")

RECLAIM_AFTER = 10_000


class Reclaimer:
    def __init__(self, store: Store, keyspaces: tuple[Keyspace, ...], after: int = RECLAIM_AFTER) -> None:
        self._store = store
        self._keyspaces = keyspaces
        self._after = after
        self._deleted = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reclaim")
        self._running: concurrent.futures.Future[None] | None = None

    async def deleted(self, count: int, drained: bool) -> None:
        """`count` keys were deleted; `drained`: the sweep found nothing more to delete."""
        self._deleted += count
        if self._deleted < self._after or not drained or self._running is not None:
            return
        self._deleted = 0
        self._running = self._executor.submit(self._compact)
        try:
            await asyncio.wrap_future(self._running)
        finally:
            self._running = None

    def _compact(self) -> None:
        started = time.perf_counter()
        for keyspace in self._keyspaces:
            self._store.reclaim(keyspace, None, None)
        names = ", ".join(k.value for k in self._keyspaces)
        log.info("compacted %s after deletions in %.0f ms", names, (time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        running = self._running
        if running is not None:
            await asyncio.wrap_future(running)
        self._executor.shutdown(wait=True)
