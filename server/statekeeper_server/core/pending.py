"""What has been applied in memory but is not yet durable.

The write path validates against durable state plus this overlay, so operations queued behind an
unfinished commit see its effects. Client reads never look here (guarantee 2). An entry is
dropped once the commit that wrote it (or a later one) is durable.
"""

from __future__ import annotations

from collections.abc import Iterable

from statekeeper_server.domain.model import MachineType, NodeRecord
from statekeeper_server.storage.base import Keyspace


class PendingOverlay:
    def __init__(self) -> None:
        # node key -> (record or None for deleted, revision that wrote it)
        self.nodes: dict[bytes, tuple[NodeRecord | None, int]] = {}
        self.types: dict[tuple[str, int], MachineType] = {}
        # (keyspace, key) -> (value or None for deleted, revision): writes made through Commit.put
        self.raw: dict[tuple[Keyspace, bytes], tuple[bytes | None, int]] = {}

    def put_nodes(self, items: Iterable[tuple[bytes, NodeRecord | None]], revision: int) -> None:
        nodes = self.nodes
        for key, record in items:
            nodes[key] = (record, revision)

    def release(
        self,
        node_keys: Iterable[bytes],
        type_keys: Iterable[tuple[str, int]],
        raw_keys: Iterable[tuple[Keyspace, bytes]],
        revision: int,
    ) -> None:
        """Drop entries written at or before revision, now durable."""
        nodes = self.nodes
        for key in node_keys:
            entry = nodes.get(key)
            if entry is not None and entry[1] <= revision:
                del nodes[key]
        raw = self.raw
        for rk in raw_keys:
            raw_entry = raw.get(rk)
            if raw_entry is not None and raw_entry[1] <= revision:
                del raw[rk]
        for tk in type_keys:
            self.types.pop(tk, None)

    def clear(self) -> None:
        self.nodes.clear()
        self.types.clear()
        self.raw.clear()
