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
from collections.abc import Iterator
from typing import Protocol


class Keyspace(enum.Enum):
    """One column family per keyspace. Values are the column family names on disk."""

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
    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None: ...

    def delete(self, keyspace: Keyspace, key: bytes) -> None: ...

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
    ) -> list[tuple[bytes, bytes]]:
        """Up to limit pairs with start <= key < end, in key order (descending when reverse)."""
        ...

    async def seek(self, keyspace: Keyspace, key: bytes) -> tuple[bytes, bytes] | None:
        """The first pair whose key is >= key."""
        ...


class Store(Protocol):
    def get(self, keyspace: Keyspace, key: bytes) -> bytes | None: ...

    def scan(
        self, keyspace: Keyspace, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end in key order (descending when reverse)."""
        ...

    def seek(self, keyspace: Keyspace, key: bytes) -> tuple[bytes, bytes] | None:
        """The first pair whose key is >= key."""
        ...

    def durable(self) -> DurableView:
        """The newest published durable view."""
        ...

    def publish_durable(self) -> None:
        """Everything written so far is durable now: readers may see it."""
        ...

    def new_batch(self) -> WriteBatch: ...

    def write(self, batch: WriteBatch, *, sync: bool) -> None:
        """Write the whole batch atomically; with sync, return only once it is on disk."""
        ...

    def sync_wal(self) -> None:
        """Make every write so far durable (fsync the write-ahead log). Blocking; safe to call
        from another thread, and must not hold the GIL while it waits on the disk."""
        ...

    def checkpoint(self, path: str) -> None:
        """A consistent copy of the whole store in a new folder."""
        ...

    def close(self) -> None: ...


class StoreError(Exception):
    """The store cannot be opened or used; the message says why in words a person can act on."""
