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
from statekeeper_server.entrypoints.grpc import convert

Context = Any
M = TypeVar("M", bound=Message)


def fingerprint(method: str, request: Message) -> bytes:
    """Identifies a request's content, so a reused request_id with other content is refused."""
    h = hashlib.blake2b(method.encode(), digest_size=16)
    h.update(request.SerializeToString(deterministic=True))
    return h.digest()


def _codec(cls: type[Any]) -> ResponseCodec[Any]:
    return ResponseCodec(lambda m: m.SerializeToString(), cls.FromString)


_CODECS: dict[type[Any], ResponseCodec[Any]] = {
    cls: _codec(cls)
    for cls in (
        pb.CreateRootResponse,
        pb.AddChildResponse,
        pb.DeleteNodeResponse,
        pb.ApplyTransitionResponse,
        pb.ExecuteBatchResponse,
    )
}


# Each operation is three functions: the node it reads first (read ahead for a whole batch in
# one multi-get), apply it to a transaction given that node, and fill its (empty) response
# message from the outcome. Responses are filled in place: in a batch, straight into the result
# list. A unary write is the same operation alone (NodeServicer._operation).
def _no_target(r: Any) -> None:
    return None


def _node_target(r: pb.ApplyTransitionRequest | pb.DeleteNodeRequest) -> NodeAddress:
    return convert.address(r.node)


def _parent_target(r: pb.AddChildRequest) -> NodeAddress:
    return convert.address(r.parent)


def _create_root(txn: Transaction, r: pb.CreateRootRequest, _: None) -> NodeSnapshot:
    return txn.create_root(r.type, r.id, r.data.value, r.data.content_type, r.type_version)


def _fill_created(out: Any, s: NodeSnapshot, revision: int) -> None:
    convert.fill_node(out.node, s.address, s.record)
    out.revision = revision


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
        convert.task_inputs(r.task_inputs),
    )


def _fill_transition(out: pb.ApplyTransitionResponse, o: TransitionOutcome, revision: int) -> None:
    convert.fill_node(out.node, o.node.address, o.node.record)
    out.revision = revision
    out.from_state = o.from_state
    if o.tasks:
        out.tasks.extend([convert.task(t) for t in o.tasks])


def _delete_node(txn: Transaction, r: pb.DeleteNodeRequest, node: NodeAddress) -> DeleteOutcome:
    return txn.delete(node)


def _fill_delete(out: pb.DeleteNodeResponse, o: DeleteOutcome, revision: int) -> None:
    out.revision = revision
    out.deleted_count = o.deleted_count


Apply = Callable[[Transaction, Any, Any], Any]

_BATCH_OPS: dict[str, tuple[Callable[[Any], NodeAddress | None], Apply, Callable[[Any, Any, int], None]]] = {
    "create_root": (_no_target, _create_root, _fill_created),
    "add_child": (_parent_target, _add_child, _fill_created),
    "apply_transition": (_node_target, _apply_transition, _fill_transition),
    "delete_node": (_node_target, _delete_node, _fill_delete),
}


class NodeServicer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.limits = engine.limits

    async def _write(
        self,
        method: str,
        request: Any,
        apply: Callable[[Transaction], Any],
        respond: Callable[[Any, int], M],
        response_cls: type[M],
        weight: int = 1,
    ) -> M:
        request_id: str = request.request_id
        if request_id:
            check_request_id(request_id, self.limits)
        return await self.engine.submit(
            apply,
            respond,
            request_id=request_id,
            fingerprint=fingerprint(method, request) if request_id else b"",
            response_codec=_CODECS[response_cls],
            weight=weight,
        )

    async def _operation(self, method: str, which: str, request: Any, response_cls: type[M]) -> M:
        """A unary write: the batch operation `which` alone, answered in its own message."""
        target_of, apply, fill = _BATCH_OPS[which]
        target = target_of(request)

        def respond(outcome: Any, revision: int) -> M:
            out = response_cls()
            fill(out, outcome, revision)
            return out

        return await self._write(
            method, request, lambda txn: apply(txn, request, target), respond, response_cls
        )

    async def CreateRoot(self, request: pb.CreateRootRequest, context: Context) -> pb.CreateRootResponse:
        return await self._operation("CreateRoot", "create_root", request, pb.CreateRootResponse)

    async def AddChild(self, request: pb.AddChildRequest, context: Context) -> pb.AddChildResponse:
        return await self._operation("AddChild", "add_child", request, pb.AddChildResponse)

    async def ApplyTransition(
        self, request: pb.ApplyTransitionRequest, context: Context
    ) -> pb.ApplyTransitionResponse:
        return await self._operation(
            "ApplyTransition", "apply_transition", request, pb.ApplyTransitionResponse
        )

    async def DeleteNode(self, request: pb.DeleteNodeRequest, context: Context) -> pb.DeleteNodeResponse:
        return await self._operation("DeleteNode", "delete_node", request, pb.DeleteNodeResponse)

    async def ExecuteBatch(
        self, request: pb.ExecuteBatchRequest, context: Context
    ) -> pb.ExecuteBatchResponse:
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
            operation = getattr(op, which)
            steps.append((which, operation, _BATCH_OPS[which][0](operation)))
        targets = [target for _, _, target in steps if target is not None]

        def apply(txn: Transaction) -> list[tuple[str, Any]]:
            txn.read_ahead(targets)
            outcomes: list[tuple[str, Any]] = []
            append = outcomes.append
            for i, (which, op, target) in enumerate(steps):
                try:
                    append((which, _BATCH_OPS[which][1](txn, op, target)))
                except DomainError as e:
                    raise BatchOperationFailed(i, e) from e
            return outcomes

        def respond(outcomes: list[tuple[str, Any]], revision: int) -> pb.ExecuteBatchResponse:
            response = pb.ExecuteBatchResponse(revision=revision)
            add = response.results.add
            for which, outcome in outcomes:
                result = getattr(add(), which)
                result.SetInParent()
                _BATCH_OPS[which][2](result, outcome, revision)
            return response

        return await self._write(
            "ExecuteBatch", request, apply, respond, pb.ExecuteBatchResponse, weight=len(steps)
        )

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
