"""Tree snapshots: a whole tree's nodes and pending tasks stored under a name, restored in place
or forked into a new root through the normal commit path.

A snapshot is taken inside its commit, so it holds the tree exactly as of the revision before
(the one recorded). Only live pending tasks are kept: a task whose node has moved on is stale
already.

Restoring writes the snapshot's nodes through the commit's node transaction: nodes the tree has
gained since are deleted, the others get the snapshot's state and data with their transition
count moved past both the current and the snapshot's count, so every task reference issued
before the restore is stale. The snapshot's pending tasks are re-created with fresh ids and
references to the restored nodes. Every change is an event (node created / transitioned / data
changed / deleted, task created) plus one TREE_RESTORED.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from statekeeper_server.core.engine import Commit, Engine
from statekeeper_server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
)
from statekeeper_server.domain.model import EventKind, NodeAddress, NodeRecord, TaskRecord, TaskStatus
from statekeeper_server.domain.savepoints import TreeSnapshotInfo
from statekeeper_server.domain.transaction import NodeSnapshot, Transaction
from statekeeper_server.domain.validation import check_id
from statekeeper_server.features.savepoints.runs import detail
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace

_NODE = b"n"
_TASK = b"t"


@dataclass(frozen=True, slots=True)
class RestoreOutcome:
    root: NodeSnapshot
    node_count: int  # nodes written (restored or created)
    deleted_count: int  # nodes the tree had gained since the snapshot
    task_count: int  # pending tasks re-created


SnapshotItems = tuple[TreeSnapshotInfo, list[tuple[NodeAddress, NodeRecord]], list[TaskRecord]]


def _decode_items(
    root_id: str, name: str, header: bytes | None, items: Iterable[tuple[bytes, bytes]], n: int
) -> SnapshotItems:
    if header is None:
        raise NotFound(
            "SNAPSHOT_NOT_FOUND",
            f"tree {root_id!r} has no snapshot {name!r}",
            root_id=root_id,
            name=name,
        )
    nodes: list[tuple[NodeAddress, NodeRecord]] = []
    tasks: list[TaskRecord] = []
    for k, value in items:
        kind = k[n : n + 1]
        if kind == _NODE:
            nodes.append((keys.node_address(k[n + 1 :]), codec.decode_node(value)))
        elif kind == _TASK:
            tasks.append(codec.decode_task(value))
    return codec.decode_tree_snapshot(header), nodes, tasks


def _live(task: TaskRecord, node: NodeRecord | None) -> bool:
    return (
        node is not None
        and node.create_revision == task.node_create_revision
        and node.transition_count == task.transition_count
    )


class TreeSnapshots:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.limits = engine.limits

    def _check(self, root_id: str, name: str) -> None:
        check_id(root_id, "root_id", self.limits)
        check_id(name, "name", self.limits)

    # -- reads -------------------------------------------------------------------------------

    async def list_snapshots(self, root_id: str) -> list[TreeSnapshotInfo]:
        check_id(root_id, "root_id", self.limits)
        prefix = root_id.encode() + b"\x00"
        view = self.engine.reads.view()
        found = await view.scan(Keyspace.TREE_SNAPSHOTS, prefix, keys.prefix_end(prefix), limit=1_000_000)
        return [codec.decode_tree_snapshot(raw) for _, raw in found]

    def _items(self, c: Commit, root_id: str, name: str) -> SnapshotItems:
        """A snapshot's header, nodes (parents first) and tasks, as this commit sees them."""
        key = keys.tree_snapshot_key(root_id, name)
        prefix = keys.tree_snapshot_items_prefix(root_id, name)
        return _decode_items(
            root_id,
            name,
            c.get(Keyspace.TREE_SNAPSHOTS, key),
            c.scan(Keyspace.TREE_SNAPSHOT_ITEMS, prefix, keys.prefix_end(prefix)),
            len(prefix),
        )

    async def read_items(self, root_id: str, name: str) -> SnapshotItems:
        """A snapshot as durably stored, read before a commit: how a fork into a tree of
        another shard (cluster mode) gets it (a snapshot never changes; it is only deleted)."""
        self._check(root_id, name)
        view = self.engine.reads.view()
        prefix = keys.tree_snapshot_items_prefix(root_id, name)
        header = await view.get(Keyspace.TREE_SNAPSHOTS, keys.tree_snapshot_key(root_id, name))
        items = await view.scan(
            Keyspace.TREE_SNAPSHOT_ITEMS,
            prefix,
            keys.prefix_end(prefix),
            limit=4 * self.limits.max_deleted_nodes,
        )
        return _decode_items(root_id, name, header, items, len(prefix))

    # -- commit bodies -----------------------------------------------------------------------

    def create(self, c: Commit, root_id: str, name: str) -> TreeSnapshotInfo:
        self._check(root_id, name)
        key = keys.tree_snapshot_key(root_id, name)
        if c.get(Keyspace.TREE_SNAPSHOTS, key) is not None:
            raise AlreadyExists(
                "SNAPSHOT_EXISTS",
                f"tree {root_id!r} already has a snapshot {name!r}; delete it or choose another name",
                root_id=root_id,
                name=name,
            )
        root = NodeAddress(root_id)
        root_key = keys.node_key(root)
        revision = c.revision - 1
        nodes = c.scan(Keyspace.NODES, root_key, root_key + keys.SUBTREE_END)
        if not nodes or nodes[0][0] != root_key:
            raise NotFound("NODE_NOT_FOUND", f"node {root} does not exist", node=str(root))
        if len(nodes) > self.limits.max_deleted_nodes:
            raise ResourceExhausted(
                "TOO_MANY_NODES",
                f"tree {root_id!r} has {len(nodes)} nodes; a snapshot holds at most {self.limits.max_deleted_nodes}",
                limit="max_deleted_nodes",
            )
        prefix = keys.tree_snapshot_items_prefix(root_id, name)
        records: dict[bytes, NodeRecord] = {}
        for node_key, node_raw in nodes:
            records[node_key] = codec.decode_node(node_raw)
            c.put(Keyspace.TREE_SNAPSHOT_ITEMS, prefix + _NODE + node_key, node_raw)
        task_count = 0
        for index_key, _ in c.scan(Keyspace.TASKS_BY_NODE, root_key, keys.prefix_end(root_key)):
            task_key = index_key[-12:]
            task_raw = c.get(Keyspace.TASKS, task_key)
            if task_raw is None:
                continue
            task = codec.decode_task(task_raw)
            if task.status is TaskStatus.PENDING and _live(task, records.get(keys.node_key(task.address))):
                c.put(Keyspace.TREE_SNAPSHOT_ITEMS, prefix + _TASK + task_key, task_raw)
                task_count += 1
        info = TreeSnapshotInfo(root_id, name, revision, c.revision, c.now_ms, len(nodes), task_count)
        c.put(Keyspace.TREE_SNAPSHOTS, key, codec.encode_tree_snapshot(info))
        c.event(
            EventKind.TREE_SNAPSHOT_CREATED,
            root,
            node_type=records[root_key].type,
            detail=detail(name=name, revision=revision, nodes=len(nodes), tasks=task_count),
        )
        return info

    def delete(self, c: Commit, root_id: str, name: str) -> None:
        self._check(root_id, name)
        _, nodes, tasks = self._items(c, root_id, name)
        prefix = keys.tree_snapshot_items_prefix(root_id, name)
        for address, _ in nodes:
            c.delete(Keyspace.TREE_SNAPSHOT_ITEMS, prefix + _NODE + keys.node_key(address))
        for task in tasks:
            task_key = keys.task_key(task.task_id)
            assert task_key is not None
            c.delete(Keyspace.TREE_SNAPSHOT_ITEMS, prefix + _TASK + task_key)
        c.delete(Keyspace.TREE_SNAPSHOTS, keys.tree_snapshot_key(root_id, name))
        c.event(EventKind.TREE_SNAPSHOT_DELETED, NodeAddress(root_id), detail=detail(name=name))

    def restore(self, c: Commit, root_id: str, name: str) -> RestoreOutcome:
        self._check(root_id, name)
        info, nodes, tasks = self._items(c, root_id, name)
        txn = c.transaction()
        root = NodeAddress(root_id)
        current = [root] if txn.get(root) is not None else []
        current.extend(txn.view.descendants(root))
        current = [a for a in current if txn.get(a) is not None]
        wanted = {a for a, _ in nodes}
        gone = [a for a in current if a not in wanted]
        if len(gone) + len(nodes) > self.limits.max_deleted_nodes:
            raise ResourceExhausted(
                "TOO_MANY_NODES",
                f"restoring {root_id!r} would write {len(gone) + len(nodes)} nodes; the limit is {self.limits.max_deleted_nodes}",
                limit="max_deleted_nodes",
            )
        for address in gone:
            before = txn.get(address)
            assert before is not None
            self._put(txn, address, None, before)
            c.event(
                EventKind.NODE_DELETED,
                address,
                node_type=before.type,
                from_state=before.state,
                detail="1",
            )
        restored: dict[NodeAddress, NodeRecord] = {}
        for address, snap in nodes:
            before = txn.get(address)
            record = snap.copy()
            record.update_revision = c.revision
            if before is None:
                record.create_revision = c.revision
                record.transition_count = snap.transition_count + 1
                c.event(EventKind.NODE_CREATED, address, node_type=record.type, to_state=record.state)
            else:
                record.create_revision = before.create_revision
                record.transition_count = max(before.transition_count, snap.transition_count) + 1
                c.event(
                    EventKind.NODE_TRANSITIONED,
                    address,
                    node_type=record.type,
                    from_state=before.state,
                    to_state=record.state,
                    transition_count=record.transition_count,
                    detail=detail(restore=name),
                )
                if (before.data, before.content_type) != (record.data, record.content_type):
                    c.event(
                        EventKind.NODE_DATA_CHANGED, address, node_type=record.type, to_state=record.state
                    )
            self._put(txn, address, record, before)
            restored[address] = record
        task_count = self._recreate_tasks(c, txn, tasks, restored, root_id)
        c.event(
            EventKind.TREE_RESTORED,
            root,
            node_type=restored[root].type,
            detail=detail(
                mode="restore",
                name=name,
                revision=info.revision,
                nodes=len(nodes),
                deleted=len(gone),
                tasks=task_count,
            ),
        )
        return RestoreOutcome(NodeSnapshot(root, restored[root]), len(nodes), len(gone), task_count)

    def fork(
        self, c: Commit, root_id: str, name: str, new_root_id: str, items: SnapshotItems | None = None
    ) -> RestoreOutcome:
        """items: the snapshot read beforehand (read_items), when it lives in another shard."""
        self._check(root_id, name)
        check_id(new_root_id, "new_root_id", self.limits)
        info, nodes, tasks = items if items is not None else self._items(c, root_id, name)
        txn = c.transaction()
        new_root = NodeAddress(new_root_id)
        if txn.get(new_root) is not None:
            raise AlreadyExists("NODE_EXISTS", f"node {new_root} already exists", node=str(new_root))
        created: dict[NodeAddress, NodeRecord] = {}
        for address, snap in nodes:
            target = NodeAddress(new_root_id, address.path)
            record = snap.copy()
            record.create_revision = record.update_revision = c.revision
            self._put(txn, target, record, None)
            created[target] = record
            c.event(EventKind.NODE_CREATED, target, node_type=record.type, to_state=record.state)
        if new_root not in created:
            raise FailedPrecondition("SNAPSHOT_DAMAGED", f"snapshot {name!r} of {root_id!r} has no root node")
        task_count = self._recreate_tasks(c, txn, tasks, created, new_root_id)
        c.event(
            EventKind.TREE_RESTORED,
            new_root,
            node_type=created[new_root].type,
            detail=detail(
                mode="fork", name=name, source_root_id=root_id, revision=info.revision, tasks=task_count
            ),
        )
        return RestoreOutcome(NodeSnapshot(new_root, created[new_root]), len(nodes), 0, task_count)

    @staticmethod
    def _put(
        txn: Transaction, address: NodeAddress, record: NodeRecord | None, before: NodeRecord | None
    ) -> None:
        if address not in txn.nodes:
            txn.before[address] = before
        txn.nodes[address] = record

    @staticmethod
    def _recreate_tasks(
        c: Commit,
        txn: Transaction,
        tasks: list[TaskRecord],
        nodes: dict[NodeAddress, NodeRecord],
        root_id: str,
    ) -> int:
        count = 0
        for old in tasks:
            address = NodeAddress(root_id, old.address.path)
            node = nodes.get(address)
            if node is None:
                continue
            task = TaskRecord(
                task_id=f"{c.revision}-{len(txn.tasks)}",
                name=old.name,
                kind=old.kind,
                address=address,
                node_create_revision=node.create_revision,
                transition_count=node.transition_count,
                emitted_by=old.emitted_by,
                create_revision=c.revision,
                status=TaskStatus.PENDING,
                deadline_ms=old.deadline_ms,
                timer_transition=old.timer_transition,
                destination=old.destination,
                payload=old.payload,
            )
            txn.tasks.append(task)
            c.event(
                EventKind.TASK_CREATED, address, node_type=node.type, task_id=task.task_id, detail=task.name
            )
            count += 1
        return count
