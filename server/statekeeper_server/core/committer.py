"""The single committer: group commit of everything ready into one synced WriteBatch.

Callers apply their transaction in memory, enqueue a PendingCommit and await its future. The
committer takes every commit that is ready (bounded by a mutation count), writes them with the
store-wide revision as one WriteBatch with sync, and only then resolves the futures: many
concurrent callers share one fsync, and nobody is answered before their write is on disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from statekeeper_server.domain.errors import Unavailable
from statekeeper_server.domain.model import Event, MachineType
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.commit")

Mutation = tuple[Keyspace, bytes, bytes | None]


@dataclass(slots=True)
class PendingCommit:
    revision: int
    mutations: list[Mutation]
    node_keys: list[bytes]
    new_types: list[MachineType]
    raw_keys: list[tuple[Keyspace, bytes]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class InjectedFault(Exception):
    """A fault switched on by a failpoint (tests only)."""


class FatalStoreError(Exception):
    """The store failed in a way that leaves its state unknown; the server must stop."""


@dataclass
class CommitStats:
    commits: int = 0
    groups: int = 0
    last_group_size: int = 0
    last_write_seconds: float = 0.0


class Committer:
    def __init__(
        self,
        store: Store,
        *,
        fsync: bool,
        durable_revision: int,
        max_group_mutations: int = 200_000,
        max_group_commits: int = 10_000,
        linger_turns: int = 8,
        linger_s: float = 0.001,
        sync_off_loop: bool = True,
        on_durable: Callable[[list[PendingCommit]], None],
        on_reset: Callable[[], None],
        on_fatal: Callable[[BaseException], None],
        failpoints: dict[str, str] | None = None,
    ) -> None:
        self._store = store
        self._fsync = fsync
        self.durable_revision = durable_revision
        self._max_group = max_group_mutations
        self._max_group_commits = max_group_commits
        self._linger_turns = linger_turns
        self._linger_s = linger_s
        self._sync_off_loop = sync_off_loop
        self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wal-sync")
        # Set while a written group's WAL is being synced: see durable_barrier().
        self.flushing: asyncio.Future[None] | None = None
        self._writing: list[PendingCommit] = []  # the group being written and synced
        self._barrier_waiters = 0  # readers waiting for the current sync (durable_barrier)
        self._queue: deque[PendingCommit] = deque()
        self._wakeup = asyncio.Event()
        self._on_durable = on_durable
        self._on_reset = on_reset
        self._on_fatal = on_fatal
        self._failpoints = dict(failpoints or {})
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failed: BaseException | None = None
        self.stats = CommitStats()
        self.write_listeners: list[Callable[[int, int, float], None]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="committer")

    def enqueue(self, commit: PendingCommit) -> None:
        if self.failed is not None:
            raise Unavailable(
                "STORE_FAILED", "the store failed and the server is stopping; retry on a healthy server"
            )
        self._queue.append(commit)
        self._wakeup.set()

    async def wait_durable(self, revision: int) -> None:
        """Return once every commit up to revision is durable."""
        if revision <= self.durable_revision:
            return
        for commit in reversed([*self._writing, *self._queue]):
            if 0 < commit.revision <= revision:
                await asyncio.shield(commit.future)
                return
        if self.failed is not None or revision > self.durable_revision:
            raise Unavailable(
                "COMMIT_FAILED", "the commit this answer depends on did not become durable; retry"
            )

    async def durable_barrier(self) -> None:
        """Return once nothing written to the store is still waiting for its fsync, so what a
        reader sees next is durable (guarantee 2). Free unless a group is being synced.

        The caller must read synchronously after this returns (no await in between). Waiters
        are counted, and the committer lets every one of them run before it writes the next
        unsynced group, so a woken reader cannot be overtaken by newer unsynced data.
        """
        flushing = self.flushing
        if flushing is None:
            return
        self._barrier_waiters += 1
        try:
            await asyncio.shield(flushing)
        finally:
            self._barrier_waiters -= 1

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._syncer.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._linger()
            group = self._take_group()
            self._writing = group
            try:
                await self._write(group)
            except InjectedFault as e:
                log.error(
                    "commit failed before the write (%s); %d pending commits answered UNAVAILABLE",
                    e,
                    len(group) + len(self._queue),
                )
                self._writing = []
                self._reset(group, e)
                continue
            except Exception as e:  # the store's state is unknown: fail-stop
                self._writing = []
                log.critical("FATAL: writing a commit group failed (%s): stopping the server (fail-stop)", e)
                self.failed = e
                self._reset(group, e)
                self._on_fatal(e)
                return
            self._writing = []
            self.durable_revision = max(self.durable_revision, *(c.revision for c in group))
            self._on_durable(group)
            for commit in group:
                if not commit.future.done():
                    commit.future.set_result(None)

    async def _linger(self) -> None:
        """Group commit: before writing, give the loop a few turns while commits keep arriving.

        gRPC hands requests to their handlers over several loop turns, so right after a write
        only one or two commits are queued even with many callers waiting. Yielding while the
        queue grows (at most `linger_turns` turns and `linger_s` seconds, never past a full
        group) lets concurrent callers share the fsync; a lone caller pays one loop turn.
        """
        if self._linger_turns <= 0:
            return
        deadline = time.perf_counter() + self._linger_s
        for _ in range(self._linger_turns):
            queued = len(self._queue)
            await asyncio.sleep(0)
            if len(self._queue) == queued or len(self._queue) >= self._max_group_commits:
                return
            if time.perf_counter() >= deadline:
                return

    def _take_group(self) -> list[PendingCommit]:
        group = [self._queue.popleft()]
        size = len(group[0].mutations)
        while (
            self._queue
            and len(group) < self._max_group_commits
            and size + len(self._queue[0].mutations) <= self._max_group
        ):
            commit = self._queue.popleft()
            size += len(commit.mutations)
            group.append(commit)
        return group

    def _failpoint(self, name: str, action: str) -> bool:
        """Whether failpoint `name` fires `action` now (tests only). `action*N` fires only the
        first N times it is reached, then is off: e.g. one failed commit, then normal service."""
        value = self._failpoints.get(name)
        if value is None:
            return False
        act, sep, times = value.partition("*")
        if act != action:
            return False
        if not sep:
            return True
        left = int(times)
        if left <= 0:
            return False
        self._failpoints[name] = f"{act}*{left - 1}"
        return True

    async def _write(self, group: list[PendingCommit]) -> None:
        if self._failpoint("commit.before_write", "error"):
            raise InjectedFault("failpoint commit.before_write")
        batch = self._store.new_batch()
        put, delete = batch.put, batch.delete
        for commit in group:
            for keyspace, key, value in commit.mutations:
                if value is None:
                    delete(keyspace, key)
                else:
                    put(keyspace, key, value)
        top = max(c.revision for c in group)
        if top:  # a group of housekeeping writes only (revision 0) leaves the revision alone
            put(Keyspace.META, keys.META_REVISION, keys.u64(top))
        if self._failpoint("commit.fsync", "error"):
            raise OSError(5, "failpoint commit.fsync: fsync failed")
        started = time.perf_counter()
        if self._fsync and (len(group) > 1 or self._queue) and self._sync_off_loop:
            # Under contention: write without sync (brief), then fsync the WAL on a thread.
            # The synced write would hold the GIL for the whole fsync and stall gRPC and the
            # loop; flush_wal releases it, so requests keep arriving and the next group fills.
            # Until the sync returns, `flushing` holds back every read a client could see.
            # Readers released by the previous sync must read before newer unsynced data lands.
            while self._barrier_waiters:  # noqa: ASYNC110 - they resume within a turn or two
                await asyncio.sleep(0)
            self._store.write(batch, sync=False)
            flushing = self.flushing = asyncio.get_running_loop().create_future()
            try:
                await asyncio.get_running_loop().run_in_executor(self._syncer, self._store.sync_wal)
            except BaseException as e:
                flushing.set_exception(
                    Unavailable("STORE_FAILED", "the store failed and the server is stopping; retry")
                )
                flushing.exception()  # retrieved: readers that never came must not warn
                raise e
            finally:
                self.flushing = None
            flushing.set_result(None)
        else:
            self._store.write(batch, sync=self._fsync)
        elapsed = time.perf_counter() - started
        if self._failpoint("commit.after_write", "crash"):
            import os

            log.critical("failpoint commit.after_write: crashing after the write, before any reply")
            os._exit(70)
        self.stats.commits += len(group)
        self.stats.groups += 1
        self.stats.last_group_size = len(group)
        self.stats.last_write_seconds = elapsed
        for listener in self.write_listeners:
            listener(len(group), len(batch), elapsed)

    def _reset(self, group: list[PendingCommit], error: BaseException) -> None:
        """Fail the group and everything queued behind it (it was validated against the group)."""
        failed = [*group, *self._queue]
        self._queue.clear()
        self._on_reset()
        exc = Unavailable(
            "COMMIT_FAILED", f"the write could not be made durable ({error}); nothing was applied; retry"
        )
        for commit in failed:
            if not commit.future.done():
                commit.future.set_exception(exc)
                # Mark retrieved so an unawaited future does not log a warning.
                commit.future.exception()
