"""The SDK's own value types, so common calls need no protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Ref:
    """Where a node is: its tree's root id and the (type, id) keys below the root."""

    root_id: str
    path: tuple[tuple[str, str], ...] = ()

    def child(self, type: str, id: str) -> Ref:
        return Ref(self.root_id, (*self.path, (type, id)))

    @classmethod
    def parse(cls, text: str) -> Ref:
        """'order-1' or 'order-1/item:i-1/part:p-2' (the form str() prints)."""
        root, *rest = text.split("/")
        path = []
        for part in rest:
            type_, sep, id_ = part.partition(":")
            if not sep or not type_ or not id_:
                raise ValueError(f"path element {part!r} must be type:id")
            path.append((type_, id_))
        return cls(root, tuple(path))

    def __str__(self) -> str:
        return "/".join([self.root_id, *(f"{t}:{i}" for t, i in self.path)])


RefLike = Union[Ref, str, "Node"]


def as_ref(value: RefLike) -> Ref:
    if isinstance(value, Ref):
        return value
    if isinstance(value, Node):
        return value.ref
    return Ref(value)


@dataclass(frozen=True)
class Timer:
    """A timer task: applies `transition` to the node `delay_ms` after the commit (or at the
    request's deadline when deadline_from_request)."""

    name: str
    transition: str
    delay_ms: int = 0
    deadline_from_request: bool = False


@dataclass(frozen=True)
class Outbound:
    """An outbound task for workers of `destination`."""

    name: str
    destination: str
    payload: bytes = b""


@dataclass(frozen=True)
class Transition:
    """A named transition from any of `sources` to `destination`, emitting `tasks`."""

    name: str
    sources: Sequence[str]
    destination: str
    tasks: Sequence[Timer | Outbound] = ()


@dataclass(frozen=True)
class MachineType:
    name: str
    version: int
    states: Sequence[str]
    initial_state: str
    transitions: Sequence[Transition] = ()
    terminal_states: Sequence[str] = ()
    description: str = ""


@dataclass(frozen=True)
class Registration:
    machine_type: MachineType
    created: bool
    revision: int


@dataclass(frozen=True)
class Node:
    ref: Ref
    type: str
    type_version: int
    state: str
    data: bytes
    content_type: str
    transition_count: int
    create_revision: int
    update_revision: int
    terminal: bool
    child_counts: dict[str, int] = field(default_factory=dict)

    def json(self) -> Any:
        """The data decoded as JSON."""
        return json.loads(self.data)


@dataclass(frozen=True)
class Task:
    id: str
    name: str
    kind: str  # "timer" or "outbound"
    status: str  # "pending", "leased", "completed", "stale", "dead_letter"
    ref: Ref
    node_create_revision: int
    transition_count: int
    emitted_by: str
    create_revision: int
    deadline_ms: int = 0
    timer_transition: str = ""
    destination: str = ""
    payload: bytes = b""
    attempts: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class TransitionResult:
    node: Node
    revision: int
    from_state: str
    tasks: tuple[Task, ...] = ()


@dataclass(frozen=True)
class TaskInput:
    """Per-request values for a task the transition emits."""

    task: str
    deadline_ms: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class BatchResult:
    """revision of the commit, and per operation: a Node (create/add child), a TransitionResult,
    or the number of deleted nodes."""

    revision: int
    results: tuple[Node | TransitionResult | int, ...]
