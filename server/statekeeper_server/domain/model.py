"""The domain model: machine types, node addresses and records, tasks and events.

Plain Python objects only. Records are mutable for speed but treated as values: whoever changes
one works on a copy (see NodeRecord.copy), so a record read from a view is never altered in place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

NodeKey = tuple[str, str]
"""(machine type name, node id): a node's key among its siblings."""


class NodeAddress(NamedTuple):
    """A node: its tree's root id and the keys from the root's child down to it.

    A named tuple rather than a dataclass: addresses are hashed several times per operation,
    and tuple hashing and equality run in C.
    """

    root_id: str
    path: tuple[NodeKey, ...] = ()

    def child(self, key: NodeKey) -> NodeAddress:
        return NodeAddress(self.root_id, (*self.path, key))

    def parent(self) -> NodeAddress | None:
        return NodeAddress(self.root_id, self.path[:-1]) if self.path else None

    def is_within(self, ancestor: NodeAddress) -> bool:
        """True when self is ancestor or one of its descendants."""
        n = len(ancestor.path)
        return self.root_id == ancestor.root_id and len(self.path) >= n and self.path[:n] == ancestor.path

    def __str__(self) -> str:
        return "/".join([self.root_id, *(f"{t}:{i}" for t, i in self.path)])


class TaskKind(enum.IntEnum):
    TIMER = 1
    OUTBOUND = 2


class TaskStatus(enum.IntEnum):
    PENDING = 1
    LEASED = 2
    COMPLETED = 3
    STALE = 4
    DEAD_LETTER = 5
    DISCARDED = 6


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """A task a transition emits: a timer applying `timer_transition`, or outbound work."""

    name: str
    kind: TaskKind
    delay_ms: int = 0
    deadline_from_request: bool = False
    timer_transition: str = ""
    destination: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class TransitionDefinition:
    name: str
    sources: tuple[str, ...]
    destination: str
    tasks: tuple[TaskDefinition, ...] = ()


@dataclass(frozen=True, slots=True)
class MachineType:
    """A registered machine type. Immutable; equality ignores the derived lookup tables."""

    name: str
    version: int
    states: tuple[str, ...]
    initial_state: str
    terminal_states: tuple[str, ...]
    transitions: tuple[TransitionDefinition, ...]
    description: str = ""
    _by_name: dict[str, TransitionDefinition] = field(init=False, repr=False, compare=False)
    _allowed: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _terminal: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {t.name: t for t in self.transitions}
        allowed: dict[str, list[str]] = {s: [] for s in self.states}
        for t in self.transitions:
            for s in t.sources:
                allowed.setdefault(s, []).append(t.name)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_allowed", {s: tuple(v) for s, v in allowed.items()})
        object.__setattr__(self, "_terminal", frozenset(self.terminal_states))

    def transition(self, name: str) -> TransitionDefinition | None:
        return self._by_name.get(name)

    def allowed_from(self, state: str) -> tuple[str, ...]:
        return self._allowed.get(state, ())

    def is_terminal(self, state: str) -> bool:
        return state in self._terminal


@dataclass(slots=True)
class NodeRecord:
    """What is stored for one node. The address is the storage key, not part of the record."""

    type: str
    type_version: int
    state: str
    data: bytes
    content_type: str
    transition_count: int
    create_revision: int
    update_revision: int
    terminal: bool
    child_counts: dict[str, int]

    def copy(self) -> NodeRecord:
        return NodeRecord(
            self.type,
            self.type_version,
            self.state,
            self.data,
            self.content_type,
            self.transition_count,
            self.create_revision,
            self.update_revision,
            self.terminal,
            dict(self.child_counts),
        )


@dataclass(slots=True)
class TaskRecord:
    """A task as stored: what to do, and the node incarnation and transition it belongs to."""

    task_id: str
    name: str
    kind: TaskKind
    address: NodeAddress
    node_create_revision: int
    transition_count: int
    emitted_by: str
    create_revision: int
    status: TaskStatus = TaskStatus.PENDING
    deadline_ms: int = 0
    timer_transition: str = ""
    destination: str = ""
    payload: bytes = b""
    attempts: int = 0
    last_error: str = ""
    # Outbound: epoch ms from which the task may be handed out (its commit time, or after a
    # failed attempt the end of its backoff); the outbound queue is ordered by it.
    available_ms: int = 0


class EventKind(enum.IntEnum):
    MACHINE_TYPE_REGISTERED = 1
    NODE_CREATED = 2
    NODE_TRANSITIONED = 3
    NODE_DATA_CHANGED = 4
    NODE_DELETED = 5
    TASK_CREATED = 6
    TASK_FIRED = 7
    TASK_COMPLETED = 8
    TASK_FAILED = 9
    TASK_DEAD_LETTERED = 10
    TASK_STALE = 11
    SAVEPOINT_COMPLETED = 12
    # savepoints (issue 5): runs, entity saves, tree snapshots
    RUN_INITIALISED = 13
    ENTITY_SAVED = 14
    RUN_DELETED = 15
    RUN_UPGRADED = 16
    TREE_SNAPSHOT_CREATED = 17
    TREE_RESTORED = 18
    TREE_SNAPSHOT_DELETED = 19
    ENTITY_UPDATED = 20


@dataclass(slots=True)
class Event:
    """The durable record of one change, stored under its commit's revision and an index."""

    revision: int
    index: int
    kind: EventKind
    time_ms: int
    address: NodeAddress | None = None
    node_type: str = ""
    from_state: str = ""
    to_state: str = ""
    transition: str = ""
    transition_count: int = 0
    task_id: str = ""
    detail: str = ""
    # The bytes the store holds for this event (set when it is encoded at commit or read back):
    # a stream can send them as they are instead of encoding the event again.
    encoded: bytes = field(default=b"", compare=False, repr=False)
