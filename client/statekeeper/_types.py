"""The SDK's own value types, so common calls need no protobuf messages."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union


def _escape(id: str) -> str:
    return id.replace("%", "%25").replace("/", "%2F")


_UNESCAPE = re.compile(r"%(25|2[fF])")


def _unescape(text: str) -> str:
    # Only the two escapes the notation makes; any other "%" stays as typed ("50%off").
    return _UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else "/", text)


@dataclass(frozen=True)
class Ref:
    """Where a node is: its tree's root id and the (type, id) keys below the root.

    Its text form (str(), Ref.parse, the CLI, and any str passed where a node is expected) is
    `root/type:id/type:id`: "/" separates the keys and the first ":" of a key ends its type
    (types cannot hold ":"; ids can). Ids holding "/" or "%" are written with "%2F" and "%25",
    so every id has a text form: Ref("a/b") prints as "a%2Fb", and Ref.parse("a%2Fb") is
    Ref("a/b"). Other "%" signs are taken as typed.
    """

    root_id: str
    path: tuple[tuple[str, str], ...] = ()

    def child(self, type: str, id: str) -> Ref:
        return Ref(self.root_id, (*self.path, (type, id)))

    @property
    def is_root(self) -> bool:
        return not self.path

    @classmethod
    def parse(cls, text: str) -> Ref:
        """'order-1' or 'order-1/item:i-1/part:p-2' (the form str() prints)."""
        root, *rest = text.split("/")
        if not root:
            raise ValueError(f"node reference {text!r} has an empty root id (form: root/type:id/...)")
        path = []
        for part in rest:
            type_, sep, id_ = part.partition(":")
            if not sep or not type_ or not id_:
                raise ValueError(
                    f"path element {part!r} must be type:id (in {text!r}; form: root/type:id/...; "
                    "write a '/' inside an id as %2F)"
                )
            path.append((type_, _unescape(id_)))
        return cls(_unescape(root), tuple(path))

    def __str__(self) -> str:
        return "/".join([_escape(self.root_id), *(f"{t}:{_escape(i)}" for t, i in self.path)])


RefLike = Union[Ref, str, "Node"]
"""A node: a Ref, a Node, or the text form "root/type:id/..." (see Ref)."""


def as_ref(value: RefLike) -> Ref:
    if isinstance(value, Ref):
        return value
    if isinstance(value, Node):
        return value.ref
    if isinstance(value, str):
        return Ref.parse(value)
    raise TypeError(f"expected a Ref, a Node or 'root/type:id/...' text, got {type(value).__name__}")


def as_root_id(value: RefLike) -> str:
    """The root id of a reference that must name a root (tree snapshots)."""
    ref = as_ref(value)
    if ref.path:
        raise ValueError(
            f"{ref} is not a root: tree snapshots are taken of whole trees, give {ref.root_id!r}"
        )
    return ref.root_id


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
    status: str  # "pending", "leased", "completed", "stale", "dead_letter", "discarded"
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
    # From get_task: when a pending outbound task is next handed out (epoch ms; 0 = now), and
    # the current lease of a leased one.
    next_attempt_ms: int = 0
    lease_worker_id: str = ""
    lease_expires_ms: int = 0


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


@dataclass(frozen=True)
class Event:
    """A durable change event. (revision, index) orders events; kind is e.g. "node_transitioned"."""

    revision: int
    index: int
    kind: str
    time_ms: int
    ref: Ref | None
    machine_type: str = ""
    from_state: str = ""
    to_state: str = ""
    transition: str = ""
    transition_count: int = 0
    task_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Delivery:
    """An event delivered to a consumer; acknowledge it with client.ack(consumer, delivery)."""

    event: Event
    delivery_count: int


@dataclass(frozen=True)
class Consumer:
    name: str
    acked_revision: int
    unacked_count: int
    lag_revisions: int
    subscribers: int
    ack_wait_ms: int
    max_unacked: int
    create_revision: int
    root_id: str = ""
    machine_types: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class LeasedTask:
    """An outbound task leased to a worker: settle it with complete_task, fail_task or
    release_task (the SDK's Worker does this for you)."""

    task: Task
    token: str
    expires_ms: int

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def payload(self) -> bytes:
        return self.task.payload

    @property
    def ref(self) -> Ref:
        return self.task.ref

    @property
    def destination(self) -> str:
        return self.task.destination

    @property
    def attempts(self) -> int:
        """Attempts made before this one."""
        return self.task.attempts


@dataclass(frozen=True)
class Completion:
    """What a worker's handler may return: a transition to apply to the task's node (with new
    data and task inputs) when the task is completed. Returning None completes without one; a
    string is a transition name; a (transition, data) tuple works too."""

    transition: str = ""
    data: bytes | str | None = None
    content_type: str = ""
    task_inputs: Sequence[TaskInput] = ()


@dataclass(frozen=True)
class CompleteResult:
    task: Task
    revision: int
    node_state: str = ""
    node_transition_count: int = 0
    emitted_tasks: tuple[Task, ...] = ()


@dataclass(frozen=True)
class FailResult:
    """task is pending again (retried at next_attempt_ms), dead_letter, or stale."""

    task: Task
    revision: int
    next_attempt_ms: int = 0


@dataclass(frozen=True)
class HeartbeatResult:
    lease_expires_ms: int
    stale: bool = False


# -- savepoints ---------------------------------------------------------------------------------

State = bytes | str
"""An entity's state: opaque bytes (str is sent UTF-8 encoded)."""

Upgrade = Callable[[dict[str, bytes]], Mapping[str, bytes]]
"""Upgrades every entity's state (entity id -> state) from one schema version to the next."""


@dataclass(frozen=True)
class Run:
    """A run: entities whose states are collected into scheduled savepoints (Runbox's StateStore)."""

    run_id: str
    start_ms: int
    schedule_ms: int  # savepoint interval; 0: the run makes no savepoints
    schema_version: int
    keep_count: int  # newest complete savepoints kept
    entity_count: int
    latest_savepoint_ms: int | None  # None: no complete savepoint yet
    savepoint_count: int
    next_savepoint_ms: int | None  # the oldest savepoint not complete yet
    create_revision: int
    create_time_ms: int


@dataclass(frozen=True)
class EntitySave:
    """Save an entity's state at a timestamp (epoch ms)."""

    run_id: str
    entity_id: str
    timestamp_ms: int
    state: State


@dataclass(frozen=True)
class EntityUpdate:
    """Set an entity's current state (persists nothing until acknowledged)."""

    run_id: str
    entity_id: str
    state: State


@dataclass(frozen=True)
class EntityAck:
    """An entity has processed everything up to processed_time_ms."""

    run_id: str
    entity_id: str
    processed_time_ms: int


@dataclass(frozen=True)
class SaveResult:
    """What one save or acknowledgement did: the savepoints it filled (first..last, count) and
    the entity's next savepoint."""

    filled_count: int
    first_filled_ms: int
    last_filled_ms: int
    next_savepoint_ms: int

    @property
    def saved(self) -> bool:
        return self.filled_count > 0


@dataclass(frozen=True)
class SaveOutcome:
    """revision 0 when nothing was written; completed: (run id, timestamp) of each savepoint that
    became complete and was persisted."""

    revision: int
    results: tuple[SaveResult, ...]
    completed: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Savepoint:
    """A loaded complete savepoint. damaged_timestamps: newer savepoints skipped because their
    checksum failed (fell_back is then True). upgraded_from: the schema version stored, when
    upgrade functions were applied on load; written_back: the upgrade was stored."""

    run_id: str
    timestamp_ms: int
    schema_version: int
    states: dict[str, bytes]
    damaged_timestamps: tuple[int, ...] = ()
    fell_back: bool = False
    upgraded_from: int | None = None
    written_back: bool = False


@dataclass(frozen=True)
class SavepointInfo:
    timestamp_ms: int
    schema_version: int
    entity_count: int
    size_bytes: int
    revision: int
    create_time_ms: int


@dataclass(frozen=True)
class TreeSnapshot:
    """A named snapshot of a tree as of `revision`."""

    root_id: str
    name: str
    revision: int
    create_revision: int
    create_time_ms: int
    node_count: int
    task_count: int


@dataclass(frozen=True)
class TreeRestore:
    """The outcome of restoring or forking a tree snapshot."""

    root: Node
    revision: int
    node_count: int
    deleted_count: int
    task_count: int


@dataclass(frozen=True)
class ClusterMember:
    """A live server of a cluster and the shards it owns now."""

    server_id: str
    address: str
    is_self: bool  # the server that answered
    owned_shards: tuple[int, ...]


@dataclass(frozen=True)
class ServerInfo:
    """What a server says about itself (GetServerInfo)."""

    version: str
    revision: int
    durable_revision: int
    store: str  # "rocksdb" (embedded) or "postgresql" (cluster mode)
    store_location: str  # the data folder, or the PostgreSQL address without its password
    fsync: bool
    start_time_ms: int
    server_time_ms: int
    oldest_event_revision: int
    shard_count: int  # 0 on the embedded store
    cluster_members: tuple[ClusterMember, ...]  # empty on the embedded store


@dataclass(frozen=True)
class Backup:
    """A backup folder on the server's machine; start a server on a copy of it to restore."""

    name: str
    path: str
    revision: int
    size_bytes: int
    create_time_ms: int
