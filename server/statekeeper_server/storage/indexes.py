"""Secondary indexes, written in the same commit as the records they index: the node index
(type, active/terminal, state) behind ListNodes, and the task indexes.

Task indexes:

One function decides them, so every path that writes a task (a transition emitting it, an
executor changing its status, a restore re-creating it) keeps the indexes consistent.

    TASKS_BY_NODE   node key + task key                      every task, by node (a subtree is a prefix)
    TIMERS          deadline_ms (u64) + task key             pending timers, by deadline
    OUTBOUND_QUEUE  destination 0x00 available_ms + task key pending outbound tasks, in hand-out order
    DEAD_LETTERS    destination 0x00 task key                dead-lettered tasks (timers: empty destination)
    TASKS_FINISHED  finished_ms (u64) + task key             completed, stale and discarded tasks, by the
                                                             time they finished (their retention)

All values are empty. Task keys are 12 bytes (keys.seq_key), so the task key is always the
last 12 bytes of an index key. Destinations are names (no NUL), so destination 0x00 is a prefix.
"""

from __future__ import annotations

from statekeeper_server.domain.model import NodeRecord, TaskKind, TaskRecord, TaskStatus
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace

Mutation = tuple[Keyspace, bytes, bytes | None]

TASK_KEY_LENGTH = 12
# A leased task stays pending in the store (leases live in memory), so both are queued.
_QUEUED = (TaskStatus.PENDING, TaskStatus.LEASED)


def timer_key(deadline_ms: int, task_key: bytes) -> bytes:
    return keys.u64(max(0, deadline_ms)) + task_key


def destination_prefix(destination: str) -> bytes:
    return destination.encode() + b"\x00"


def outbound_key(destination: str, available_ms: int, task_key: bytes) -> bytes:
    return destination_prefix(destination) + keys.u64(max(0, available_ms)) + task_key


def dead_letter_key(destination: str, task_key: bytes) -> bytes:
    return destination_prefix(destination) + task_key


FINISHED = (TaskStatus.COMPLETED, TaskStatus.STALE, TaskStatus.DISCARDED)
"""Statuses a task never leaves: kept for the task retention, then deleted."""


def finished_key(finished_ms: int, task_key: bytes) -> bytes:
    return keys.u64(max(0, finished_ms)) + task_key


def task_key_of(index_key: bytes) -> bytes:
    """The task key at the end of any index key."""
    return index_key[-TASK_KEY_LENGTH:]


def task_id_of(task_key: bytes) -> str:
    revision, index = keys.seq_key_parts(task_key)
    return f"{revision}-{index}"


def _entries(task: TaskRecord, task_key: bytes) -> list[tuple[Keyspace, bytes]]:
    if task.status in _QUEUED:
        if task.kind is TaskKind.TIMER:
            return [(Keyspace.TIMERS, timer_key(task.deadline_ms, task_key))]
        return [(Keyspace.OUTBOUND_QUEUE, outbound_key(task.destination, task.available_ms, task_key))]
    if task.status is TaskStatus.DEAD_LETTER:
        return [(Keyspace.DEAD_LETTERS, dead_letter_key(task.destination, task_key))]
    return []


def task_index_mutations(
    task: TaskRecord, previous: TaskRecord | None = None, now_ms: int = 0
) -> list[Mutation]:
    """Mutations that make the indexes reflect `task` (replacing what `previous` indexed);
    `now_ms`: the commit's time, when the task finishes in it."""
    task_key = keys.task_key(task.task_id)
    assert task_key is not None
    out: list[Mutation] = []
    if previous is None:
        out.append((Keyspace.TASKS_BY_NODE, keys.node_key(task.address) + task_key, b""))
    if task.status in FINISHED and (previous is None or previous.status not in FINISHED):
        out.append((Keyspace.TASKS_FINISHED, finished_key(now_ms, task_key), b""))
    new = _entries(task, task_key)
    old = _entries(previous, task_key) if previous is not None else []
    for keyspace, key in old:
        if (keyspace, key) not in new:
            out.append((keyspace, key, None))
    for keyspace, key in new:
        if (keyspace, key) not in old:
            out.append((keyspace, key, b""))
    return out


def node_index_mutations(
    out: list[Mutation], node: bytes, old: NodeRecord | None, new: NodeRecord | None
) -> None:
    """Keep the (type, active/terminal, state) index of a node in step with its record."""
    if (
        old is not None
        and new is not None
        and old.state == new.state
        and old.terminal == new.terminal
        and old.type == new.type
    ):
        return  # the index entry stays as it is (attributes compared: no tuples per write)
    if old is not None:
        out.append((Keyspace.NODE_INDEX, keys.node_index_key(old.type, old.terminal, old.state, node), None))
    if new is not None:
        out.append((Keyspace.NODE_INDEX, keys.node_index_key(new.type, new.terminal, new.state, node), b""))
