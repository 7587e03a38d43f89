"""Event filters and consumer bookkeeping rules, independent of transport and storage."""

from __future__ import annotations

from dataclasses import dataclass

from statekeeper_server.domain.model import Event, EventKind, NodeKey

EventPosition = tuple[int, int]
"""(revision, index): events are totally ordered by it."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Empty fields match everything."""

    root_id: str = ""
    path_prefix: tuple[NodeKey, ...] = ()
    machine_types: frozenset[str] = frozenset()
    kinds: frozenset[EventKind] = frozenset()

    def matches(self, event: Event) -> bool:
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.machine_types and event.node_type not in self.machine_types:
            return False
        if self.root_id:
            address = event.address
            if address is None or address.root_id != self.root_id:
                return False
            n = len(self.path_prefix)
            if n and address.path[:n] != self.path_prefix:
                return False
        return True
