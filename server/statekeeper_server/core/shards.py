"""Logical shards: how trees (and runs, consumers, machine types) are spread over the servers of
a cluster. The embedded store is one shard that its one server always owns.

A write names its shard (engine.commit(shard=...), or the call's `current_shard`, set by the
gRPC layer after routing the call); the committer refuses writes for shards this server does
not own, and the store fences every group by the shards it writes.
"""

from __future__ import annotations

import zlib
from contextvars import ContextVar

current_shard: ContextVar[int] = ContextVar("statekeeper_shard", default=0)
"""The shard of the call being served (set by the gRPC layer when it routes the call)."""


def shard_of(routing_key: str, count: int) -> int:
    """The shard of a root id, run id, consumer name or machine type name. Stable across
    servers, processes and versions (CRC-32 of the UTF-8 bytes), so every server agrees."""
    if count <= 1:
        return 0
    return zlib.crc32(routing_key.encode()) % count


class ShardMap:
    """Which shards exist and which this server owns now, with the generation it holds each by
    (cluster mode keeps it current; one store: shard 0, owned for ever)."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.owned: dict[int, int] = {0: 0} if count == 1 else {}
        # shard -> (server id, advertised address) of its current owner, as last read
        self.owners: dict[int, tuple[str, str]] = {}

    def of(self, routing_key: str) -> int:
        return shard_of(routing_key, self.count)

    def is_owned(self, shard: int) -> bool:
        return shard in self.owned
