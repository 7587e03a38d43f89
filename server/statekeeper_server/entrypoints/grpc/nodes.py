"""NodeService: trees, transitions and atomic batches."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from statekeeper.v1 import node_pb2 as pb
from statekeeper_server.core.engine import Engine, ResponseCodec
from statekeeper_server.domain.errors import BatchOperationFailed, DomainError, InvalidArgument, NotFound
from statekeeper_server.domain.model import NodeAddress
from statekeeper_server.domain.transaction import DeleteOutcome, NodeSnapshot, Transaction, TransitionOutcome
from statekeeper_server.domain.validation import check_address, check_name, check_page_size, check_request_id
from statekeeper_server.entrypoints.grpc import convert, wire

Context = Any
M = TypeVar("M", bound=Message)


def fingerprint(method: str, request: Message) -> bytes:
    """Identifies a request's content, so a reused request_id with other content is refused."""
    h = hashlib.blake2b(method.encode(), digest_size=16)
    h.update(request.SerializeToString(deterministic=True))
    return h.digest()


# A write is answered with its response message already encoded (wire.py): the request-id
# record keeps those bytes, and a replay answers them again.
_BYTES = ResponseCodec[bytes](lambda b: b, lambda b: b)


# Each operation is three functions: the node it reads first (read ahead for a whole batch in
# one multi-get), apply it to a transaction given that node, and encode its response message
# from the outcome. A unary write is the same operation alone (NodeServicer._operation); in a
# batch its response is a BatchResult's member (field number: _RESULT_FIELD).
def _no_target(r: Any) -> None:
    return None


def _node_target(r: pb.ApplyTransitionRequest | pb.DeleteNodeRequest) -> NodeAddress:
    return convert.address(r.node)


def _parent_target(r: pb.AddChildRequest) -> NodeAddress:
    return convert.address(r.parent)


def _create_root(txn: Transaction, r: pb.CreateRootRequest, _: None) -> NodeSnapshot:
    return txn.create_root(r.type, r.id, r.data.value, r.data.content_type, r.type_version)


def _created(s: NodeSnapshot, revision: int) -> bytes:
    """CreateRootResponse and AddChildResponse: node = 1, revision = 2."""
    node = wire.field(1, wire.encode_node(s.address, s.record))
    return node + b"\x10" + wire.varint(revision) if revision else node


def _add_child(txn: Transaction, r: pb.AddChildRequest, parent: NodeAddress) -> NodeSnapshot:
    if not r.HasField("key"):
        raise InvalidArgument("FIELD_REQUIRED", "key must be set", field="key")
    return txn.add_child(parent, (r.key.type, r.key.id), r.data.value, r.data.content_type, r.type_version)


def _apply_transition(txn: Transaction, r: pb.ApplyTransitionRequest, node: NodeAddress) -> TransitionOutcome:
    data = r.data if r.HasField("data") else None
    return txn.apply_transition(
        node,
        r.transition,
        data.value if data is not None else None,
        data.content_type if data is not None else "",
        r.expected_transition_count if r.HasField("expected_transition_count") else None,
        convert.task_inputs(r.task_inputs) if r.task_inputs else (),
    )


def _transitioned(o: TransitionOutcome, revision: int) -> bytes:
    return wire.encode_transition_response(o.node.address, o.node.record, revision, o.from_state, o.tasks)


def _delete_node(txn: Transaction, r: pb.DeleteNodeRequest, node: NodeAddress) -> DeleteOutcome:
    return txn.delete(node)


def _deleted(o: DeleteOutcome, revision: int) -> bytes:
    """DeleteNodeResponse: revision = 1, deleted_count = 2."""
    return (b"\x08" + wire.varint(revision) if revision else b"") + (
        b"\x10" + wire.varint(o.deleted_count) if o.deleted_count else b""
    )


Apply = Callable[[Transaction, Any, Any], Any]

_BATCH_OPS: dict[str, tuple[Callable[[Any], NodeAddress | None], Apply, Callable[[Any, int], bytes]]] = {
    "create_root": (_no_target, _create_root, _created),
    "add_child": (_parent_target, _add_child, _created),
    "apply_transition": (_node_target, _apply_transition, _transitioned),
    "delete_node": (_node_target, _delete_node, _deleted),
}
_RESULT_FIELD = {f.name: f.number for f in pb.BatchResult.DESCRIPTOR.fields}


