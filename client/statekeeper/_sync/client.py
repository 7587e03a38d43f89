"""Client: the async statekeeper client. Its sync twin, SyncClient, is generated from this file
by scripts/gen_sync_client.py (unasync); edit here, then regenerate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from statekeeper import _convert
from statekeeper._batch import Batch
from statekeeper._channels import SyncChannel, sync_channel, sync_ready
from statekeeper._errors import from_rpc_error
from statekeeper._types import (
    BatchResult,
    MachineType,
    Node,
    RefLike,
    Registration,
    TaskInput,
    TransitionResult,
    as_ref,
)
from statekeeper.v1 import (
    common_pb2,
    machine_type_pb2,
    machine_type_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)

DEFAULT_TIMEOUT = 30.0

_DIAGRAM_FORMATS = {
    "mermaid": machine_type_pb2.DIAGRAM_FORMAT_MERMAID,
    "dot": machine_type_pb2.DIAGRAM_FORMAT_DOT,
}


class SyncClient:
    """A connection to a statekeeper server.

    Use `await Client.connect("127.0.0.1:50051")` (optionally as `async with`). Every call has a
    deadline (`timeout`, seconds) and raises a subclass of StatekeeperError carrying the gRPC
    code, the server's reason and its metadata.
    """

    def __init__(
        self,
        channel: SyncChannel,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
    ):
        self.channel = channel
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self._types = machine_type_pb2_grpc.MachineTypeServiceStub(channel)
        self._nodes = node_pb2_grpc.NodeServiceStub(channel)

    @classmethod
    def connect(
        cls,
        target: str = "127.0.0.1:50051",
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        wait_ready: float | None = 10.0,
    ) -> SyncClient:
        """Open a channel to target; wait up to wait_ready seconds for it (None: do not wait)."""
        channel = sync_channel(target, credentials)
        if wait_ready is not None:
            try:
                sync_ready(channel, wait_ready)
            except Exception as e:
                channel.close()
                raise ConnectionError(f"statekeeper server at {target} is not reachable: {e!r}") from None
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return cls(channel, timeout=timeout, metadata=metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- machine types -----------------------------------------------------------------------

    def register_machine_type(self, machine_type: MachineType) -> Registration:
        """Register a machine type; identical re-registration is a no-op (created=False)."""
        req = machine_type_pb2.RegisterMachineTypeRequest(machine_type=_convert.machine_type_pb(machine_type))
        resp = self._call(self._types.RegisterMachineType, req)
        return Registration(_convert.machine_type(resp.machine_type), resp.created, resp.revision)

    def get_machine_type(self, name: str, version: int = 0) -> MachineType:
        """One version of a machine type; the latest when version is 0."""
        resp = self._call(
            self._types.GetMachineType, machine_type_pb2.GetMachineTypeRequest(name=name, version=version)
        )
        return _convert.machine_type(resp.machine_type)

    def list_machine_types(self, *, all_versions: bool = False) -> list[MachineType]:
        """Every machine type (latest versions, or all), following page tokens."""
        out: list[MachineType] = []
        token = ""
        while True:
            req = machine_type_pb2.ListMachineTypesRequest(
                page_size=1000, page_token=token, all_versions=all_versions
            )
            resp = self._call(self._types.ListMachineTypes, req)
            out.extend(_convert.machine_type(m) for m in resp.machine_types)
            token = resp.next_page_token
            if not token:
                return out

    def render_diagram(self, name: str, version: int = 0, *, format: str = "mermaid") -> str:
        """A machine type as a Mermaid ("mermaid") or Graphviz ("dot") diagram."""
        if format not in _DIAGRAM_FORMATS:
            raise ValueError(f"format must be one of {sorted(_DIAGRAM_FORMATS)}")
        req = machine_type_pb2.RenderMachineTypeDiagramRequest(
            name=name, version=version, format=_DIAGRAM_FORMATS[format]
        )
        resp = self._call(self._types.RenderMachineTypeDiagram, req)
        return str(resp.diagram)

    # -- nodes -------------------------------------------------------------------------------

    def create_root(
        self,
        type: str,
        id: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        type_version: int = 0,
        request_id: str = "",
    ) -> Node:
        """Create the root of a new tree in its type's initial state."""
        req = node_pb2.CreateRootRequest(
            type=type,
            id=id,
            data=_convert.data(data, content_type),
            type_version=type_version,
            request_id=request_id,
        )
        resp = self._call(self._nodes.CreateRoot, req)
        return _convert.node(resp.node)

    def add_child(
        self,
        parent: RefLike,
        type: str,
        id: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        type_version: int = 0,
        request_id: str = "",
    ) -> Node:
        """Add a child node (type, id) under parent."""
        req = node_pb2.AddChildRequest(
            parent=_convert.ref_pb(as_ref(parent)),
            key=common_pb2.NodeKey(type=type, id=id),
            data=_convert.data(data, content_type),
            type_version=type_version,
            request_id=request_id,
        )
        resp = self._call(self._nodes.AddChild, req)
        return _convert.node(resp.node)

    def get_node(self, node: RefLike) -> Node:
        resp = self._call(self._nodes.GetNode, node_pb2.GetNodeRequest(node=_convert.ref_pb(as_ref(node))))
        return _convert.node(resp.node)

    def list_children(self, parent: RefLike, type: str, *, page_size: int = 1000) -> list[Node]:
        """The children of one type under parent, by id, following page tokens."""
        out: list[Node] = []
        token = ""
        while True:
            req = node_pb2.ListChildrenRequest(
                parent=_convert.ref_pb(as_ref(parent)), type=type, page_size=page_size, page_token=token
            )
            resp = self._call(self._nodes.ListChildren, req)
            out.extend(_convert.node(n) for n in resp.nodes)
            token = resp.next_page_token
            if not token:
                return out

    def walk(self, node: RefLike, *, page_size: int = 1000) -> list[Node]:
        """node and all its descendants, depth first, parents before children."""
        out: list[Node] = []
        token = ""
        while True:
            req = node_pb2.WalkTreeRequest(
                node=_convert.ref_pb(as_ref(node)), page_size=page_size, page_token=token
            )
            resp = self._call(self._nodes.WalkTree, req)
            out.extend(_convert.node(n) for n in resp.nodes)
            token = resp.next_page_token
            if not token:
                return out

    def delete_node(self, node: RefLike, *, request_id: str = "") -> int:
        """Delete node and its descendants; returns how many nodes were deleted."""
        req = node_pb2.DeleteNodeRequest(node=_convert.ref_pb(as_ref(node)), request_id=request_id)
        resp = self._call(self._nodes.DeleteNode, req)
        return int(resp.deleted_count)

    def transition(
        self,
        node: RefLike,
        transition: str,
        data: bytes | str | None = None,
        *,
        content_type: str = "",
        expected_transition_count: int | None = None,
        request_id: str = "",
        task_inputs: list[TaskInput] | None = None,
    ) -> TransitionResult:
        """Apply a named transition. Raises FailedPreconditionError (reason INVALID_TRANSITION)
        when not allowed from the current state, AbortedError when expected_transition_count
        does not match."""
        req = node_pb2.ApplyTransitionRequest(
            node=_convert.ref_pb(as_ref(node)),
            transition=transition,
            data=_convert.data(data, content_type),
            expected_transition_count=expected_transition_count,
            request_id=request_id,
            task_inputs=_convert.task_inputs(task_inputs),
        )
        return _convert.transition_result(self._call(self._nodes.ApplyTransition, req))

    def execute(self, batch: Batch, *, request_id: str = "") -> BatchResult:
        """Apply a Batch atomically: one revision for all of it, or nothing."""
        req = node_pb2.ExecuteBatchRequest(operations=batch.operations, request_id=request_id)
        resp = self._call(self._nodes.ExecuteBatch, req)
        results: list[Any] = []
        for r in resp.results:
            which = r.WhichOneof("result")
            if which == "apply_transition":
                results.append(_convert.transition_result(r.apply_transition))
            elif which == "delete_node":
                results.append(int(r.delete_node.deleted_count))
            else:
                results.append(_convert.node(getattr(r, which).node))
        return BatchResult(resp.revision, tuple(results))
