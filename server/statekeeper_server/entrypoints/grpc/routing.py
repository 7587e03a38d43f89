"""Which shard a call belongs to (cluster mode): writes for a tree, a run, a consumer or a
machine type run on the server that owns its shard; reads run wherever they arrive (every
server reads the shared store).

Each routed method names the routing keys of its request (root ids, run ids, a consumer name,
a type name). A call whose keys fall in more than one shard is refused: one commit writes one
shard (its rows are fenced by that shard's generation). Task calls are routed by the shard the
task's row belongs to (looked up in the store).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from statekeeper_server.core.shards import ShardMap
from statekeeper_server.domain.errors import FailedPrecondition

KeysOf = Callable[[Any], Iterable[str]]

_NODE = "/statekeeper.v1.NodeService/"
_TYPE = "/statekeeper.v1.MachineTypeService/"
_SAVE = "/statekeeper.v1.SavepointService/"
_EVENT = "/statekeeper.v1.EventService/"
_TASK = "/statekeeper.v1.TaskService/"


def _batch_roots(r: Any) -> Iterable[str]:
    for op in r.operations:
        which = op.WhichOneof("operation")
        if which == "create_root":
            yield op.create_root.id
        elif which == "add_child":
            yield op.add_child.parent.root_id
        elif which == "apply_transition":
            yield op.apply_transition.node.root_id
        elif which == "delete_node":
            yield op.delete_node.node.root_id


ROUTES: dict[str, KeysOf] = {
    _NODE + "CreateRoot": lambda r: [r.id],
    _NODE + "AddChild": lambda r: [r.parent.root_id],
    _NODE + "ApplyTransition": lambda r: [r.node.root_id],
    _NODE + "DeleteNode": lambda r: [r.node.root_id],
    _NODE + "ExecuteBatch": _batch_roots,
    _TYPE + "RegisterMachineType": lambda r: [r.machine_type.name],
    _SAVE + "CreateRun": lambda r: [r.run_id],
    _SAVE + "DeleteRun": lambda r: [r.run_id],
    _SAVE + "SaveEntityStates": lambda r: [s.run_id for s in r.saves],
    _SAVE + "UpdateEntityStates": lambda r: [u.run_id for u in r.updates],
    _SAVE + "AckProcessedTime": lambda r: [a.run_id for a in r.acks],
    _SAVE + "UpdateSavepoint": lambda r: [r.run_id],
    _SAVE + "CreateTreeSnapshot": lambda r: [r.root_id],
    _SAVE + "RestoreTreeSnapshot": lambda r: [r.root_id],
    _SAVE + "DeleteTreeSnapshot": lambda r: [r.root_id],
    _SAVE + "ForkTreeSnapshot": lambda r: [r.new_root_id],
    _EVENT + "CreateConsumer": lambda r: [r.name],
    _EVENT + "DeleteConsumer": lambda r: [r.name],
    _EVENT + "GetConsumer": lambda r: [r.name],
    _EVENT + "Subscribe": lambda r: [r.consumer],
    _EVENT + "Ack": lambda r: [r.consumer],
}

TASK_ROUTES = frozenset(
    _TASK + m
    for m in (
        "HeartbeatTask",
        "CompleteTask",
        "FailTask",
        "ReleaseTask",
        "RetryDeadLetter",
        "DiscardDeadLetter",
    )
)


class Router:
    """shard_of_task(task_id) -> the shard of that task's row, or None (no such task)."""

    def __init__(self, shards: ShardMap, shard_of_task: Callable[[str], Awaitable[int | None]]) -> None:
        self.shards = shards
        self._shard_of_task = shard_of_task

    def routed(self, method: str) -> bool:
        return method in ROUTES or method in TASK_ROUTES

    async def shard(self, method: str, request: Any) -> int | None:
        """The shard the call must run on, or None: anywhere (a read, or a request too
        malformed to route: the servicer refuses it wherever it runs)."""
        keys_of = ROUTES.get(method)
        if keys_of is not None:
            found = {self.shards.of(k) for k in keys_of(request) if k}
            if not found:
                return None
            if len(found) > 1:
                raise FailedPrecondition(
                    "CROSS_SHARD_REQUEST",
                    f"in cluster mode one call writes one shard; this one names trees, runs or types in "
                    f"shards {sorted(found)}: split it into one call per tree (or per run)",
                    shards=",".join(map(str, sorted(found))),
                )
            return found.pop()
        if method in TASK_ROUTES and request.task_id:
            return await self._shard_of_task(request.task_id)
        return None