class NodeServicer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.limits = engine.limits

    async def _write(
        self,
        method: str,
        request: Any,
        apply: Callable[[Transaction], Any],
        respond: Callable[[Any, int], bytes],
        weight: int = 1,
    ) -> bytes:
        request_id: str = request.request_id
        if request_id:
            check_request_id(request_id, self.limits)
        return await self.engine.submit(
            apply,
            respond,
            request_id=request_id,
            fingerprint=fingerprint(method, request) if request_id else b"",
            response_codec=_BYTES,
            weight=weight,
        )

    async def _operation(self, method: str, which: str, request: Any) -> bytes:
        """A unary write: the batch operation `which` alone, answered in its own message."""
        target_of, apply, respond = _BATCH_OPS[which]
        target = target_of(request)
        return await self._write(method, request, lambda txn: apply(txn, request, target), respond)

    async def CreateRoot(self, request: pb.CreateRootRequest, context: Context) -> bytes:
        return await self._operation("CreateRoot", "create_root", request)

    async def AddChild(self, request: pb.AddChildRequest, context: Context) -> bytes:
        return await self._operation("AddChild", "add_child", request)

    async def ApplyTransition(self, request: pb.ApplyTransitionRequest, context: Context) -> bytes:
        return await self._operation("ApplyTransition", "apply_transition", request)

    async def DeleteNode(self, request: pb.DeleteNodeRequest, context: Context) -> bytes:
        return await self._operation("DeleteNode", "delete_node", request)

    async def ExecuteBatch(self, request: pb.ExecuteBatchRequest, context: Context) -> bytes:
        ops = request.operations
        if not ops:
            raise InvalidArgument("FIELD_REQUIRED", "operations must not be empty", field="operations")
        if len(ops) > self.limits.max_batch_operations:
            raise InvalidArgument(
                "TOO_MANY_OPERATIONS",
                f"the batch has {len(ops)} operations; the limit is {self.limits.max_batch_operations}",
                field="operations",
                limit="max_batch_operations",
            )
        steps = []
        for i, op in enumerate(ops):
            which = op.WhichOneof("operation")
            if which is None:
                raise BatchOperationFailed(
                    i, InvalidArgument("FIELD_REQUIRED", "the operation is empty", field=f"operations[{i}]")
                )
            target_of, apply, respond = _BATCH_OPS[which]
            operation = getattr(op, which)
            steps.append((apply, operation, target_of(operation), respond, _RESULT_FIELD[which]))
        targets = [target for _, _, target, _, _ in steps if target is not None]

        def apply_all(txn: Transaction) -> list[Any]:
            txn.read_ahead(targets)
            outcomes: list[Any] = []
            append = outcomes.append
            for i, (apply, op, target, _, _) in enumerate(steps):
                try:
                    append(apply(txn, op, target))
                except DomainError as e:
                    raise BatchOperationFailed(i, e) from e
            return outcomes

        def respond_all(outcomes: list[Any], revision: int) -> bytes:
            """ExecuteBatchResponse: revision = 1, results = 2 (BatchResult, one member each)."""
            field = wire.field
            return (b"\x08" + wire.varint(revision) if revision else b"") + b"".join(
                [
                    field(2, field(number, respond(outcome, revision)))
                    for (_, _, _, respond, number), outcome in zip(steps, outcomes, strict=True)
                ]
            )

        return await self._write("ExecuteBatch", request, apply_all, respond_all, weight=len(steps))

    # -- reads: durable state only -----------------------------------------------------------

    async def GetNode(self, request: pb.GetNodeRequest, context: Context) -> pb.GetNodeResponse:
        address = convert.address(request.node)
        check_address(address, "node", self.limits)
        record = await self.engine.reads.get_node(address)
        if record is None:
            raise NotFound("NODE_NOT_FOUND", f"node {address} does not exist", node=str(address))
        return pb.GetNodeResponse(node=convert.node(address, record))

    async def _require(self, address: Any, field: str) -> None:
        check_address(address, field, self.limits)
        if await self.engine.reads.get_node(address) is None:
            raise NotFound("NODE_NOT_FOUND", f"node {address} does not exist", node=str(address))

    async def ListChildren(
        self, request: pb.ListChildrenRequest, context: Context
    ) -> pb.ListChildrenResponse:
        parent = convert.address(request.parent)
        await self._require(parent, "parent")
        check_name(request.type, "type", self.limits)
        limit = check_page_size(request.page_size, self.limits)
        token = convert.decode_token(request.page_token)
        after = token.decode(errors="replace") if token is not None else None
        found = await self.engine.reads.list_children(parent, request.type, after, limit + 1)
        more = len(found) > limit
        found = found[:limit]
        next_token = convert.encode_token(found[-1][0].path[-1][1].encode()) if more else ""
        return pb.ListChildrenResponse(
            nodes=[convert.node(a, r) for a, r in found], next_page_token=next_token
        )

    async def WalkTree(self, request: pb.WalkTreeRequest, context: Context) -> pb.WalkTreeResponse:
        address = convert.address(request.node)
        await self._require(address, "node")
        limit = check_page_size(request.page_size, self.limits)
        found = await self.engine.reads.walk(address, convert.decode_token(request.page_token), limit + 1)
        more = len(found) > limit
        found = found[:limit]
        next_token = convert.encode_token(found[-1][0]) if more else ""
        return pb.WalkTreeResponse(
            nodes=[convert.node(a, r) for _, a, r in found], next_page_token=next_token
        )

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> pb.ListNodesResponse:
        check_name(request.machine_type, "machine_type", self.limits)
        if request.state:
            check_name(request.state, "state", self.limits)
        terminal = {
            pb.NODE_STATUS_FILTER_UNSPECIFIED: None,
            pb.NODE_STATUS_FILTER_ACTIVE: False,
            pb.NODE_STATUS_FILTER_TERMINAL: True,
        }.get(request.status, "bad")
        if terminal == "bad":
            raise InvalidArgument(
                "FIELD_INVALID", f"status {request.status} is not a NodeStatusFilter", field="status"
            )
        limit = check_page_size(request.page_size, self.limits)
        found = await self.engine.reads.list_nodes(
            request.machine_type,
            terminal,  # type: ignore[arg-type]
            request.state or None,
            convert.decode_token(request.page_token),
            limit + 1,
        )
        more = len(found) > limit
        found = found[:limit]
        next_token = convert.encode_token(found[-1][0]) if more else ""
        return pb.ListNodesResponse(
            nodes=[convert.node(a, r) for _, a, r in found], next_page_token=next_token
        )
