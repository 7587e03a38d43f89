"""What the group being built has written so far, for the builds after it in the same group.

The committer builds a group's commits one after another, then writes the group as one batch;
until then a later commit of the group reads the earlier ones' writes here. Cleared when the
next group starts: by then this one is in the store. Client reads never look here.
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

    def clear(self) -> None:
        self.nodes.clear()
        self.types.clear()
        self.raw.clear()
