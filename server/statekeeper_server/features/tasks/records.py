"""Reading and writing task records inside a commit, with their indexes and events.

Every status change of a task goes through write_task, so the record and its indexes
(storage/indexes.py) change in the same commit."""

from __future__ import annotations

from statekeeper_server.core.engine import Commit
from statekeeper_server.domain.errors import NotFound
from statekeeper_server.domain.model import EventKind, NodeRecord, TaskRecord, TaskStatus
from statekeeper_server.domain.tasks import check_task_id, with_status
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.indexes import task_index_mutations

QUEUED = (TaskStatus.PENDING, TaskStatus.LEASED)


def task_key(task_id: str) -> bytes:
    """The storage key of a task id, refusing a malformed id (INVALID_ARGUMENT)."""
    check_task_id(task_id)
    key = keys.task_key(task_id)
    assert key is not None
    return key


def read_task(c: Commit, key: bytes) -> TaskRecord | None:
    raw = c.get(Keyspace.TASKS, key)
    return codec.decode_task(raw) if raw is not None else None


def require_task(c: Commit, task_id: str) -> TaskRecord:
    task = read_task(c, task_key(task_id))
    if task is None:
        raise NotFound("TASK_NOT_FOUND", f"task {task_id} does not exist", task_id=task_id)
    return task


def write_task(c: Commit, new: TaskRecord, previous: TaskRecord) -> None:
    """Store a changed task and move its index entries, in this commit."""
    key = keys.task_key(new.task_id)
    assert key is not None
    c.put(Keyspace.TASKS, key, codec.encode_task(new))
    for keyspace, index_key, value in task_index_mutations(new, previous, c.now_ms):
        if value is None:
            c.delete(keyspace, index_key)
        else:
            c.put(keyspace, index_key, value)


def drop_stale(
    c: Commit, task: TaskRecord, node: NodeRecord | None, reason: str, attempted: bool
) -> TaskRecord:
    """Record the task as stale (it applies nothing), with a TASK_STALE event."""
    new = with_status(task, TaskStatus.STALE, attempts=task.attempts + (1 if attempted else 0))
    write_task(c, new, task)
    c.event(
        EventKind.TASK_STALE,
        task.address,
        node_type=node.type if node is not None else "",
        task_id=task.task_id,
        detail=reason,
    )
    return new
