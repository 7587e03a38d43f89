"""The secondary indexes of a task record, written in the same commit as the record.

One function decides them, so every path that writes a task (a transition emitting it, an
executor changing its status, a restore re-creating it) keeps the indexes consistent.
"""

from __future__ import annotations

from statekeeper_server.domain.model import TaskRecord
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace

Mutation = tuple[Keyspace, bytes, bytes | None]


def task_index_mutations(task: TaskRecord, previous: TaskRecord | None = None) -> list[Mutation]:
    """Mutations that make the indexes reflect `task` (replacing what `previous` indexed)."""
    task_key = keys.task_key(task.task_id)
    assert task_key is not None
    out: list[Mutation] = []
    if previous is None:
        out.append((Keyspace.TASKS_BY_NODE, keys.node_key(task.address) + task_key, b""))
    return out
