"""Batch: operations collected in order and applied atomically by Client.execute()."""

from __future__ import annotations

from statekeeper import _convert
from statekeeper._types import RefLike, TaskInput, as_ref
from statekeeper.v1 import common_pb2, node_pb2


class Batch:
    """Build with the methods below, then `await client.execute(batch)`: every operation
    commits under one revision, or none does (the error names the failing index)."""

    def __init__(self) -> None:
        self.operations: list[node_pb2.BatchOperation] = []

    def __len__(self) -> int:
        return len(self.operations)

    def create_root(
        self,
        type: str,
        id: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        type_version: int = 0,
    ) -> Batch:
        req = node_pb2.CreateRootRequest(
            type=type, id=id, data=_convert.data(data, content_type), type_version=type_version
        )
        self.operations.append(node_pb2.BatchOperation(create_root=req))
        return self

    def add_child(
        self,
        parent: RefLike,
        type: str,
        id: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        type_version: int = 0,
    ) -> Batch:
        req = node_pb2.AddChildRequest(
            parent=_convert.ref_pb(as_ref(parent)),
            key=common_pb2.NodeKey(type=type, id=id),
            data=_convert.data(data, content_type),
            type_version=type_version,
        )
        self.operations.append(node_pb2.BatchOperation(add_child=req))
        return self

    def transition(
        self,
        node: RefLike,
        transition: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        expected_transition_count: int | None = None,
        task_inputs: list[TaskInput] | None = None,
    ) -> Batch:
        req = node_pb2.ApplyTransitionRequest(
            node=_convert.ref_pb(as_ref(node)),
            transition=transition,
            data=_convert.data(data, content_type),
            expected_transition_count=expected_transition_count,
            task_inputs=_convert.task_inputs(task_inputs),
        )
        self.operations.append(node_pb2.BatchOperation(apply_transition=req))
        return self

    def delete(self, node: RefLike) -> Batch:
        req = node_pb2.DeleteNodeRequest(node=_convert.ref_pb(as_ref(node)))
        self.operations.append(node_pb2.BatchOperation(delete_node=req))
        return self
