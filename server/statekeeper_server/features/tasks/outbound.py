"""Outbound tasks: leased to workers over a stream, settled by completion or failure.

Pending outbound tasks are indexed per destination in Keyspace.OUTBOUND_QUEUE, ordered by the
time they become available (the commit time for a new task, now + backoff after a failure), then
task id, so new tasks and retries take turns in time order. A worker's stream takes tasks from
there for its destinations; nothing is polled: a stream waits on an event that is set when a new
queue entry becomes durable (durable listener), when a lease ends, or at the next retry time or
breaker cool-down.

Leases live in memory: handing out a task writes nothing, and after a restart every leased task
is simply available again. What is persisted, in the same commit as any transition the outcome
applies, is each settled attempt: attempts, last error, status and the next attempt's time.

Each lease is settled once: CompleteTask and FailTask commit with the request id
"\\x01lease:<token>", so repeating a call with the same token returns the first outcome, even
after a restart (the engine's request-id replay). Per destination, at most `max_in_flight`
tasks are leased, and a circuit breaker stops handing out tasks after consecutive failures,
probing with a single task after a cool-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from statekeeper_server.core.engine import Commit, Engine, ResponseCodec, now_ms
from statekeeper_server.domain.errors import DomainError, FailedPrecondition, InvalidArgument
from statekeeper_server.domain.model import EventKind, NodeRecord, TaskRecord, TaskStatus
from statekeeper_server.domain.tasks import (
    BreakerState,
    CircuitBreaker,
    TaskSettings,
    backoff_ms,
    clip_error,
    stale_reason,
    with_status,
)
from statekeeper_server.domain.transaction import TaskInput, TransitionOutcome
from statekeeper_server.features.tasks.records import QUEUED, drop_stale, read_task, task_key, write_task
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.indexes import (
    destination_prefix,
    outbound_key,
    task_key_of,
)

log = logging.getLogger("statekeeper.outbound")

M = TypeVar("M")

LEASE_REQUEST_PREFIX = "\x01lease:"  # control characters never occur in a client's request_id
_EXPIRING = object()  # the settling marker of an expired lease being recorded


@dataclass(eq=False)
class LeaseStream:
    """One worker stream: its destinations and how many tasks it may hold at once."""

    destinations: list[str]
    max_in_flight: int
    lease_ms: int
    worker_id: str
    in_flight: int = 0
    closed: bool = False
    turn: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class Lease:
    task_id: str
    task_key: bytes
    token: str
    destination: str
    worker_id: str
    duration_ms: int
    expires_ms: int
    stream: LeaseStream | None
    # The settlement under way (its marker; None: none). Builds may run more than once (a
    # cluster store builds a group again from another revision): the same settlement may claim
    # the lease again, another one may not.
    settling: object | None = None
    ended: bool = False


@dataclass(frozen=True, slots=True)
class LeasedTask:
    task: TaskRecord  # status LEASED
    token: str
    expires_ms: int


@dataclass
class _Destination:
    breaker: CircuitBreaker
    in_flight: int = 0
    # The last queue key a scan went past: entries up to it were leased or handed out. Reset
    # whenever an entry at or before it may have become available again.
    cursor: bytes | None = None
    streams: set[LeaseStream] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Completion:
    """What a completion did: the task (COMPLETED, or STALE when refused) and the transition."""

    task: TaskRecord
    transition: TransitionOutcome | None
    stale_reason: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    task: TaskRecord  # PENDING (retry), DEAD_LETTER, or STALE
    next_attempt_ms: int


@dataclass
class OutboundStats:
    leased: int = 0
    completed: int = 0
    failed: int = 0
    expired: int = 0
    stale: int = 0


class OutboundExecutor:
    def __init__(self, engine: Engine, settings: TaskSettings) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = settings
        self.stats = OutboundStats()
        self.leases: dict[str, Lease] = {}
        self._destinations: dict[str, _Destination] = {}
        self._busy: set[str] = set()  # task ids being dropped as stale (commit in flight)
        self._to_drop: dict[str, tuple[bytes, str]] = {}
        self._expiries: list[tuple[int, str, str]] = []  # heap of (expires_ms, task id, token)
        self._reaper_wake = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="lease-reaper")

    async def stop(self) -> None:
        """End every lease stream (leases stay until they are settled or expire)."""
        self._closing = True
        for state in self._destinations.values():
            for stream in state.streams:
                stream.wake.set()
        tasks = [*self._background, *([self._reaper] if self._reaper is not None else [])]
        for task in tasks:
            task.cancel()  # a commit already handed to the committer is still written
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reaper = None

    def wake_all(self) -> None:
        """Look at every queue again (this server took shards: their tasks are its to hand out)."""
        for state in self._destinations.values():
            state.cursor = None
            for stream in state.streams:
                stream.wake.set()

    def queue_entry_durable(self, key: bytes) -> None:
        """A queue entry became durable (called from the durable listener)."""
        destination = key[: key.index(b"\x00")].decode()
        state = self._destinations.get(destination)
        if state is None:
            return
        if state.cursor is not None and key <= state.cursor:
            state.cursor = None
        for stream in state.streams:
            stream.wake.set()

    def _state(self, destination: str) -> _Destination:
        state = self._destinations.get(destination)
        if state is None:
            s = self.settings
            state = self._destinations[destination] = _Destination(
                CircuitBreaker(s.breaker_threshold, s.breaker_cooldown_ms)
            )
        return state

    def _forget_if_idle(self, destination: str) -> None:
        """Forget a destination nothing refers to whose state is as new (no streams, nothing
        leased, breaker closed without failures): the names a stream asks for are the client's,
        so keeping every one ever seen would grow without bound. A destination whose breaker
        has counted failures is kept (its tasks come from machine types: few names)."""
        state = self._destinations.get(destination)
        if (
            state is not None
            and not state.streams
            and state.in_flight == 0
            and state.breaker.state is BreakerState.CLOSED
            and state.breaker.failures == 0
        ):
            del self._destinations[destination]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- handing out -------------------------------------------------------------------------

    async def stream(
        self, destinations: list[str], max_in_flight: int, lease_ms: int, worker_id: str
    ) -> AsyncGenerator[list[LeasedTask], None]:
        """Batches of newly leased tasks for one worker stream, as they become available."""
        stream = LeaseStream(destinations, max(1, max_in_flight), lease_ms, worker_id)
        for d in destinations:
            self._state(d).streams.add(stream)
        try:
            while not self._closing:
                stream.wake.clear()
                batch, wake_at = await self._take(stream)
                if batch:
                    # Closed at this yield, the stream may or may not have delivered the batch
                    # (the transport may have sent it): its leases stay and expire if the
                    # worker never settles them (an attempt, as for a worker that crashed).
                    yield batch
                    continue
                timeout = None if wake_at is None else max(0.001, (wake_at - now_ms()) / 1000)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.wake.wait(), timeout)
        finally:
            stream.closed = True
            for d in destinations:
                state = self._destinations.get(d)
                if state is not None:
                    state.streams.discard(stream)
                    self._forget_if_idle(d)

    async def _take(self, stream: LeaseStream) -> tuple[list[LeasedTask], int | None]:
        out: list[LeasedTask] = []
        wake_at: int | None = None
        dests = stream.destinations
        stream.turn += 1
        for i in range(len(dests)):
            if stream.max_in_flight - stream.in_flight <= 0:
                break
            destination = dests[(stream.turn + i) % len(dests)]
            state = self._state(destination)
            now = now_ms()
            if self._room(state, stream, now) <= 0:
                if state.breaker.allows(now) == 0:
                    reopens = state.breaker.reopens_at()
                    if reopens > now:
                        wake_at = reopens if wake_at is None else min(wake_at, reopens)
                continue
            next_at = await self._scan(destination, state, stream, now, out)
            if next_at is not None:
                wake_at = next_at if wake_at is None else min(wake_at, next_at)
        if self._to_drop:
            self._spawn(self._drop_stale())
        return out, wake_at

    def _room(self, state: _Destination, stream: LeaseStream, now: int) -> int:
        """How many more tasks of this destination the stream may lease now."""
        room = min(stream.max_in_flight - stream.in_flight, self.settings.max_in_flight - state.in_flight)
        allowed = state.breaker.allows(now)
        if allowed == 0:
            return 0
        return min(room, 1) if allowed == 1 else room

    async def _scan(
        self, destination: str, state: _Destination, stream: LeaseStream, now: int, out: list[LeasedTask]
    ) -> int | None:
        """Lease available tasks of destination into out, while there is room; returns when the
        next not-yet-available task becomes available (None: none known).

        Hand-outs decide on durable state only (a task whose creation is not yet durable is
        never handed out). Each page is read with awaits, then decided without any, so the
        checks (leased already? room left?) and the lease itself cannot interleave."""
        prefix = destination_prefix(destination)
        end = prefix + keys.u64(now + 1)
        view = self.engine.reads.view()
        while True:
            room = self._room(state, stream, now)
            if room <= 0:
                return None
            start = state.cursor + b"\x00" if state.cursor is not None else prefix
            # Cluster mode: only the shards this server owns (it holds their leases).
            shards = self.engine.shards
            owned = None if shards.count == 1 else sorted(shards.owned)
            page = await view.scan(Keyspace.OUTBOUND_QUEUE, start, end, limit=max(64, room * 2), shards=owned)
            if not page:
                break
            task_keys = [task_key_of(k) for k, _ in page]
            raws = await view.get_many(Keyspace.TASKS, task_keys)
            tasks = [codec.decode_task(raw) if raw is not None else None for raw in raws]
            nodes = await view.get_many(
                Keyspace.NODES, [keys.node_key(task.address) if task else b"" for task in tasks]
            )
            for (key, _), tkey, task, node_raw in zip(page, task_keys, tasks, nodes, strict=True):
                if self._room(state, stream, now) <= 0:
                    return None
                state.cursor = key
                if task is None:
                    continue
                task_id = task.task_id
                if task_id in self.leases or task_id in self._busy or task_id in self._to_drop:
                    continue
                if (
                    task.status not in QUEUED
                    or outbound_key(task.destination, task.available_ms, tkey) != key
                ):
                    continue
                reason = stale_reason(task, codec.decode_node(node_raw) if node_raw is not None else None)
                if reason:
                    self._to_drop[task_id] = (tkey, reason)
                    continue
                out.append(self._lease(task, tkey, state, stream, now))
        found = await view.seek(Keyspace.OUTBOUND_QUEUE, end)
        if found is not None and found[0].startswith(prefix):
            return keys.read_u64(found[0][len(prefix) : len(prefix) + 8])
        return None

    def _lease(
        self, task: TaskRecord, tkey: bytes, state: _Destination, stream: LeaseStream, now: int
    ) -> LeasedTask:
        token = secrets.token_hex(16)
        lease = Lease(
            task.task_id,
            tkey,
            token,
            task.destination,
            stream.worker_id,
            stream.lease_ms,
            now + stream.lease_ms,
            stream,
        )
        self.leases[task.task_id] = lease
        state.in_flight += 1
        stream.in_flight += 1
        state.breaker.leased(task.task_id)
        self._schedule_expiry(lease)
        self.stats.leased += 1
        return LeasedTask(with_status(task, TaskStatus.LEASED), token, lease.expires_ms)

    def _schedule_expiry(self, lease: Lease) -> None:
        first = self._expiries[0][0] if self._expiries else None
        heapq.heappush(self._expiries, (lease.expires_ms, lease.task_id, lease.token))
        if first is None or lease.expires_ms < first:
            self._reaper_wake.set()

    # -- leases --------------------------------------------------------------------------------

    def held(self, task_id: str, token: str) -> Lease:
        lease = self.leases.get(task_id)
        if lease is None or lease.token != token:
            raise FailedPrecondition(
                "LEASE_NOT_HELD",
                f"task {task_id} is not leased with this token: the lease expired, was released, "
                "or the task was settled",
                task_id=task_id,
            )
        return lease

    async def heartbeat(self, task_id: str, token: str, duration_ms: int) -> tuple[int, bool]:
        """Extend a lease; returns (new expiry, whether the task's node moved on)."""
        lease = self.held(task_id, token)
        if lease.settling is None:
            lease.expires_ms = now_ms() + (duration_ms or lease.duration_ms)
            self._schedule_expiry(lease)
        expires = lease.expires_ms
        # Durable state only: this answer leaves the server (guarantee 2).
        view = self.engine.reads.view()
        raw = await view.get(Keyspace.TASKS, lease.task_key)
        stale = False
        if raw is not None:
            task = codec.decode_task(raw)
            stale = bool(stale_reason(task, await self.engine.reads.get_node(task.address, view)))
        return expires, stale

    def release(self, task_id: str, token: str) -> None:
        """Give a lease back: the task is available again now; the attempt does not count."""
        lease = self.leases.get(task_id)
        if lease is None:
            return  # already gone: releasing is idempotent
        if lease.token != token:
            self.held(task_id, token)  # raises LEASE_NOT_HELD
        if lease.settling is not None:
            raise FailedPrecondition(
                "LEASE_SETTLED", f"task {task_id} is being settled with this lease", task_id=task_id
            )
        self._end_lease(lease, requeued=True)
        self._state(lease.destination).breaker.released(task_id)
        self._forget_if_idle(lease.destination)

    def _end_lease(self, lease: Lease, requeued: bool) -> None:
        if lease.ended:
            return
        lease.ended = True
        if self.leases.get(lease.task_id) is lease:
            del self.leases[lease.task_id]
        state = self._state(lease.destination)
        state.in_flight -= 1
        if requeued:
            state.cursor = None
        stream = lease.stream
        if stream is not None:
            stream.in_flight -= 1
            lease.stream = None
        for s in state.streams:
            s.wake.set()
        if stream is not None and not stream.closed:
            stream.wake.set()

    def lease_of(self, task_id: str) -> Lease | None:
        return self.leases.get(task_id)

    # -- settling ------------------------------------------------------------------------------

    async def _settle(
        self,
        build: Callable[[Commit], Any],
        respond: Callable[[Any, int], M],
        done: Callable[[bool], None],
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        """Commit a settlement; done(durable) runs once the commit's fate is known, even when
        the caller is cancelled meanwhile."""
        run = asyncio.ensure_future(
            self.engine.commit(
                build, respond, request_id=request_id, fingerprint=fingerprint, response_codec=response_codec
            )
        )

        def finished(f: asyncio.Future[M]) -> None:
            ok = not f.cancelled() and f.exception() is None
            done(ok)

        run.add_done_callback(finished)
        try:
            return await asyncio.shield(run)
        except InvalidArgument as e:
            if e.reason == "REQUEST_ID_REUSED":
                raise FailedPrecondition(
                    "LEASE_SETTLED",
                    "this lease was already settled with a different outcome; the first one stands",
                ) from e
            raise

    async def complete(
        self,
        task_id: str,
        token: str,
        transition: str,
        data: bytes | None,
        content_type: str,
        task_inputs: Sequence[TaskInput],
        respond: Callable[[Completion, int], M],
        response_codec: ResponseCodec[M],
        fingerprint: bytes,
    ) -> M:
        tkey = task_key(task_id)
        settling: list[tuple[Lease, Completion]] = []
        marker = object()

        def build(c: Commit) -> Completion:
            lease = self._claim(task_id, token, marker)
            task = read_task(c, tkey)
            if task is None or task.status not in QUEUED:
                raise FailedPrecondition(
                    "TASK_NOT_PENDING", f"task {task_id} is not pending", task_id=task_id
                )
            txn = c.transaction()
            node = txn.get(task.address)
            reason = stale_reason(task, node)
            if reason:
                result = Completion(drop_stale(c, task, node, reason, attempted=True), None, reason)
            else:
                assert node is not None
                outcome = None
                if transition:
                    outcome = txn.apply_transition(
                        task.address, transition, data, content_type, task_inputs=task_inputs
                    )
                new = with_status(task, TaskStatus.COMPLETED, attempts=task.attempts + 1)
                write_task(c, new, task)
                c.event(
                    EventKind.TASK_COMPLETED,
                    task.address,
                    node_type=node.type,
                    task_id=task_id,
                    transition=transition,
                    detail=task.name,
                )
                result = Completion(new, outcome)
            lease.settling = marker
            settling[:] = [(lease, result)]
            return result

        def done(durable: bool) -> None:
            if settling:
                lease, result = settling[0]
                self._settled(lease, durable, stale=bool(result.stale_reason))

        return await self._settle(
            build, respond, done, LEASE_REQUEST_PREFIX + token, fingerprint, response_codec
        )

    async def fail(
        self,
        task_id: str,
        token: str,
        error: str,
        permanent: bool,
        respond: Callable[[Failure, int], M],
        response_codec: ResponseCodec[M],
        fingerprint: bytes,
    ) -> M:
        tkey = task_key(task_id)
        settling: list[tuple[Lease, Failure]] = []
        marker = object()

        def build(c: Commit) -> Failure:
            lease = self._claim(task_id, token, marker)
            task = read_task(c, tkey)
            if task is None or task.status not in QUEUED:
                raise FailedPrecondition(
                    "TASK_NOT_PENDING", f"task {task_id} is not pending", task_id=task_id
                )
            result = self._apply_failure(c, task, error, permanent)
            lease.settling = marker
            settling[:] = [(lease, result)]
            return result

        def done(durable: bool) -> None:
            if settling:
                self._failure_settled(*settling[0], durable)

        return await self._settle(
            build, respond, done, LEASE_REQUEST_PREFIX + token, fingerprint, response_codec
        )

    def _claim(self, task_id: str, token: str, marker: object) -> Lease:
        lease = self.held(task_id, token)
        if lease.settling is not None and lease.settling is not marker:
            raise FailedPrecondition(
                "LEASE_SETTLED", f"task {task_id} is being settled with this lease", task_id=task_id
            )
        return lease

    def _apply_failure(self, c: Commit, task: TaskRecord, error: str, permanent: bool) -> Failure:
        node: NodeRecord | None = c.transaction().get(task.address)
        reason = stale_reason(task, node)
        message = clip_error(error or "failed")
        if reason:
            return Failure(drop_stale(c, task, node, reason, attempted=True), 0)
        assert node is not None
        attempts = task.attempts + 1
        common = {"node_type": node.type, "task_id": task.task_id}
        c.event(EventKind.TASK_FAILED, task.address, detail=message, **common)
        s = self.settings
        if permanent or attempts >= s.max_attempts:
            new = with_status(task, TaskStatus.DEAD_LETTER, attempts=attempts, last_error=message)
            write_task(c, new, task)
            why = "a permanent failure" if permanent else f"{attempts} attempts"
            c.event(EventKind.TASK_DEAD_LETTERED, task.address, detail=f"after {why}: {message}", **common)
            return Failure(new, 0)
        available = c.now_ms + backoff_ms(attempts, s.backoff_base_ms, s.backoff_max_ms)
        new = with_status(
            task, TaskStatus.PENDING, attempts=attempts, last_error=message, available_ms=available
        )
        write_task(c, new, task)
        return Failure(new, available)

    def _failure_settled(self, lease: Lease, result: Failure, durable: bool) -> None:
        status = result.task.status
        self._settled(
            lease, durable, stale=status is TaskStatus.STALE, failed=True, retry=status is TaskStatus.PENDING
        )

    def _settled(
        self, lease: Lease, durable: bool, stale: bool, failed: bool = False, retry: bool = False
    ) -> None:
        """End a lease once its settling commit finished: not durable → the task is available
        again; stale → dropped; else the breaker learns the outcome (failed, or succeeded)."""
        breaker = self._state(lease.destination).breaker
        if not durable:
            self._end_lease(lease, requeued=True)
            breaker.released(lease.task_id)
        elif stale:
            self._end_lease(lease, requeued=False)
            breaker.released(lease.task_id)
            self.stats.stale += 1
        elif failed:
            self._end_lease(lease, requeued=retry)
            breaker.failed(lease.task_id, now_ms())
            self.stats.failed += 1
        else:
            self._end_lease(lease, requeued=False)
            breaker.succeeded(lease.task_id)
            self.stats.completed += 1
        self._forget_if_idle(lease.destination)

    # -- expiry and stale drops ----------------------------------------------------------------

    async def _reap(self) -> None:
        while True:
            self._reaper_wake.clear()
            now = now_ms()
            expired: list[Lease] = []
            heap = self._expiries
            while heap and heap[0][0] <= now:
                _, task_id, token = heapq.heappop(heap)
                lease = self.leases.get(task_id)
                if (
                    lease is not None
                    and lease.token == token
                    and lease.settling is None
                    and lease.expires_ms <= now
                ):
                    # From now on the lease is not held (LEASE_NOT_HELD) and the task is not
                    # handed out again until the expiry is recorded.
                    lease.settling = _EXPIRING
                    del self.leases[task_id]
                    self._busy.add(task_id)
                    expired.append(lease)
            if expired:
                self._spawn(self._expire(expired))
            timeout = None if not heap else max(0.001, (heap[0][0] - now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reaper_wake.wait(), timeout)

    async def _expire(self, leases: list[Lease]) -> None:
        """Expired leases count as failed attempts: retried with backoff, or dead-lettered."""
        settling: list[tuple[Lease, Failure]] = []

        def build(c: Commit) -> None:
            settling.clear()  # a build may run again
            for lease in leases:
                task = read_task(c, lease.task_key)
                if task is None or task.status not in QUEUED:
                    continue
                message = (
                    f"lease expired after {lease.duration_ms} ms (worker {lease.worker_id or 'unnamed'})"
                )
                settling.append((lease, self._apply_failure(c, task, message, permanent=False)))

        def done(durable: bool) -> None:
            self._busy.difference_update(lease.task_id for lease in leases)
            settled = {id(lease) for lease, _ in settling}
            for lease, result in settling:
                self._failure_settled(lease, result, durable)
                self.stats.expired += 1
            for lease in leases:
                if id(lease) not in settled:
                    self._end_lease(lease, requeued=True)
                    self._forget_if_idle(lease.destination)

        try:
            await self._settle(build, lambda r, rev: r, done)
        except DomainError as e:
            log.error("recording %d expired leases failed: %s", len(leases), e.message)

    async def _drop_stale(self) -> None:
        if not self._to_drop:
            return
        batch, self._to_drop = self._to_drop, {}
        self._busy.update(batch)

        def build(c: Commit) -> None:
            txn = c.transaction()
            for task_id, (tkey, _) in batch.items():
                task = read_task(c, tkey)
                if task is None or task.status not in QUEUED or task_id in self.leases:
                    continue
                node = txn.get(task.address)
                reason = stale_reason(task, node)
                if reason:
                    drop_stale(c, task, node, reason, attempted=False)
                    self.stats.stale += 1

        def done(durable: bool) -> None:
            self._busy.difference_update(batch)
            if not durable:
                for tkey, _ in batch.values():
                    raw = self.store.get(Keyspace.TASKS, tkey)
                    state = self._destinations.get(codec.decode_task(raw).destination) if raw else None
                    if state is not None:
                        state.cursor = None

        try:
            await self._settle(build, lambda r, rev: r, done)
        except DomainError as e:
            log.error("dropping %d stale tasks failed: %s", len(batch), e.message)
