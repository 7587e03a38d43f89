"""The single committer: builds every queued write in order, hands each group to the store as
one atomic, durable write, and answers once the group is durable.

Writes arrive as Intents (Engine.commit). The committer runs their builds one after another on
the event loop, so transactions never interleave and each sees every earlier one: the store's
live state (every group written so far) plus the group being built. It assigns the store-wide
revision and hands the group to the store (`write_group`). RocksDB writes it unsynced and
fsyncs the WAL on a thread (which releases the GIL); heavy writes that arrive meanwhile are
built during the sync, light ones right after it (one wake per group). PostgreSQL runs one
transaction per group (fenced by shard ownership; the revision counter row orders the commits
of all servers) and takes one group at a time. The next group is written only after the store
reported the previous one durable and published its durable view, so no client ever reads what
is not yet durable (guarantee 2) and nobody waits behind a sync to read.

Every intent of a group (applied, refused, replayed or a no-op) is answered only once the group
is durable: a refusal or a replayed answer may rest on state written earlier in the group.

A build that reads what the store does not hold in memory (NotCached, cluster mode) is put back
at the head of the queue; the store loads what was missing and the build runs again.

Failures. A failpoint before the write answers the group "not applied" and goes on. On a local
store a write or sync that fails leaves the state unknown (the group may sit in the memtable and
reappear after a restart), so the committer fails stop: the group's callers are told the
outcome is unknown (retry with the same request_id), the built-but-unwritten group and
everything queued "not applied", every later call is refused, and the server exits (on_fatal).
A remote store (PostgreSQL) reports not applied / unknown / shards lost, and service goes on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statekeeper_server.core.pending import Mutation as Mutation  # re-exported for the features
from statekeeper_server.domain.errors import DomainError, Unavailable
from statekeeper_server.domain.model import Event, MachineType
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import (
    GroupWrite,
    Keyspace,
    NotApplied,
    NotCached,
    ShardsLost,
    Store,
    WriteBatch,
)

log = logging.getLogger("statekeeper.commit")

WAKE_WEIGHT = 64
"""Queued operations that wake the committer to build while a sync is in flight. Measured at
16 too: plain unary calls at 64 callers lost 15 % (a wake per 16 calls while the loop is
already saturated) and pipelined calls gained nothing."""

BUILD_SLICE_S = 0.002
"""Builds run in slices this long between looks at the write in flight."""

MAX_FAULTS = 50
"""A build that still misses data after this many loads is refused (a defect, or a store that
keeps losing what it loaded)."""


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
    shard: int = 0
    # Its events as stored: (key, bytes), what the event hub keeps.
    event_rows: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Whether it may write task queue entries (timers, outbound): the executors look only then.
    queues_tasks: bool = True


class Intent:
    """A write waiting for the committer. `build(revision)` runs in the committer: it returns
    (the sealed commit or None for a no-op, the answer) or raises a DomainError (a refusal,
    nothing written). The future resolves with the answer once its group is durable."""

    __slots__ = (
        "answer",
        "build",
        "commit",
        "error",
        "faults",
        "future",
        "replayed",
        "shard",
        "versioned",
        "weight",
    )

    def __init__(
        self,
        build: Callable[[int], tuple[PendingCommit | None, Any]],
        versioned: bool,
        weight: int = 1,
        shard: int = 0,
    ) -> None:
        self.build = build
        self.versioned = versioned
        self.weight = weight  # about how many operations the build applies
        self.shard = shard
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.commit: PendingCommit | None = None
        self.answer: Any = None
        self.error: BaseException | None = None
        self.replayed = False  # answered from a request_id record (maybe of an unsynced group)
        self.faults = 0


def _spent(revision: int) -> tuple[PendingCommit | None, Any]:
    raise AssertionError("an answered intent is not built again")


def _let_go(intent: Intent) -> None:
    """Drop an answered intent's build: it usually refers back to the intent (a cycle), which
    would keep the whole request and its outcome alive until a garbage collection."""
    intent.build = _spent


class InjectedFault(Exception):
    """A fault switched on by a failpoint (tests only)."""


def outcome_unknown(error: BaseException) -> Unavailable:
    return Unavailable(
        "COMMIT_OUTCOME_UNKNOWN",
        f"the store failed while this write was being made durable ({error}); it may or may not "
        "have been applied: retry with the same request_id to learn which",
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


def not_owner(shard: int) -> Unavailable:
    return Unavailable(
        "NOT_SHARD_OWNER",
        f"this server does not own shard {shard} (any more); nothing was applied: retry (any "
        "server forwards to the owner)",
        shard=shard,
    )


@dataclass
class CommitStats:
    commits: int = 0
    groups: int = 0
    last_group_size: int = 0
    last_write_seconds: float = 0.0


@dataclass
class _Group:
    intents: list[Intent]
    commits: list[PendingCommit]
    top: int  # highest revision in the group (0: none)
    size: int = 0  # key writes
    batch_size: int = 0
    started: float = 0.0
    first: int = 0  # first revision (0: none)


@dataclass
class _Write:
    """A group write in flight."""

    group: _Group
    done: bool = False
    error: BaseException | None = None
    answered: bool = False  # its callers were answered as soon as it was durable


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
        is_owned: Callable[[int], bool] = lambda shard: True,
        on_shards_lost: Callable[[frozenset[int]], None] = lambda shards: None,
        on_store_trouble: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._fsync = fsync
        self.durable_revision = durable_revision
        self.next_revision = durable_revision + 1
        self._max_group = max_group_mutations
        self._max_group_commits = max_group_commits
        self._linger_turns = linger_turns
        self._linger_s = linger_s
        self._queue: deque[Intent] = deque()
        self._on_durable = on_durable
        self._on_group_start = on_group_start
        self._on_fatal = on_fatal
        self._is_owned = is_owned
        self._on_shards_lost = on_shards_lost
        self._on_store_trouble = on_store_trouble
        self._failpoints = dict(failpoints or {})
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failed: BaseException | None = None
        self.stats = CommitStats()
        self.write_listeners: list[Callable[[int, int, float], None]] = []
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self._signal: asyncio.Future[None] | None = None
        self._writing = False
        self._queued_weight = 0
        self._missing: NotCached | None = None
        self.revision_hint: Callable[[], int] | None = None
        # The server's calls in flight (the committer lingers for those not queued yet).
        self.calls_in_flight: Callable[[], int] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="committer")

    def enqueue(self, intent: Intent) -> None:
        if self.failed is not None:
            raise store_failed()
        self._queue.append(intent)
        self._idle.clear()
        self._queued_weight += intent.weight
        if not self._writing or (self._store.pipelined and self._queued_weight >= WAKE_WEIGHT):
            # While a group is being written the committer wakes when that ends and builds
            # what arrived meanwhile (one wake per group, not one per small write), or at
            # once when enough work has queued to be worth building during a sync.
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

    # -- the loop ----------------------------------------------------------------------------

    def _wake(self, _: object = None) -> None:
        signal = self._signal
        if signal is not None and not signal.done():
            signal.set_result(None)

    async def _sleep(self) -> None:
        """Until a write is enqueued, the committer is stopped, or the write in flight ends."""
        signal = self._signal = asyncio.get_running_loop().create_future()
        await signal

    async def _run(self) -> None:
        writing: _Write | None = None
        building: _Group | None = None  # built, not yet written: waits for the write in flight
        group: _Group | None = None  # being handed to the store
        pipelined = self._store.pipelined
        try:
            while True:
                if writing is not None and writing.done:
                    # Answer the durable group first: its callers send the next writes.
                    self._finish(writing, building)
                    writing = None
                    continue
                if self._missing is not None and writing is None and building is None:
                    await self._fault_in()
                    continue
                can_build = self._missing is None and (writing is None or pipelined)
                if can_build and self._queue and (building is None or not self._full(building)):
                    if building is None:
                        if writing is None:
                            await self._linger()
                        building = self._start_group()
                    # Builds run a slice at a time. While the previous group syncs, the next
                    # one grows (fewer, larger fsyncs) and its CPU work overlaps the disk;
                    # with nothing in flight, what one slice built is written at once.
                    self._build_into(building, time.perf_counter() + BUILD_SLICE_S)
                    if writing is not None:
                        continue
                elif writing is not None:
                    if not writing.done:
                        await self._sleep()
                    continue
                if building is not None:
                    group, building = building, None
                    if not group.commits:
                        self._resolve(group)
                        continue
                    try:
                        writing = self._write(group)
                    except InjectedFault as e:
                        self._refuse(group, e)
                    continue
                if self._missing is not None:
                    continue
                self._idle.set()
                if self._stopping:
                    return
                await self._sleep()
        except _FailStop:
            return
        except Exception as e:
            # A defect (in the committer, or a write it assembled that the store refuses):
            # without the committer nothing would ever be answered again, so fail stop. Whatever
            # it held may or may not have been written: its callers are told so.
            log.error("the committer failed", exc_info=e)
            held = {id(g): g for g in (writing.group if writing else None, group, building) if g}
            try:
                self._fail(_Group([i for g in held.values() for i in g.intents], [], 0), e, "the committer")
            except _FailStop:
                return

    async def _linger(self) -> None:
        """Group commit: before building, give the loop a few turns while intents keep arriving
        (gRPC hands requests to handlers over several turns). Not when every call in flight is
        already queued (a lone caller: nobody else to wait for)."""
        if self._linger_turns <= 0:
            return
        calls = self.calls_in_flight
        if calls is not None and calls() <= len(self._queue):
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
        hint = self.revision_hint
        if hint is not None and not self._writing:
            # Other servers' commits (cluster mode): build from the newest revision known, so
            # the store rarely has to ask for the group again.
            self.next_revision = max(self.next_revision, hint() + 1)
        return _Group([], [], 0)

    def _full(self, group: _Group) -> bool:
        return group.size >= self._max_group or len(group.intents) >= self._max_group_commits

    def _build_into(self, group: _Group, until: float) -> None:
        """Run queued builds in order into group, until it is full, the queue is empty, the
        clock passes until (at least one build runs), or a build misses data (NotCached)."""
        queue = self._queue
        clock = time.perf_counter
        first = True
        while queue and not self._full(group) and (first or clock() < until):
            first = False
            intent = queue.popleft()
            self._queued_weight -= intent.weight
            if not self._is_owned(intent.shard):
                intent.error = not_owner(intent.shard)
                group.intents.append(intent)
                continue
            try:
                self._run_build(intent, group)
            except NotCached as missing:
                # Everything built so far is written first; then the store loads what is
                # missing and this build runs again at the head of the queue.
                queue.appendleft(intent)
                self._queued_weight += intent.weight
                intent.faults += 1
                missing.token = intent
                self._missing = missing
                return
            group.intents.append(intent)

    def _run_build(self, intent: Intent, group: _Group) -> None:
        revision = self.next_revision if intent.versioned else 0
        intent.commit, intent.answer, intent.error, intent.replayed = None, None, None, False
        store = self._store
        store.build_shard = intent.shard
        store.build_token = intent
        try:
            commit, intent.answer = intent.build(revision)
        except NotCached:
            if intent.faults >= MAX_FAULTS:
                log.error("a write kept missing data after %d loads; refused", intent.faults)
                intent.error = Unavailable(
                    "STORE_UNAVAILABLE", "the store could not provide what this write needs; retry"
                )
                return
            raise
        except DomainError as e:
            intent.error = e
            return
        except Exception as e:  # a defect in a build: refuse this write only
            log.exception("building a commit failed")
            intent.error = e
            return
        finally:
            store.build_token = None
        if commit is None:
            return
        commit.shard = intent.shard
        intent.commit = commit
        group.commits.append(commit)
        group.size += len(commit.mutations)
        if commit.revision:
            if not group.first:
                group.first = commit.revision
            group.top = commit.revision
            self.next_revision = commit.revision + 1

    async def _fault_in(self) -> None:
        missing, self._missing = self._missing, None
        assert missing is not None
        try:
            await self._store.fault_in(missing)
        except Exception as e:
            # The store cannot be read now (a remote store down): refuse the write that
            # needed it, not applied; the others go on.
            log.warning("loading %s failed: %s", missing, e)
            if self._queue:
                intent = self._queue.popleft()
                self._queued_weight -= intent.weight
                intent.future.set_exception(
                    Unavailable(
                        "STORE_UNAVAILABLE", f"the store is unavailable ({e}); nothing applied: retry"
                    )
                )
                intent.future.exception()
                _let_go(intent)
            self._on_store_trouble()

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

    def _batch(self, group: _Group) -> WriteBatch:
        batch = self._store.new_batch()
        write_all, set_shard = batch.write_all, batch.set_shard
        for commit in group.commits:
            set_shard(commit.shard)
            write_all(commit.mutations)
        if group.top:  # a group of bookkeeping writes only (revision 0) leaves the revision alone
            set_shard(0)
            batch.put(Keyspace.META, keys.META_REVISION, keys.u64(group.top))
        group.batch_size = len(batch)
        return batch

    def _before_sync(self) -> None:
        """On the store's side, once the group is written and before it is durable."""
        delay = self._failpoints.get("commit.sync_delay")
        if delay:
            time.sleep(float(delay))
        if self._failpoint("commit.fsync", "error"):
            raise OSError(errno.EIO, "failpoint commit.fsync: fsync failed")

    def _rebuild(self, group: _Group, first: int) -> tuple[WriteBatch, int]:
        """Build the group again from revision `first` (another server committed since it was
        built; the store holds the lock that orders commits while this runs). Every build
        reads what it read before (all in memory), so only the revisions change."""
        self._on_group_start()
        self.next_revision = first
        intents = group.intents
        group.intents, group.commits, group.size, group.top, group.first = [], [], 0, 0, 0
        for intent in intents:
            if intent.error is not None and not isinstance(intent.error, DomainError):
                group.intents.append(intent)  # refused before the build (not owned)
                continue
            try:
                self._run_build(intent, group)
            except NotCached as e:  # cannot happen: the first build loaded everything
                intent.error = Unavailable("STORE_UNAVAILABLE", f"a write's data left memory ({e}); retry")
            group.intents.append(intent)
        return self._batch(group), group.top

    def _write(self, group: _Group) -> _Write:
        """Hand the group to the store; the returned _Write is done once it is durable."""
        if self._failpoint("commit.before_write", "error"):
            raise InjectedFault("failpoint commit.before_write")
        write = _Write(group)
        batch = self._batch(group)
        group.started = time.perf_counter()
        # Every shard the group's answers rest on is fenced, refusals and replays included.
        shards = frozenset(i.shard for i in group.intents)

        def done(error: BaseException | None) -> None:
            write.done, write.error = True, error
            self._writing = False
            if error is None:
                # Durable: publish and answer now, in this callback, rather than a loop turn
                # later in the committer's task (under load a turn is milliseconds).
                self._durable(group)
                write.answered = True
            self._wake()

        self._writing = True
        try:
            if not self._fsync:
                self._store.write(batch, sync=False)
                write.done = True
                self._writing = False
            else:
                self._store.write_group(
                    GroupWrite(
                        batch,
                        group.first,
                        group.top,
                        shards,
                        self._before_sync,
                        lambda first: self._rebuild(group, first),
                    ),
                    done,
                )
        except Exception as e:
            self._writing = False
            if self._store.fail_stop:
                self._fail(group, e, "writing a commit group")
            write.done, write.error = True, NotApplied(str(e))
        return write

    def _finish(self, write: _Write, built: _Group | None) -> None:
        if write.answered:
            return
        group, error = write.group, write.error
        if error is not None:
            self._failed_write(group, error, built)
            return
        self._durable(group)

    def _durable(self, group: _Group) -> None:
        """The group is durable: publish the store's durable view, tell the listeners, answer."""
        elapsed = time.perf_counter() - group.started
        if self._failpoint("commit.after_write", "crash"):
            import os

            log.critical("failpoint commit.after_write: crashing after the write, before any reply")
            os._exit(70)
        self._store.publish_durable()
        if group.top:
            self.durable_revision = max(self.durable_revision, group.top)
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

    def _failed_write(self, group: _Group, error: BaseException, built: _Group | None) -> None:
        if self._store.fail_stop:
            self._fail(group, error, "syncing the write-ahead log", built)
        # A remote store: nothing of the group is in the store's memory any more either way
        # (the store dropped what the group may have changed); revisions are read again.
        assert built is None, "a remote store takes one group at a time"
        if isinstance(error, ShardsLost):
            # Not applied. Writes for shards still owned go round again; the others are
            # refused so their callers (or the forwarding server) retry at the new owner.
            log.warning("%s: %d writes go to the new owners", error, len(group.intents))
            self._on_shards_lost(error.shards)
            again = [i for i in group.intents if i.shard not in error.shards and i.error is None]
            for intent in group.intents:
                if intent.shard in error.shards:
                    self._set_error(intent, not_owner(intent.shard))
                elif intent.error is not None:
                    self._resolve_one(intent)
            self._queue.extendleft(reversed(again))
            self._queued_weight += sum(i.weight for i in again)
        else:
            exc = not_applied(error) if isinstance(error, NotApplied) else outcome_unknown(error)
            log.error(
                "a commit group failed (%s): %d writes answered %s", error, len(group.intents), exc.reason
            )
            for intent in group.intents:
                self._set_error(intent, exc)
            self._on_store_trouble()
        self.next_revision = self.durable_revision + 1

    @staticmethod
    def _set_error(intent: Intent, error: BaseException) -> None:
        if not intent.future.done():
            intent.future.set_exception(error)
            intent.future.exception()  # retrieved: a caller that went away must not warn
        _let_go(intent)

    @classmethod
    def _resolve_one(cls, intent: Intent) -> None:
        future = intent.future
        if future.done():  # its caller went away (cancelled the wait)
            _let_go(intent)
            return
        if intent.error is not None:
            cls._set_error(intent, intent.error)
        else:
            future.set_result(intent.answer)
            _let_go(intent)

    @classmethod
    def _resolve(cls, group: _Group) -> None:
        for intent in group.intents:
            cls._resolve_one(intent)

    def _refuse(self, group: _Group, error: BaseException) -> None:
        """The group was not written: answer it "not applied". Queued intents were not built
        yet (nothing rests on the group), so they go on; its revisions are used again."""
        log.error(
            "commit failed before the write (%s); %d writes answered UNAVAILABLE", error, len(group.intents)
        )
        self.next_revision = self.durable_revision + 1
        exc = not_applied(error)
        for intent in group.intents:
            self._set_error(intent, exc)

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
            self._set_error(intent, unknown)
        rest = not_applied(error)
        for intent in built.intents if built is not None else ():
            self._set_error(intent, unknown if intent.replayed else rest)
        for intent in self._queue:
            self._set_error(intent, rest)
        self._queue.clear()
        self._queued_weight = 0
        self._idle.set()
        self._on_fatal(error)
        raise _FailStop


class _FailStop(Exception):
    """Raised inside the committer loop to end it after a fatal store error."""
