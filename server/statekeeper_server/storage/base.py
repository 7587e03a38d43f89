"""The storage interface the core depends on; one backend per folder (rocksdb/).

Two faces:
- the live state (get, scan, seek; synchronous): every group the committer has written,
  durable or still being synced. Only the committer's builds and housekeeping read it.
- the durable view (`durable()`, asynchronous): what clients may see. The committer publishes
  a new one after each sync (`publish_durable`), so a reader never waits behind an fsync and
  never sees a write that is not yet durable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Protocol


class Keyspace(enum.Enum):
    """One column family per keyspace. Values are the column family names on disk."""

    # Members are singletons: identity hashing (in C) instead of Enum's hash of the name (in
    # Python), which every (keyspace, key) dictionary lookup on the write path paid.
    __hash__ = object.__hash__

    META = "meta"
    TYPES = "types"
    NODES = "nodes"
    TASKS = "tasks"
    EVENTS = "events"
    REQUESTS = "requests"
    REQUEST_EXPIRY = "request_expiry"
    # tasks: node key + task key -> b"" (every task of a node or subtree, by prefix)
    TASKS_BY_NODE = "tasks_by_node"
    # tasks (executors): indexes kept by storage/indexes.py
    TIMERS = "timers"
    TASKS_FINISHED = "tasks_finished"
    OUTBOUND_QUEUE = "outbound_queue"
    DEAD_LETTERS = "dead_letters"
    # events: durable consumers, and the (type, state) index for active listing
    CONSUMERS = "consumers"
    NODE_INDEX = "node_index"
    # savepoints: runs, their savepoints, tree snapshots
    RUNS = "runs"
    SAVEPOINTS = "savepoints"
    TREE_SNAPSHOTS = "tree_snapshots"
    # savepoints (storage/keys.py, "savepoints" section): entity progress, pending contributions,
    # the states of complete savepoints, the nodes and tasks of tree snapshots
    RUN_ENTITIES = "run_entities"
    SAVEPOINT_PARTS = "savepoint_parts"
    SAVEPOINT_STATES = "savepoint_states"
    TREE_SNAPSHOT_ITEMS = "tree_snapshot_items"


class WriteBatch(Protocol):
    def set_shard(self, shard: int) -> None:
        """The shard the following writes belong to (cluster mode; one store: always 0)."""
        ...

    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None: ...

    def delete(self, keyspace: Keyspace, key: bytes) -> None: ...

    def write_all(self, mutations: list[tuple[Keyspace, bytes, bytes | None]]) -> None:
        """put (a value) or delete (None) each, in order: a commit's writes in one call."""
        ...

    def delete_range(self, keyspace: Keyspace, start: bytes, end: bytes) -> None:
        """Delete every key in [start, end)."""
        ...

    def __len__(self) -> int: ...


