"""The single committer: builds every queued write in order, writes each group as one batch,
syncs it off the event loop, and answers once the group is durable.

Writes arrive as Intents (Engine.commit). The committer runs their builds one after another on
the event loop, so transactions never interleave and each sees every earlier one: the store's
live state (every group written so far) plus the group being built. It assigns the store-wide
revision, then writes the whole group as one WriteBatch without sync and fsyncs the WAL on a
thread (which releases the GIL); heavy writes that arrive meanwhile are built during the sync,
light ones right after it (one wake per group). The next group is written only
after that sync returned and the store published a new durable view, so no client ever reads
what is not yet durable (guarantee 2) and nobody waits behind the sync to read.

Every intent of a group (applied, refused, replayed or a no-op) is answered only once the group
is durable: a refusal or a replayed answer may rest on state written earlier in the group.

Failures. A failpoint before the write answers the group "not applied" and goes on. A write or
sync that fails leaves the store's state unknown (the group may sit in the memtable and reappear
after a restart), so the committer fails stop: the group's callers are told the outcome is
unknown (retry with the same request_id), the built-but-unwritten group and everything queued
"not applied", every later call is refused, and the server exits (on_fatal).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statekeeper_server.domain.errors import DomainError, Unavailable
from statekeeper_server.domain.model import Event, MachineType
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.commit")

Mutation = tuple[Keyspace, bytes, bytes | None]

WAKE_WEIGHT = 64
"""Queued operations that wake the committer to build while a sync is in flight."""

BUILD_SLICE_S = 0.002
"""Builds run in slices this long between looks at the sync in flight."""


@dataclass(slots=True)
class PendingCommit:
    """One sealed commit of a group: its revision (0: bookkeeping without a revision), the
    key writes, and what listeners need to know (nodes written, new types, events)."""

    revision: int
    mutations: list[Mutation]
    node_keys: list[bytes]
    new_types: list[MachineType]
    raw_keys: list[tuple[Keyspace, bytes]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Intent:
    """A write waiting for the committer. `build(revision)` runs in the committer: it returns
    (the sealed commit or None for a no-op, the answer) or raises a DomainError (a refusal,
    nothing written). The future resolves with the answer once its group is durable."""

    __slots__ = ("answer", "build", "commit", "error", "future", "replayed", "versioned", "weight")

    def __init__(
        self, build: Callable[[int], tuple[PendingCommit | None, Any]], versioned: bool, weight: int = 1
    ) -> None:
        self.build = build
        self.versioned = versioned
        self.weight = weight  # about how many operations the build applies
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.commit: PendingCommit | None = None
        self.answer: Any = None
        self.error: BaseException | None = None
        self.replayed = False  # answered from a request_id record (maybe of an unsynced group)


class InjectedFault(Exception):
    """A fault switched on by a failpoint (tests only)."""


def outcome_unknown(error: BaseException) -> Unavailable:
    return Unavailable(
        "COMMIT_OUTCOME_UNKNOWN",
        f"the store failed while this write was being made durable ({error}); it may or may not "
        "have been applied: retry with the same request_id on a healthy server to learn which",
    )


def not_applied(error: BaseException) -> Unavailable:
    return Unavailable(
        "COMMIT_FAILED",
        f"the write was not applied ({error}); nothing changed: retry (with the same request_id)",
    )


def store_failed() -> Unavailable:
    return Unavailable(
        "STORE_FAILED",
        "the store failed and this server is stopping (fail-stop); retry on a healthy server "
        "with the same request_id",
    )


@dataclass
class CommitStats:
    commits: int = 0
    groups: int = 0
    last_group_size: int = 0
    last_write_seconds: float = 0.0


@dataclass
class _Sync:
    """A WAL sync in flight on the sync thread."""

    done: bool = False
    error: BaseException | None = None


@dataclass
class _Group:
    intents: list[Intent]
    commits: list[PendingCommit]
    top: int  # highest revision in the group (0: none)
    size: int = 0  # key writes
    batch_size: int = 0
    started: float = 0.0


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
        on_durable: Callable[[list[PendingCommit]], None],
        on_group_start: Callable[[], None] = lambda: None,
        on_fatal: Callable[[BaseException], None],
        failpoints: dict[str, str] | None = None,
    ) -> None:
        self._store = store
        self._fsync = fsync
        self.durable_revision = durable_revision
        self.next_revision = durable_revision + 1
        self._max_group = max_group_mutations
        self._max_group_commits = max_group_commits
        self._linger_turns = linger_turns
        self._linger_s = linger_s
        self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wal-sync")
        self._queue: deque[Intent] = deque()
        self._signal: asyncio.Future[None] | None = None
        self._syncing = False
        self._queued_weight = 0
        self._on_durable = on_durable
        self._on_group_start = on_group_start
        self._on_fatal = on_fatal
        self._failpoints = dict(failpoints or {})
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failed: BaseException | None = None
        self.stats = CommitStats()
        self.write_listeners: list[Callable[[int, int, float], None]] = []
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="committer")

    def enqueue(self, intent: Intent) -> None:
        if self.failed is not None:
            raise store_failed()
        self._queue.append(intent)
        self._idle.clear()
        self._queued_weight += intent.weight
        if not self._syncing or self._queued_weight >= WAKE_WEIGHT:
            # While a sync is in flight the committer wakes when it ends and builds what
            # arrived meanwhile (one wake per group, not one per small write), or at once
            # when enough work has queued to be worth building during the sync.
            self._wake()

    async def settled(self) -> None:
        """Return once everything enqueued so far is answered."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._stopping = True
        self._wake()
        if self._task is not None:
            await self._task
        self._syncer.shutdown(wait=True)

    # -- the loop ----------------------------------------------------------------------------

    def _wake(self, _: object = None) -> None:
        signal = self._signal
        if signal is not None and not signal.done():
            signal.set_result(None)

    async def _sleep(self) -> None:
        """Until a write is enqueued, the committer is stopped, or the sync in flight finishes."""
        signal = self._signal = asyncio.get_running_loop().create_future()
        await signal

    async def _run(self) -> None:
        syncing: tuple[_Group, _Sync] | None = None
        building: _Group | None = None  # built, not yet written: waits for the sync in flight
        try:
            while True:
                if syncing is not None and syncing[1].done:
                    # Answer the durable group first: its callers send the next writes.
                    await self._finish(*syncing, built=building)
                    syncing = None
                    continue
                if self._queue and (building is None or not self._full(building)):
                    if building is None:
                        if syncing is None:
                            await self._linger()
                        building = self._start_group()
                    # Builds run a slice at a time. While the previous group syncs, the next
                    # one grows (fewer, larger fsyncs) and its CPU work overlaps the disk;
                    # with nothing syncing, what one slice built is written at once.
                    self._build_into(building, time.perf_counter() + BUILD_SLICE_S)
                    if syncing is not None:
                        continue
                elif syncing is not None:
                    if building is None or not self._full(building):
                        await self._sleep()
                        continue
                    # The next group is written only once the previous one is durable and
                    # published: readers of the durable view never see unsynced writes.
                    await self._finish(*syncing, built=building)
                    syncing = None
                    continue
                if building is not None:
                    group, building = building, None
                    if not group.commits:
                        self._resolve(group)
                        continue
                    try:
                        syncing = (group, self._write(group))
                    except InjectedFault as e:
                        self._refuse(group, e)
                    continue
                self._idle.set()
                if self._stopping:
                    return
                await self._sleep()
        except _FailStop:
            return

    async def _linger(self) -> None:
        """Group commit: before building, give the loop a few turns while intents keep arriving
        (gRPC hands requests to handlers over several turns). A lone caller pays one turn."""
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

    def _start_group(self) -> _Group:
        self._on_group_start()
        return _Group([], [], 0)

    def _full(self, group: _Group) -> bool:
        return group.size >= self._max_group or len(group.intents) >= self._max_group_commits

    def _build_into(self, group: _Group, until: float) -> None:
        """Run queued builds in order into group, until it is full, the queue is empty, or the
        clock passes until (at least one build runs)."""
        queue = self._queue
        clock = time.perf_counter
        first = True
        while queue and not self._full(group) and (first or clock() < until):
            first = False
            intent = queue.popleft()
            self._queued_weight -= intent.weight
            group.intents.append(intent)
            revision = self.next_revision if intent.versioned else 0
            try:
                commit, intent.answer = intent.build(revision)
            except DomainError as e:
                intent.error = e
                continue
            except Exception as e:  # a defect in a build: refuse this write only
                log.exception("building a commit failed")
                intent.error = e
                continue
            if commit is None:
                continue
            intent.commit = commit
            group.commits.append(commit)
            group.size += len(commit.mutations)
            if commit.revision:
                group.top = commit.revision
                self.next_revision = commit.revision + 1

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

    def _write(self, group: _Group) -> _Sync:
        """Write the group unsynced (on the loop: brief), start its WAL sync on a thread."""
        if self._failpoint("commit.before_write", "error"):
            raise InjectedFault("failpoint commit.before_write")
        batch = self._store.new_batch()
        put, delete = batch.put, batch.delete
        for commit in group.commits:
            for keyspace, key, value in commit.mutations:
                if value is None:
                    delete(keyspace, key)
                else:
                    put(keyspace, key, value)
        if group.top:  # a group of bookkeeping writes only (revision 0) leaves the revision alone
            put(Keyspace.META, keys.META_REVISION, keys.u64(group.top))
        group.batch_size = len(batch)
        group.started = time.perf_counter()
        try:
            self._store.write(batch, sync=False)
        except Exception as e:
            self._fail(group, e, "writing a commit group")
        sync = _Sync()
        if not self._fsync:
            sync.done = True
            return sync
        self._syncing = True
        self._syncer.submit(self._sync, sync, asyncio.get_running_loop())
        return sync

    def _sync(self, sync: _Sync, loop: asyncio.AbstractEventLoop) -> None:
        """On the sync thread: fsync the WAL, then wake the committer (one loop hop)."""
        try:
            delay = self._failpoints.get("commit.sync_delay")
            if delay:
                time.sleep(float(delay))
            if self._failpoint("commit.fsync", "error"):
                raise OSError(errno.EIO, "failpoint commit.fsync: fsync failed")
            self._store.sync_wal()
        except BaseException as e:
            sync.error = e
        finally:
            loop.call_soon_threadsafe(self._synced, sync)

    def _synced(self, sync: _Sync) -> None:
        sync.done = True
        self._syncing = False
        self._wake()

    async def _finish(self, group: _Group, sync: _Sync, built: _Group | None = None) -> None:
        while not sync.done:
            await self._sleep()
        if sync.error is not None:
            self._fail(group, sync.error, "syncing the write-ahead log", built)
        elapsed = time.perf_counter() - group.started
        if self._failpoint("commit.after_write", "crash"):
            import os

            log.critical("failpoint commit.after_write: crashing after the write, before any reply")
            os._exit(70)
        self._store.publish_durable()
        if group.top:
            self.durable_revision = group.top
        stats = self.stats
        stats.commits += len(group.commits)
        stats.groups += 1
        stats.last_group_size = len(group.commits)
        stats.last_write_seconds = elapsed
        for listener in self.write_listeners:
            try:
                listener(len(group.commits), group.batch_size, elapsed)
            except Exception:
                log.exception("a commit metrics listener failed (the commit is durable)")
        try:
            self._on_durable(group.commits)
        except Exception:
            log.exception("a durable listener failed (the commit is durable)")
        self._resolve(group)

    @staticmethod
    def _resolve(group: _Group) -> None:
        for intent in group.intents:
            future = intent.future
            if future.done():
                continue
            if intent.error is not None:
                future.set_exception(intent.error)
                future.exception()  # retrieved: a caller that went away must not warn
            else:
                future.set_result(intent.answer)

    def _refuse(self, group: _Group, error: BaseException) -> None:
        """The group was not written: answer it "not applied". Queued intents were not built
        yet (nothing rests on the group), so they go on; its revisions are used again."""
        log.error(
            "commit failed before the write (%s); %d writes answered UNAVAILABLE", error, len(group.intents)
        )
        self.next_revision = self.durable_revision + 1
        exc = not_applied(error)
        for intent in group.intents:
            if not intent.future.done():
                intent.future.set_exception(exc)
                intent.future.exception()

    def _fail(self, group: _Group, error: BaseException, what: str, built: _Group | None = None) -> None:
        """Fail-stop: the store's state is unknown. Never returns. `group` was written (its
        outcome is unknown); `built` was built on it but not written: not applied, except
        answers replayed from a request record, which may rest on the failed group."""
        self.failed = error
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            log.critical(
                "FATAL: the disk is full (%s failed: %s): stopping the server (fail-stop)", what, error
            )
        else:
            log.critical("FATAL: %s failed (%s): stopping the server (fail-stop)", what, error)
        unknown = outcome_unknown(error)
        for intent in group.intents:
            if not intent.future.done():
                intent.future.set_exception(unknown)
                intent.future.exception()
        rest = not_applied(error)
        for intent in built.intents if built is not None else ():
            if not intent.future.done():
                intent.future.set_exception(unknown if intent.replayed else rest)
                intent.future.exception()
        for intent in self._queue:
            if not intent.future.done():
                intent.future.set_exception(rest)
                intent.future.exception()
        self._queue.clear()
        self._queued_weight = 0
        self._idle.set()
        self._on_fatal(error)
        raise _FailStop


class _FailStop(Exception):
    """Raised inside the committer loop to end it after a fatal store error."""
