"""What the group being built has written so far, for the builds after it in the same group.

The committer builds a group's commits one after another, then writes the group as one batch;
until then a later commit of the group reads the earlier ones' writes here. Cleared when the
next group starts: by then this one is in the store. Client reads never look here.
"""

from __future__ import annotations

from collections.abc import Iterable

from statekeeper_server.domain.model import MachineType, NodeRecord
from statekeeper_server.storage.base import Keyspace

Mutation = tuple[Keyspace, bytes, bytes | None]


class PendingOverlay:
    def __init__(self) -> None:
        # node key -> (record or None for deleted, revision that wrote it)
        self.nodes: dict[bytes, tuple[NodeRecord | None, int]] = {}
        self.types: dict[tuple[str, int], MachineType] = {}
        # (keyspace, key) -> (value or None for deleted, revision): every key written, once
        # folded in (writes()); sealed commits are folded only when something reads them, which
        # the hot path (transitions, batches) never does.
        self._written: dict[tuple[Keyspace, bytes], tuple[bytes | None, int]] = {}
        self._unfolded: list[tuple[list[Mutation], int]] = []

    def put_nodes(self, items: Iterable[tuple[bytes, NodeRecord | None]], revision: int) -> None:
        nodes = self.nodes
        for key, record in items:
            nodes[key] = (record, revision)

    def add_sealed(self, mutations: list[Mutation], revision: int) -> None:
        """A sealed commit's key writes (kept as they are until something reads them)."""
        self._unfolded.append((mutations, revision))

    def writes(self) -> dict[tuple[Keyspace, bytes], tuple[bytes | None, int]]:
        """Every key the group has written so far, the latest write of each. Write into it only
        through this method (it folds the sealed commits in first, so order is kept)."""
        if self._unfolded:
            written = self._written
            for mutations, revision in self._unfolded:
                for keyspace, key, value in mutations:
                    written[(keyspace, key)] = (value, revision)
            self._unfolded.clear()
        return self._written

    def clear(self) -> None:
        self.nodes.clear()
        self.types.clear()
        self._written.clear()
        self._unfolded.clear()
