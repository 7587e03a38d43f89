"""TaskService: task inspection, worker leases and outcomes, dead letters."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from statekeeper.v1 import task_pb2 as pb
from statekeeper_server.core.engine import Engine, ResponseCodec
from statekeeper_server.domain.errors import DomainError, FailedPrecondition, InvalidArgument
from statekeeper_server.domain.model import TaskRecord, TaskStatus
from statekeeper_server.domain.tasks import (
    MAX_WORKER_ID_LENGTH,
    check_destinations,
    check_lease_ms,
    check_lease_token,
    check_task_id,
)
from statekeeper_server.domain.validation import check_address, check_name, check_page_size
from statekeeper_server.entrypoints.grpc import convert, fanout
from statekeeper_server.entrypoints.grpc.forwarding import Forwarder
from statekeeper_server.entrypoints.grpc.handler import ClusterRouting
from statekeeper_server.entrypoints.grpc.nodes import fingerprint
from statekeeper_server.features import listings
from statekeeper_server.features.tasks.executors import TaskExecutors, TaskView
from statekeeper_server.features.tasks.outbound import Completion, Failure, LeasedTask

Context = Any
_LEN = struct.Struct(">I")
_STATUSES = {int(s): s for s in TaskStatus}
MAX_STREAM_IN_FLIGHT = 10_000


def _serialize_completion(item: tuple[str, pb.CompleteTaskResponse]) -> bytes:
    reason = item[0].encode()
    return _LEN.pack(len(reason)) + reason + item[1].SerializeToString()


def _parse_completion(raw: bytes) -> tuple[str, pb.CompleteTaskResponse]:
    (n,) = _LEN.unpack_from(raw)
    reason = raw[4 : 4 + n].decode()
    return reason, pb.CompleteTaskResponse.FromString(raw[4 + n :])


# A completion refused as stale is still a settlement (the task is dropped), so its outcome is
# kept for repeats like any other: the stale reason travels beside the response.
_COMPLETION_CODEC: ResponseCodec[tuple[str, pb.CompleteTaskResponse]] = ResponseCodec(
    _serialize_completion, _parse_completion
)
_FAILURE_CODEC: ResponseCodec[pb.FailTaskResponse] = ResponseCodec(
    lambda m: m.SerializeToString(), pb.FailTaskResponse.FromString
)


def _task(view: TaskView) -> pb.Task:
    return convert.task(view.task)


def _statuses(values: Any) -> set[TaskStatus]:
    out = set()
    for i, v in enumerate(values):
        status = _STATUSES.get(int(v))
        if status is None:
            raise InvalidArgument(
                "FIELD_INVALID", f"statuses[{i}] is not a task status", field=f"statuses[{i}]"
            )
        out.add(status)
    return out


def _check_worker_id(worker_id: str) -> None:
    if len(worker_id) > MAX_WORKER_ID_LENGTH or any(ord(ch) < 32 or ord(ch) == 127 for ch in worker_id):
        raise InvalidArgument(
            "FIELD_INVALID",
            f"worker_id must be at most {MAX_WORKER_ID_LENGTH} printable characters",
            field="worker_id",
        )


class TaskServicer:
    def __init__(
        self,
        engine: Engine,
        tasks: TaskExecutors,
        forwarder: Forwarder | None = None,
        peers: Callable[[], list[str]] | None = None,
    ) -> None:
        self.engine = engine
        self.limits = engine.limits
        self.tasks = tasks
        self.settings = tasks.settings
        # Cluster mode: every server's tasks reach a worker's stream (fanout.py).
        self.forwarder = forwarder
        self.peers = peers

    # -- reads ---------------------------------------------------------------------------------

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        check_task_id(request.task_id)
        view = await self.tasks.get(request.task_id)
        lease = view.lease
        return pb.GetTaskResponse(
            task=_task(view),
            lease=pb.TaskLease(worker_id=lease.worker_id, expires_ms=lease.expires_ms) if lease else None,
            next_attempt_ms=view.next_attempt_ms,
        )

    async def ListTasks(self, request: pb.ListTasksRequest, context: Context) -> pb.ListTasksResponse:
        has_node = request.HasField("node")
        if has_node == bool(request.destination):
            raise InvalidArgument(
                "FIELD_REQUIRED",
                "set exactly one of node and destination",
                field="node" if not has_node else "destination",
            )
        limit = check_page_size(request.page_size, self.limits)
        statuses = _statuses(request.statuses)
        cursor = convert.decode_token(request.page_token)
        if has_node:
            address = convert.address(request.node)
            check_address(address, "node", self.limits)
            views, more = await self.tasks.list_by_node(
                address, request.include_descendants, statuses, cursor, limit
            )
        else:
            if request.include_descendants:
                raise InvalidArgument(
                    "FIELD_INVALID", "include_descendants applies to node only", field="include_descendants"
                )
            check_name(request.destination, "destination", self.limits)
            views, more = await self.tasks.list_by_destination(request.destination, statuses, cursor, limit)
        return pb.ListTasksResponse(
            tasks=[_task(v) for v in views], next_page_token=convert.encode_token(more) if more else ""
        )

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        if request.destination:
            check_name(request.destination, "destination", self.limits)
        limit = check_page_size(request.page_size, self.limits)
        views, more = await self.tasks.list_dead_letters(
            request.destination, convert.decode_token(request.page_token), limit
        )
        return pb.ListDeadLettersResponse(
            tasks=[_task(v) for v in views], next_page_token=convert.encode_token(more) if more else ""
        )

    async def ListTimers(self, request: pb.ListTimersRequest, context: Context) -> pb.ListTimersResponse:
        limit = check_page_size(request.page_size, self.limits)
        timers, more = await listings.timers(
            self.engine.reads.view(), convert.decode_token(request.page_token), limit
        )
        return pb.ListTimersResponse(
            tasks=[convert.task(t) for t in timers],
            next_page_token=convert.encode_token(more) if more else "",
        )

    # -- workers -------------------------------------------------------------------------------

    async def LeaseTasks(
        self, request: pb.LeaseTasksRequest, context: Context
    ) -> AsyncIterator[pb.LeaseTasksResponse]:
        destinations = check_destinations(list(request.destinations), self.limits)
        if request.max_in_flight < 0:
            raise InvalidArgument(
                "FIELD_INVALID", "max_in_flight must not be negative", field="max_in_flight"
            )
        lease_ms = check_lease_ms(request.lease_duration_ms, "lease_duration_ms", self.settings)
        _check_worker_id(request.worker_id)
        max_in_flight = min(request.max_in_flight or 1, MAX_STREAM_IN_FLIGHT)

        async def local(limit: int) -> AsyncGenerator[pb.LeaseTasksResponse, None]:
            stream = self.tasks.outbound.stream(destinations, limit, lease_ms, request.worker_id)
            async with contextlib.aclosing(stream) as batches:
                async for batch in batches:
                    yield pb.LeaseTasksResponse(tasks=[self._leased(t) for t in batch])

        if self.forwarder is None or self.peers is None or ClusterRouting.forwarded(context):
            source = local(max_in_flight)
        else:
            source = fanout.merged(request, context, self.forwarder, self.peers, local, self._release)
        async with contextlib.aclosing(source) as responses:
            async for response in responses:
                yield response

    def _release(self, task_id: str, token: str) -> None:
        with contextlib.suppress(DomainError):
            self.tasks.outbound.release(task_id, token)

    @staticmethod
    def _leased(t: LeasedTask) -> pb.LeasedTask:
        return pb.LeasedTask(task=convert.task(t.task), lease_token=t.token, lease_expires_ms=t.expires_ms)

    def _lease_args(self, task_id: str, token: str) -> None:
        check_task_id(task_id)
        check_lease_token(token)

    async def HeartbeatTask(
        self, request: pb.HeartbeatTaskRequest, context: Context
    ) -> pb.HeartbeatTaskResponse:
        self._lease_args(request.task_id, request.lease_token)
        duration = request.lease_duration_ms
        if duration:  # 0 keeps the stream's lease duration
            duration = check_lease_ms(duration, "lease_duration_ms", self.settings)
        expires, stale = await self.tasks.outbound.heartbeat(request.task_id, request.lease_token, duration)
        return pb.HeartbeatTaskResponse(lease_expires_ms=expires, stale=stale)

    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: Context
    ) -> pb.CompleteTaskResponse:
        self._lease_args(request.task_id, request.lease_token)
        if not request.transition and (request.HasField("data") or request.task_inputs):
            raise InvalidArgument(
                "FIELD_REQUIRED", "data and task_inputs need a transition to apply", field="transition"
            )

        def respond(result: Completion, revision: int) -> tuple[str, pb.CompleteTaskResponse]:
            response = pb.CompleteTaskResponse(task=convert.task(result.task), revision=revision)
            outcome = result.transition
            if outcome is not None:
                response.node_state = outcome.node.record.state
                response.node_transition_count = outcome.node.record.transition_count
                response.emitted_tasks.extend(convert.task(t) for t in outcome.tasks)
            return result.stale_reason, response

        reason, response = await self.tasks.outbound.complete(
            request.task_id,
            request.lease_token,
            request.transition,
            request.data.value if request.HasField("data") else None,
            request.data.content_type,
            convert.task_inputs(request.task_inputs),
            respond,
            _COMPLETION_CODEC,
            fingerprint("CompleteTask", request),
        )
        if reason:
            ref = response.task.reference
            raise FailedPrecondition(
                "STALE_REFERENCE",
                f"task {request.task_id} is stale: {reason}; nothing was applied and the task was dropped",
                task_id=request.task_id,
                node=str(convert.address(ref.node)),
                node_create_revision=ref.node_create_revision,
                transition_count=ref.transition_count,
            )
        return response

    async def FailTask(self, request: pb.FailTaskRequest, context: Context) -> pb.FailTaskResponse:
        self._lease_args(request.task_id, request.lease_token)

        def respond(result: Failure, revision: int) -> pb.FailTaskResponse:
            return pb.FailTaskResponse(
                task=convert.task(result.task), revision=revision, next_attempt_ms=result.next_attempt_ms
            )

        return await self.tasks.outbound.fail(
            request.task_id,
            request.lease_token,
            request.error,
            request.permanent,
            respond,
            _FAILURE_CODEC,
            fingerprint("FailTask", request),
        )

    async def ReleaseTask(self, request: pb.ReleaseTaskRequest, context: Context) -> pb.ReleaseTaskResponse:
        self._lease_args(request.task_id, request.lease_token)
        self.tasks.outbound.release(request.task_id, request.lease_token)
        return pb.ReleaseTaskResponse()

    # -- operators -----------------------------------------------------------------------------

    async def RetryDeadLetter(
        self, request: pb.RetryDeadLetterRequest, context: Context
    ) -> pb.RetryDeadLetterResponse:
        check_task_id(request.task_id)

        def respond(task: TaskRecord, revision: int) -> pb.RetryDeadLetterResponse:
            return pb.RetryDeadLetterResponse(task=convert.task(task), revision=revision)

        return await self.tasks.retry_dead_letter(request.task_id, respond)

    async def DiscardDeadLetter(
        self, request: pb.DiscardDeadLetterRequest, context: Context
    ) -> pb.DiscardDeadLetterResponse:
        check_task_id(request.task_id)

        def respond(task: TaskRecord, revision: int) -> pb.DiscardDeadLetterResponse:
            return pb.DiscardDeadLetterResponse(task=convert.task(task), revision=revision)

        return await self.tasks.discard_dead_letter(request.task_id, respond)
