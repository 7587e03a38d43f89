"""The task runtime of a server: the timer and outbound executors, task reads (durable state
with the in-memory leases laid over it), and the operator's dead-letter actions."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from statekeeper_server.core.committer import PendingCommit
from statekeeper_server.core.engine import Commit, Engine, now_ms
from statekeeper_server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from statekeeper_server.domain.model import EventKind, NodeAddress, TaskRecord, TaskStatus
from statekeeper_server.domain.tasks import TaskSettings, with_status
from statekeeper_server.features.tasks.outbound import Lease, OutboundExecutor
from statekeeper_server.features.tasks.records import require_task, task_key, write_task
from statekeeper_server.features.tasks.retention import TaskRetention
from statekeeper_server.features.tasks.timers import TimerExecutor
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.indexes import destination_prefix, task_key_of

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task as a client sees it: LEASED while a worker holds it."""

    task: TaskRecord
    lease: Lease | None = None
    next_attempt_ms: int = 0


class TaskExecutors:
    def __init__(self, engine: Engine, settings: TaskSettings) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = settings
        self.timers = TimerExecutor(engine, settings.timer_batch)
        self.outbound = OutboundExecutor(engine, settings)
        self.retention = TaskRetention(engine, settings.finished_retention_ms)

    def start(self, retention: bool = True) -> None:
        """retention: delete finished tasks after their retention (one server; in cluster mode
        each server sweeps the shards it owns, fenced: cluster/housekeeping.py)."""
        self.engine.durable_listeners.append(self._on_durable)
        self.timers.start()
        self.outbound.start()
        if retention:
            self.retention.start()

    async def stop(self) -> None:
        await self.retention.stop()
        await self.outbound.stop()
        await self.timers.stop()
        if self._on_durable in self.engine.durable_listeners:
            self.engine.durable_listeners.remove(self._on_durable)

    def _on_durable(self, group: list[PendingCommit]) -> None:
        timers, queue = Keyspace.TIMERS, Keyspace.OUTBOUND_QUEUE
        for commit in group:
            if not commit.queues_tasks:
                continue
            for keyspace, key, value in commit.mutations:
                if value is None:
                    continue
                if keyspace is timers:
                    self.timers.timer_durable(keys.read_u64(key[:8]))
                elif keyspace is queue:
                    self.outbound.queue_entry_durable(key)

    # -- reads (durable state; leases from memory) ---------------------------------------------

    def _view(self, task: TaskRecord, now: int) -> TaskView:
        if task.status is not TaskStatus.PENDING:
            return TaskView(task)
        lease = self.outbound.lease_of(task.task_id)
        if lease is not None:
            return TaskView(with_status(task, TaskStatus.LEASED), lease)
        next_attempt = task.available_ms if task.available_ms > now else 0
        return TaskView(task, None, next_attempt)

    async def get(self, task_id: str) -> TaskView:
        raw = await self.engine.reads.view().get(Keyspace.TASKS, task_key(task_id))
        if raw is None:
            raise NotFound("TASK_NOT_FOUND", f"task {task_id} does not exist", task_id=task_id)
        return self._view(codec.decode_task(raw), now_ms())

    async def _page(
        self,
        keyspace: Keyspace,
        start: bytes,
        end: bytes,
        cursor: bytes | None,
        statuses: Collection[TaskStatus],
        limit: int,
    ) -> tuple[list[TaskView], bytes | None]:
        """Up to limit tasks from an index range, after cursor; returns them and the cursor to
        continue from (None at the end). Scans a bounded number of entries per page."""
        if cursor is not None and not (start <= cursor < end):
            raise InvalidArgument(
                "INVALID_PAGE_TOKEN", "page_token belongs to another listing", field="page_token"
            )
        now = now_ms()
        out: list[TaskView] = []
        budget = limit * 10 + 100
        durable = self.engine.reads.view()
        entries = await durable.scan(
            keyspace, cursor + b"\x00" if cursor is not None else start, end, limit=budget + 1
        )
        raws = await durable.get_many(Keyspace.TASKS, [task_key_of(key) for key, _ in entries[:budget]])
        last: bytes | None = None
        for (key, _), raw in zip(entries, raws, strict=False):
            if len(out) >= limit:
                return out, last
            last = key
            if raw is None:
                continue
            view = self._view(codec.decode_task(raw), now)
            if not statuses or view.task.status in statuses:
                out.append(view)
        return out, (last if len(entries) > budget else None)

    async def list_by_node(
        self,
        address: NodeAddress,
        subtree: bool,
        statuses: Collection[TaskStatus],
        cursor: bytes | None,
        limit: int,
    ) -> tuple[list[TaskView], bytes | None]:
        node = keys.node_key(address)
        # The node's own entries are node key + task key, and task keys start with a 0x00 byte
        # (revisions < 2^56); descendants follow under node key + 0x01.
        start, end = (node, node + keys.SUBTREE_END) if subtree else (node + b"\x00", node + b"\x01")
        return await self._page(Keyspace.TASKS_BY_NODE, start, end, cursor, statuses, limit)

    async def list_by_destination(
        self, destination: str, statuses: Collection[TaskStatus], cursor: bytes | None, limit: int
    ) -> tuple[list[TaskView], bytes | None]:
        prefix = destination_prefix(destination)
        return await self._page(
            Keyspace.OUTBOUND_QUEUE, prefix, prefix[:-1] + b"\x01", cursor, statuses, limit
        )

    async def list_dead_letters(
        self, destination: str, cursor: bytes | None, limit: int
    ) -> tuple[list[TaskView], bytes | None]:
        if destination:
            start = destination_prefix(destination)
            end = start[:-1] + b"\x01"
        else:
            start, end = b"", b"\xff" * 8
        return await self._page(Keyspace.DEAD_LETTERS, start, end, cursor, (), limit)

    # -- operator actions ----------------------------------------------------------------------

    async def retry_dead_letter(self, task_id: str, respond: Callable[[TaskRecord, int], M]) -> M:
        def build(c: Commit) -> TaskRecord:
            task = self._dead_letter(c, task_id)
            # A timer keeps its (past) deadline, so it fires at once; an outbound task is
            # available at once.
            new = with_status(task, TaskStatus.PENDING, attempts=0, available_ms=0)
            write_task(c, new, task)
            c.event(
                EventKind.TASK_CREATED,
                task.address,
                task_id=task_id,
                detail=f"{task.name} (retried from the dead-letter list)",
            )
            return new

        return await self.engine.commit(build, respond)

    async def discard_dead_letter(self, task_id: str, respond: Callable[[TaskRecord, int], M]) -> M:
        def build(c: Commit) -> TaskRecord:
            task = self._dead_letter(c, task_id)
            new = with_status(task, TaskStatus.DISCARDED)
            write_task(c, new, task)
            c.event(
                EventKind.TASK_STALE,
                task.address,
                task_id=task_id,
                detail=f"{task.name} discarded from the dead-letter list",
            )
            return new

        return await self.engine.commit(build, respond)

    @staticmethod
    def _dead_letter(c: Commit, task_id: str) -> TaskRecord:
        task = require_task(c, task_id)
        if task.status is not TaskStatus.DEAD_LETTER:
            raise FailedPrecondition(
                "NOT_DEAD_LETTER",
                f"task {task_id} is {task.status.name.lower()}, not in the dead-letter list",
                task_id=task_id,
                status=task.status.name,
            )
        return task
