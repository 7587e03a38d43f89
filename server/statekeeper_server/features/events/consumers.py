"""Named durable consumers: a persisted position (every event up to `floor` is acknowledged or
filtered out, plus the acknowledged ones beyond it), and in memory the deliveries awaiting an
acknowledgement, shared round-robin among the consumer's subscribers.

After a restart or when a subscriber leaves, whatever was delivered but not acknowledged is
delivered again, with a higher delivery count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from statekeeper_server.domain.errors import AlreadyExists, NotFound, OutOfRange
from statekeeper_server.domain.events import EventFilter, EventPosition
from statekeeper_server.domain.model import Event
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage import codec
from statekeeper_server.storage.base import Keyspace, Store

MAX_INDEX = 2**31 - 1


def before(p: EventPosition) -> EventPosition:
    return (p[0], p[1] - 1) if p[1] > 0 else (p[0] - 1, MAX_INDEX)


def after(p: EventPosition) -> EventPosition:
    # After a whole revision (index MAX_INDEX) comes the next revision: a position such as
    # (r, MAX_INDEX + 1) would read as revision r, which may be compacted (or 0) already.
    return (p[0] + 1, 0) if p[1] >= MAX_INDEX else (p[0], p[1] + 1)


@dataclass
class ConsumerRecord:
    name: str
    filter: EventFilter
    ack_wait_ms: int
    max_unacked: int
    floor: EventPosition
    acked_above: set[EventPosition]
    create_revision: int


@dataclass
class InFlight:
    event: Event
    count: int
    deadline: float
    subscriber: Subscriber | None


class Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Event, int] | None] = asyncio.Queue()
        self.closed = False


@dataclass
class ConsumerState:
    record: ConsumerRecord
    next_pos: EventPosition
    in_flight: dict[EventPosition, InFlight] = field(default_factory=dict)
    redeliver: deque[EventPosition] = field(default_factory=deque)
    subscribers: list[Subscriber] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    turn: int = 0
    error: OutOfRange | None = None


Persist = Callable[[list[tuple[Keyspace, bytes, bytes | None]]], Awaitable[None]]


class ConsumerManager:
    def __init__(self, store: Store, hub: EventHub, persist: Persist, load: bool = True) -> None:
        """load: read every consumer from the store now (one server; in cluster mode each
        server loads the consumers of the shards it takes, with `adopt`)."""
        self._hub = hub
        self._persist = persist
        self._states: dict[str, ConsumerState] = {}
        if load:
            self.adopt(raw for _, raw in store.scan(Keyspace.CONSUMERS))

    def adopt(self, records: Iterable[bytes]) -> None:
        """Serve these consumers (their stored records) from now on."""
        for raw in records:
            record = ConsumerRecord(*codec.decode_consumer(raw))
            self._states[record.name] = ConsumerState(record, after(record.floor))

    # -- management --------------------------------------------------------------------------

    async def create(
        self, name: str, event_filter: EventFilter, start: EventPosition, ack_wait_ms: int, max_unacked: int
    ) -> ConsumerState:
        if name in self._states:
            raise AlreadyExists("CONSUMER_EXISTS", f"consumer {name!r} exists already", consumer=name)
        self._hub.check_start(start[0])
        record = ConsumerRecord(
            name, event_filter, ack_wait_ms, max_unacked, before(start), set(), self._hub.durable_revision
        )
        state = ConsumerState(record, start)
        self._states[name] = state
        try:
            await self._save(state)
        except BaseException:
            self._states.pop(name, None)
            raise
        return state

    def get(self, name: str) -> ConsumerState:
        state = self._states.get(name)
        if state is None:
            raise NotFound("CONSUMER_NOT_FOUND", f"consumer {name!r} does not exist", consumer=name)
        return state

    def names(self) -> list[str]:
        return sorted(self._states)

    async def delete(self, name: str) -> None:
        state = self.get(name)
        del self._states[name]
        for sub in state.subscribers:
            sub.closed = True
            sub.queue.put_nowait(None)
        if state.task is not None:
            state.task.cancel()
        await self._persist([(Keyspace.CONSUMERS, name.encode(), None)])

    def retention_floor(self) -> int | None:
        """The oldest revision some consumer still needs, or None without consumers."""
        floors = [s.record.floor[0] + 1 for s in self._states.values() if s.error is None]
        return min(floors) if floors else None

    def mark_behind(self, oldest_revision: int) -> None:
        """Consumers whose position was compacted away are told so on their next subscribe."""
        for state in self._states.values():
            if state.record.floor[0] + 1 < oldest_revision and state.error is None:
                state.error = OutOfRange(
                    "CONSUMER_BEHIND_RETENTION",
                    f"consumer {state.record.name!r} fell behind the retention cap: events from revision "
                    f"{state.record.floor[0] + 1} to {oldest_revision - 1} were deleted; recreate it",
                    consumer=state.record.name,
                    oldest_revision=oldest_revision,
                )
                for sub in state.subscribers:
                    sub.queue.put_nowait(None)

    @staticmethod
    def unacked(state: ConsumerState) -> int:
        return len(state.in_flight)

    @staticmethod
    def acked_revision(state: ConsumerState) -> int:
        """Every event up to this revision is acknowledged (or filtered out)."""
        floor = state.record.floor
        return max(floor[0] if floor[1] == MAX_INDEX else floor[0] - 1, 0)

    def lag(self, name: str) -> int:
        """Revisions committed after the consumer's acked revision (0 for an unknown name)."""
        state = self._states.get(name)
        return 0 if state is None else max(0, self._hub.durable_revision - self.acked_revision(state))

    def subscriber_count(self) -> int:
        """Subscribers connected to any consumer (safe to call from another thread)."""
        return sum(len(s.subscribers) for s in list(self._states.values()))

    def max_subscribed_lag(self) -> int:
        """The largest lag of a consumer that has subscribers (safe from another thread)."""
        durable = self._hub.durable_revision
        lags = [durable - self.acked_revision(s) for s in list(self._states.values()) if s.subscribers]
        return max(lags, default=0)

    async def _save(self, state: ConsumerState) -> None:
        r = state.record
        raw = codec.encode_consumer(
            r.name, r.filter, r.ack_wait_ms, r.max_unacked, r.floor, r.acked_above, r.create_revision
        )
        await self._persist([(Keyspace.CONSUMERS, r.name.encode(), raw)])

    # -- acknowledgements --------------------------------------------------------------------

    async def ack(self, name: str, positions: list[EventPosition], up_to_revision: int) -> int:
        state = self.get(name)
        record = state.record
        for pos in positions:
            if pos <= record.floor:
                continue
            if state.in_flight.pop(pos, None) is not None:
                record.acked_above.add(pos)
        if up_to_revision:
            top = (up_to_revision, MAX_INDEX)
            for pos in [p for p in state.in_flight if p <= top]:
                del state.in_flight[pos]
            if state.next_pos <= top:
                state.next_pos = after(top)
        lowest = min(state.in_flight) if state.in_flight else state.next_pos
        new_floor = max(record.floor, before(lowest))
        record.floor = new_floor
        record.acked_above = {p for p in record.acked_above if p > new_floor}
        state.wake.set()
        await self._save(state)
        return record.floor[0] if record.floor[1] == MAX_INDEX else record.floor[0] - 1

    # -- delivery ----------------------------------------------------------------------------

    def subscribe(self, name: str) -> tuple[ConsumerState, Subscriber]:
        state = self.get(name)
        if state.error is not None:
            raise state.error
        sub = Subscriber()
        state.subscribers.append(sub)
        if state.task is None or state.task.done():
            state.task = asyncio.get_running_loop().create_task(
                self._dispatch(state), name=f"consumer:{name}"
            )
        state.wake.set()
        return state, sub

    def unsubscribe(self, state: ConsumerState, sub: Subscriber) -> None:
        sub.closed = True
        with contextlib.suppress(ValueError):
            state.subscribers.remove(sub)
        for pos, flight in state.in_flight.items():
            if flight.subscriber is sub:
                flight.subscriber = None
                state.redeliver.append(pos)
        state.wake.set()

    def _deliver(
        self, state: ConsumerState, pos: EventPosition, event: Event, count: int, idle_only: bool = False
    ) -> None:
        subs = state.subscribers
        sub = subs[state.turn % len(subs)]
        if idle_only:
            sub = next(
                s for i in range(len(subs)) if not (s := subs[(state.turn + i) % len(subs)]).queue.qsize()
            )
        state.turn += 1
        deadline = time.monotonic() + state.record.ack_wait_ms / 1000
        state.in_flight[pos] = InFlight(event, count, deadline, sub)
        sub.queue.put_nowait((event, count))

    async def _dispatch(self, state: ConsumerState) -> None:
        record = state.record
        while state.subscribers and state.error is None:
            state.wake.clear()
            now = time.monotonic()
            for pos, flight in state.in_flight.items():
                if flight.subscriber is not None and flight.deadline <= now:
                    flight.subscriber = None
                    state.redeliver.append(pos)
            if state.redeliver:
                # Oldest first, once each: redeliveries keep the consumer's event order.
                state.redeliver = deque(sorted(set(state.redeliver)))
            while state.redeliver and state.subscribers:
                # Redeliver only to a subscriber that has drained its queue: a slow one must
                # not pile up copies of the same events every ack wait (bounded memory).
                if all(sub.queue.qsize() for sub in state.subscribers):
                    break
                pos = state.redeliver.popleft()
                flight_ = state.in_flight.get(pos)
                if flight_ is not None and flight_.subscriber is None:
                    self._deliver(state, pos, flight_.event, flight_.count + 1, idle_only=True)
            room = record.max_unacked - len(state.in_flight)
            if room > 0:
                try:
                    events = await self._hub.read(state.next_pos, min(room * 4, 2_000))
                except OutOfRange:
                    self.mark_behind(self._hub.oldest_revision)
                    return
                for event in events:
                    pos = (event.revision, event.index)
                    state.next_pos = after(pos)
                    if pos > record.floor and pos not in record.acked_above and record.filter.matches(event):
                        self._deliver(state, pos, event, 1)
                        room -= 1
                        if room <= 0:
                            break
                if events:
                    await asyncio.sleep(0)
                    continue
            timeout = 1.0
            deadlines = [f.deadline for f in state.in_flight.values() if f.subscriber is not None]
            if deadlines:
                timeout = max(0.001, min(timeout, min(deadlines) - time.monotonic()))
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(state.wake.wait())]
            if room > 0:
                # Everything durable so far was read: wait for a newer revision.
                waiters.append(asyncio.ensure_future(self._hub.wait(self._hub.durable_revision, timeout)))
            _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