class DurableView(Protocol):
    """A consistent view of durable state. Take one per client read (engine.reads does) and
    use it for the whole read, so every key it reads comes from the same moment."""

    async def get(self, keyspace: Keyspace, key: bytes) -> bytes | None: ...

    async def get_many(self, keyspace: Keyspace, keys: list[bytes]) -> list[bytes | None]: ...

    async def scan(
        self,
        keyspace: Keyspace,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        limit: int,
        reverse: bool = False,
        shards: Collection[int] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Up to limit pairs with start <= key < end, in key order (descending when reverse);
        with shards, only keys of those shards (cluster mode)."""
        ...

    async def seek(self, keyspace: Keyspace, key: bytes) -> tuple[bytes, bytes] | None:
        """The first pair whose key is >= key."""
        ...


@dataclass
class GroupWrite:
    """What the committer hands the store for one commit group."""

    batch: WriteBatch
    first_revision: int  # 0: a group of bookkeeping only
    top_revision: int
    shards: frozenset[int]  # the shards the group writes (fenced in cluster mode)
    # Runs where the group's outcome becomes certain (before the fsync / the COMMIT): the
    # committer's failpoints.
    before_sync: Callable[[], None]
    # Builds the group again from another first revision (cluster mode: another server
    # committed since); returns the new batch and top revision.
    rebuild: Callable[[int], tuple[WriteBatch, int]]


class Store(Protocol):
    # True: the committer may build the next group while one is being written (RocksDB: the
    # group is in the memtable before its sync). False: one group at a time (PostgreSQL).
    pipelined: bool
    # True: a failed group write leaves the store unknown, the server must stop (a local
    # disk). False: the store stays usable, the failed group is reported (a remote database).
    fail_stop: bool
    # The shard whose data the next build reads, and the write being built (set by the
    # committer around each build; a cluster store ties what it loaded for a build to it).
    build_shard: int
    build_token: object

    def get(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        """Live state, for builds only; may raise NotCached (cluster mode)."""
        ...

    def get_many(self, keyspace: Keyspace, keys: list[bytes]) -> list[bytes | None]:
        """get of each key (one multi-get where the store has it); may raise NotCached."""
        ...

    def scan(
        self, keyspace: Keyspace, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end in key order (descending when reverse). Live state, for
        builds and housekeeping; may raise NotCached (cluster mode)."""
        ...

    def durable(self) -> DurableView:
        """The newest published durable view."""
        ...

    def publish_durable(self) -> None:
        """Everything written so far is durable now: readers may see it."""
        ...

    def new_batch(self) -> WriteBatch: ...

    def write(self, batch: WriteBatch, *, sync: bool) -> None:
        """Write a batch of housekeeping atomically, outside the committer's groups."""
        ...

    def write_group(self, group: GroupWrite, done: Callable[[BaseException | None], None]) -> None:
        """Start writing a commit group durably; call done(None) once it is durable (on the
        event loop), or done(error): NotApplied, OutcomeUnknown, ShardsLost, or any other
        error (the store's state is unknown). Raising here: nothing was written."""
        ...

    async def fault_in(self, missing: NotCached) -> None:
        """Load what a build missed (cluster mode)."""
        ...

    def checkpoint(self, path: str) -> int:
        """A consistent copy of the whole store in a new folder; returns the revision the copy
        holds. May run on a thread while the loop writes."""
        ...

    def reclaim(self, keyspace: Keyspace, start: bytes | None, end: bytes | None) -> None:
        """Give back the disk space of keys deleted in [start, end) (None: open-ended). Slow;
        call it on a thread (housekeeping after large deletions)."""
        ...

    def close(self) -> None: ...


class StoreError(Exception):
    """The store cannot be opened or used; the message says why in words a person can act on."""


class StoreUnreachable(StoreError):
    """The store cannot be reached now (a database server down or failing over): starting again
    later may work, so the server exits with a temporary-failure code (EX_TEMPFAIL, 75)."""


class BackupNotSupported(StoreError):
    """This store's backups are made with its own tools (the message says which)."""


class NotCached(Exception):
    """A build read something the store does not hold in memory (cluster mode): the committer
    loads it (fault_in) and runs the build again. `end` None: the single key `start`, and the
    keys `more` (a multi-get's misses, loaded together)."""

    def __init__(
        self,
        shard: int,
        keyspace: Keyspace,
        start: bytes,
        end: bytes | None = None,
        more: list[bytes] | None = None,
    ) -> None:
        super().__init__(f"{keyspace.value} {start!r}..{end!r} of shard {shard} is not in memory")
        self.shard = shard
        self.keyspace = keyspace
        self.start = start
        self.end = end
        self.more: list[bytes] = more or []
        self.token: object = None  # the write whose build missed it (set by the committer)


class NotApplied(Exception):
    """A group write failed before anything became durable: nothing of it was applied."""


class OutcomeUnknown(Exception):
    """A group write failed while being made durable: it may or may not have been applied."""


class ShardsLost(Exception):
    """The group writes shards this server no longer owns (fencing): nothing was applied."""

    def __init__(self, shards: frozenset[int]) -> None:
        super().__init__(f"this server no longer owns shard(s) {sorted(shards)}")
        self.shards = shards
