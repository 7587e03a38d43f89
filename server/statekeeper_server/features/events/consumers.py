"""Named durable consumers: a persisted position and, in memory, the deliveries awaiting an
acknowledgement, shared round-robin among the consumer's subscribers.

The position is an ack floor (like a JetStream consumer's): every event up to `floor` is
acknowledged or left out by the consumer's filter; acknowledged events above it are kept one
key each (at most `max_unacked` of them: while the oldest unacknowledged event stays
unacknowledged, no new events are delivered once that many later ones are acknowledged). A
consumer's position moves past commits its filter leaves out, with or without subscribers, so
a consumer that has acknowledged everything it matches never holds back event retention.

What GetConsumer, the compactor and the metrics see is durable: `record.floor` moves only once
the write that moved it is durable, and a consumer exists for them only once its creation is.
After a restart or when a subscriber leaves, whatever was delivered but not acknowledged is
delivered again.

Storage (Keyspace.CONSUMERS; names never hold 0x00):
    name                        -> the consumer record (codec.encode_consumer)
    name 0x00 revision index    -> b"": an event acknowledged above the floor
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from statekeeper_server.core.committer import PendingCommit
from statekeeper_server.domain.errors import AlreadyExists, DomainError, NotFound, OutOfRange, Unavailable
from statekeeper_server.domain.events import EventFilter, EventPosition
from statekeeper_server.domain.model import Event
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.consumers")

MAX_INDEX = 2**31 - 1
SCAN_CHUNK = 2_000
"""Events read at a time (delivering, or moving an idle consumer past what it does not match)."""
CHECKPOINT_S = 1.0
"""How often positions moved by filtered-out commits (not by an ack) are written."""

Mutation = tuple[Keyspace, bytes, bytes | None]
# Queues a durable write at once (in call order with every other write); resolves once durable.
Persist = Callable[[list[Mutation], int], asyncio.Future[None]]
"""Queue a durable write of these mutations for a shard (engine.enqueue_unversioned)."""


def before(p: EventPosition) -> EventPosition:
    return (p[0], p[1] - 1) if p[1] > 0 else (p[0] - 1, MAX_INDEX)


def after(p: EventPosition) -> EventPosition:
    # After a whole revision (index MAX_INDEX) comes the next revision: a position such as
    # (r, MAX_INDEX + 1) would read as revision r, which may be compacted (or 0) already.
    return (p[0] + 1, 0) if p[1] >= MAX_INDEX else (p[0], p[1] + 1)


def covered_revision(floor: EventPosition) -> int:
    """The revision up to which a floor covers every event (a floor inside a revision does not
    cover that revision: more of its events may follow)."""
    return max(floor[0] if floor[1] == MAX_INDEX else floor[0] - 1, 0)


def ack_key(name: str, pos: EventPosition) -> bytes:
    return name.encode() + b"\x00" + keys.seq_key(*pos)


@dataclass
class ConsumerRecord:
    """The durable part. `floor` is the durable floor: it moves once a write is durable."""

    name: str
    filter: EventFilter
    ack_wait_ms: int
    max_unacked: int
    floor: EventPosition
    create_revision: int

    def encode(self, floor: EventPosition) -> bytes:
        # Acks above the floor are keys of their own (ack_key), never in the record.
        return codec.encode_consumer(
            self.name, self.filter, self.ack_wait_ms, self.max_unacked, floor, set(), self.create_revision
        )


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
    next_pos: EventPosition  # the next event to read
    # The working floor: what the next write makes durable (>= record.floor).
    floor: EventPosition
    # Acknowledged above the working floor (the dispatcher skips them).
    acked: set[EventPosition] = field(default_factory=set)
    # Of those, not yet handed to a write; and the ack keys written or being written.
    unsaved: set[EventPosition] = field(default_factory=set)
    ack_keys: set[EventPosition] = field(default_factory=set)
    written_floor: EventPosition = (0, 0)  # the floor of the last record write handed out
    acking: int = 0  # acked deliveries whose write is not durable yet (still "unacked")
    in_flight: dict[EventPosition, InFlight] = field(default_factory=dict)
    redeliver: deque[EventPosition] = field(default_factory=deque)
    subscribers: list[Subscriber] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    turn: int = 0
    error: DomainError | None = None
    deleting: bool = False
    blocked: bool = False  # no subscriber, and next_pos is an event it matches


@dataclass
class _Snapshot:
    """What one write hands out for a consumer, to settle once the write's fate is known."""

    state: ConsumerState
    floor: EventPosition
    acks: set[EventPosition]
    deleted_keys: set[EventPosition]
    record: bool


class ConsumerManager:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        persist: Persist,
        load: bool = True,
        shard_of: Callable[[str], int] = lambda name: 0,
    ) -> None:
        """load: read every consumer from the store now (one server; in cluster mode each
        server loads the consumers of the shards it takes, with `adopt`, and `forget`s those
        of the shards it gives up). shard_of: a consumer's shard (by its name)."""
        self._store = store
        self._hub = hub
        self._persist = persist
        self._shard_of = shard_of
        self._loading: set[int] = set()  # shards whose consumers are being loaded (cluster)
        self._states: dict[str, ConsumerState] = {}
        self._creating: set[str] = set()
        self._checkpointer: asyncio.Task[None] | None = None
        if load:
            self.adopt(store.scan(Keyspace.CONSUMERS))

    def loading(self, shards: Collection[int]) -> None:
        """These shards' consumers are being loaded: calls for them wait (are refused)."""
        self._loading |= set(shards)

    def adopt(self, items: Iterable[tuple[bytes, bytes]], shards: Collection[int] = ()) -> None:
        """Serve these consumers (their stored keys and values) from now on; the shards they
        were loaded for are served from now on."""
        self._loading -= set(shards)
        acks: dict[str, set[EventPosition]] = {}
        adopted: list[ConsumerState] = []
        for key, raw in items:
            owner, sep, rest = key.partition(b"\x00")
            if sep:
                acks.setdefault(owner.decode(), set()).add(keys.seq_key_parts(rest))
                continue
            name, flt, ack_wait, max_unacked, floor, legacy, create_revision = codec.decode_consumer(raw)
            record = ConsumerRecord(name, flt, ack_wait, max_unacked, floor, create_revision)
            state = ConsumerState(record, after(floor), floor, written_floor=floor)
            # Older records held their acks above the floor inline: they move to keys (and
            # the record is rewritten without them) at the first write.
            state.unsaved = {p for p in legacy if p > floor}
            if state.unsaved:
                state.written_floor = before(floor)
            state.acked.update(state.unsaved)
            self._states[name] = state
            adopted.append(state)
        for name, positions in acks.items():
            found = self._states.get(name)
            if found is not None:
                found.ack_keys |= positions
                found.acked.update(p for p in positions if p > found.floor)
        if self._checkpointer is not None:  # started already: catch up at once
            for state in adopted:
                self._ensure_scanning(state)

    def forget(self, names: Collection[str]) -> None:
        """Stop serving these consumers (cluster mode: their shard moved to another server).
        Their subscribers' streams end; the clients subscribe again, at the new owner."""
        for name in names:
            state = self._states.pop(name, None)
            if state is None:
                continue
            state.error = Unavailable(
                "NOT_SHARD_OWNER",
                f"consumer {name!r} moved to another server; subscribe again (any server forwards)",
                consumer=name,
            )
            for sub in state.subscribers:
                sub.closed = True
                sub.queue.put_nowait(None)
            if state.task is not None:
                state.task.cancel()

    def shard_names(self, shards: Collection[int]) -> list[str]:
        wanted = set(shards)
        return [n for n in self._states if self._shard_of(n) in wanted]

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Move every consumer past what it does not match (after a restart), and write such
        moves every CHECKPOINT_S."""
        for state in self._states.values():
            self._ensure_scanning(state)
        self._checkpointer = asyncio.get_running_loop().create_task(
            self._checkpoint_loop(), name="consumer-checkpoints"
        )

    def stop(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        for state in self._states.values():
            if state.task is not None:
                state.task.cancel()

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            top = self._hub.durable_revision
            for state in list(self._states.values()):
                # Catch up what on_durable did not see (a cluster's other servers' commits).
                if not state.blocked and state.next_pos[0] <= top and state.error is None:
                    self._ensure_scanning(state)
            try:
                await self.checkpoint()
            except DomainError as e:  # the store failed: the server is stopping
                log.warning("writing consumer positions failed: %s", e.message)
            except Exception:
                log.exception("writing consumer positions failed; will retry")

    # -- management --------------------------------------------------------------------------

    def _check_loaded(self, name: str) -> None:
        if self._loading and self._shard_of(name) in self._loading:
            raise Unavailable(
                "SHARD_LOADING",
                f"consumer {name!r}: this server took its shard a moment ago and is loading it; retry",
                consumer=name,
            )

    async def create(
        self, name: str, event_filter: EventFilter, start: EventPosition, ack_wait_ms: int, max_unacked: int
    ) -> ConsumerState:
        self._check_loaded(name)
        if name in self._states or name in self._creating:
            raise AlreadyExists("CONSUMER_EXISTS", f"consumer {name!r} exists already", consumer=name)
        self._hub.check_start(start[0])
        floor = before(start)
        record = ConsumerRecord(
            name, event_filter, ack_wait_ms, max_unacked, floor, self._hub.durable_revision
        )
        state = ConsumerState(record, start, floor, written_floor=floor)
        # Visible (to GetConsumer, the compactor, subscribers) once its write is durable.
        mutations: list[Mutation] = [(Keyspace.CONSUMERS, name.encode(), record.encode(floor))]
        # No acks of an earlier consumer of that name may apply to this one.
        prefix = name.encode() + b"\x00"
        self._creating.add(name)
        try:
            stale = await self._store.durable().scan(
                Keyspace.CONSUMERS, prefix, name.encode() + b"\x01", limit=1_000_000
            )
        except BaseException:
            self._creating.discard(name)
            raise
        mutations += [(Keyspace.CONSUMERS, key, None) for key, _ in stale]
        write = self._persist(mutations, self._shard_of(name))

        def created(f: asyncio.Future[None]) -> None:
            # By the write's fate, also when the caller went away meanwhile.
            self._creating.discard(name)
            if not f.cancelled() and f.exception() is None:
                self._states[name] = state
                self._ensure_scanning(state)

        write.add_done_callback(created)
        await asyncio.shield(write)
        return state

    def get(self, name: str) -> ConsumerState:
        state = self._states.get(name)
        if state is None:
            self._check_loaded(name)
            raise NotFound("CONSUMER_NOT_FOUND", f"consumer {name!r} does not exist", consumer=name)
        return state

    def find(self, name: str) -> ConsumerState | None:
        return self._states.get(name)

    def _live(self, name: str) -> ConsumerState:
        """A consumer that may change (not being deleted)."""
        state = self.get(name)
        if state.deleting:
            raise NotFound("CONSUMER_NOT_FOUND", f"consumer {name!r} is being deleted", consumer=name)
        return state

    def names(self) -> list[str]:
        return sorted(self._states)

    async def delete(self, name: str) -> None:
        state = self._live(name)
        state.deleting = True
        mutations: list[Mutation] = [(Keyspace.CONSUMERS, name.encode(), None)]
        mutations += [(Keyspace.CONSUMERS, ack_key(name, p), None) for p in state.ack_keys]
        write = self._persist(mutations, self._shard_of(name))

        def deleted(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                state.deleting = False
                return
            self._states.pop(name, None)
            for sub in state.subscribers:
                sub.closed = True
                sub.queue.put_nowait(None)
            if state.task is not None:
                state.task.cancel()

        write.add_done_callback(deleted)
        await asyncio.shield(write)

    def retention_floor(self) -> int | None:
        """The oldest revision some consumer still needs (durable positions), or None."""
        needed = [self.acked_revision(s) + 1 for s in self._states.values() if s.error is None]
        return min(needed) if needed else None

    def mark_behind(self, oldest_revision: int) -> None:
        """Consumers whose position was compacted away are told so on their next subscribe."""
        for state in self._states.values():
            needed = self.acked_revision(state) + 1
            if needed < oldest_revision and state.error is None:
                state.error = OutOfRange(
                    "CONSUMER_BEHIND_RETENTION",
                    f"consumer {state.record.name!r} fell behind the retention cap: events from revision "
                    f"{needed} to {oldest_revision - 1} were deleted; recreate it",
                    consumer=state.record.name,
                    oldest_revision=oldest_revision,
                )
                for sub in state.subscribers:
                    sub.queue.put_nowait(None)

    @staticmethod
    def unacked(state: ConsumerState) -> int:
        """Delivered and not durably acknowledged."""
        return len(state.in_flight) + state.acking

    @staticmethod
    def acked_revision(state: ConsumerState) -> int:
        """Every event up to this revision is durably acknowledged (or filtered out)."""
        return covered_revision(state.record.floor)

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

    # -- positions and their writes ----------------------------------------------------------

    @staticmethod
    def _advance(state: ConsumerState) -> None:
        """Move the working floor up to just before the oldest event still owed: one in flight,
        or the next to read. Everything between was acknowledged or left out by the filter."""
        lowest = min(state.in_flight) if state.in_flight else state.next_pos
        floor = max(state.floor, before(lowest))
        if floor != state.floor:
            state.floor = floor
            if state.acked:
                state.acked = {p for p in state.acked if p > floor}
                state.unsaved = {p for p in state.unsaved if p > floor}

    @staticmethod
    def _snapshot(state: ConsumerState, mutations: list[Mutation]) -> _Snapshot | None:
        """Add what the consumer's next write holds to mutations (None: nothing to write)."""
        r, floor = state.record, state.floor
        name = r.name
        write_record = floor > state.written_floor
        if write_record:
            mutations.append((Keyspace.CONSUMERS, name.encode(), r.encode(floor)))
            state.written_floor = floor
        acks = {p for p in state.unsaved if p > floor}
        state.unsaved.clear()
        for p in acks:
            mutations.append((Keyspace.CONSUMERS, ack_key(name, p), b""))
        state.ack_keys |= acks
        gone = {p for p in state.ack_keys if p <= floor}
        for p in gone:
            mutations.append((Keyspace.CONSUMERS, ack_key(name, p), None))
        state.ack_keys -= gone
        if not (write_record or acks or gone):
            return None
        return _Snapshot(state, floor, acks, gone, write_record)

    @staticmethod
    def _settle(snap: _Snapshot, durable: bool) -> None:
        state = snap.state
        if durable:
            if snap.floor > state.record.floor:
                state.record.floor = snap.floor
            return
        # Not written: hand it all to the next write again.
        if snap.record:
            state.written_floor = state.record.floor
        state.unsaved |= {p for p in snap.acks if p > state.floor}
        state.ack_keys -= snap.acks
        state.ack_keys |= snap.deleted_keys

    async def _write(self, snapshots: list[_Snapshot], mutations: list[Mutation]) -> None:
        """Write (the snapshots are of consumers of one shard), and settle the snapshots by the
        write's fate (also when the caller goes away: the write stays queued)."""
        write = self._persist(mutations, self._shard_of(snapshots[0].state.record.name))

        def settle(f: asyncio.Future[None]) -> None:
            durable = not f.cancelled() and f.exception() is None
            for snap in snapshots:
                self._settle(snap, durable)

        write.add_done_callback(settle)
        await asyncio.shield(write)

    async def checkpoint(self, names: Collection[str] | None = None) -> None:
        """Write the positions that moved without an ack (filtered-out commits), so that what
        is shown and what the compactor uses is durable. One write for all of them."""
        found = self._states.get
        states = self._states.values() if names is None else [s for n in names if (s := found(n))]
        by_shard: dict[int, tuple[list[_Snapshot], list[Mutation]]] = {}
        for state in states:
            if state.deleting:
                continue
            snapshots, mutations = by_shard.setdefault(self._shard_of(state.record.name), ([], []))
            snap = self._snapshot(state, mutations)
            if snap is not None:
                snapshots.append(snap)
        for snapshots, mutations in by_shard.values():  # one write per shard
            if snapshots:
                await self._write(snapshots, mutations)

    # -- acknowledgements --------------------------------------------------------------------

    async def ack(self, name: str, positions: list[EventPosition], up_to_revision: int) -> int:
        """Acknowledge deliveries and/or everything up to a revision; returns the revision up
        to which everything is acknowledged, once that is durable."""
        state = self._live(name)
        acked = 0
        for pos in positions:
            if pos > state.floor and state.in_flight.pop(pos, None) is not None:
                state.acked.add(pos)
                state.unsaved.add(pos)
                acked += 1
        if up_to_revision:
            top = (up_to_revision, MAX_INDEX)
            for pos in [p for p in state.in_flight if p <= top]:
                del state.in_flight[pos]
                acked += 1
            if state.next_pos <= top:
                state.next_pos = after(top)
                self._ensure_scanning(state)
        self._advance(state)
        state.wake.set()
        mutations: list[Mutation] = []
        snap = self._snapshot(state, mutations)
        state.acking += acked
        try:
            if snap is not None:
                await self._write([snap], mutations)
        finally:
            state.acking -= acked
        # Durable only (a floor an earlier write still carries is not reported yet).
        return self.acked_revision(state)

    # -- delivery ----------------------------------------------------------------------------

    def subscribe(self, name: str) -> tuple[ConsumerState, Subscriber]:
        state = self._live(name)
        if state.error is not None:
            raise state.error
        sub = Subscriber()
        state.subscribers.append(sub)
        self._ensure_scanning(state)
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

    def on_durable(self, group: list[PendingCommit]) -> None:
        """A durable listener: consumers nobody reads for (no dispatcher running) follow the
        durable top past commits their filter leaves out, and stop at the first that matches."""
        for state in self._states.values():
            if (
                state.error is not None
                or state.deleting
                or (state.task is not None and not state.task.done())
            ):
                continue
            moved = False
            flt = state.record.filter
            for commit in group:
                if not commit.revision or state.next_pos != (commit.revision, 0):
                    continue
                if any(flt.matches(e) for e in commit.events):
                    break
                state.next_pos = (commit.revision + 1, 0)
                moved = True
            if moved:
                self._advance(state)

    def _ensure_scanning(self, state: ConsumerState) -> None:
        if (state.task is None or state.task.done()) and not state.deleting:
            state.blocked = False
            state.task = asyncio.get_running_loop().create_task(
                self._dispatch(state), name=f"consumer:{state.record.name}"
            )

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

    def _redeliver(self, state: ConsumerState) -> None:
        now = time.monotonic()
        for pos, flight in state.in_flight.items():
            if flight.subscriber is not None and flight.deadline <= now:
                flight.subscriber = None
                state.redeliver.append(pos)
        if state.redeliver:
            # Oldest first, once each: redeliveries keep the consumer's event order.
            state.redeliver = deque(sorted(set(state.redeliver)))
        while state.redeliver and state.subscribers:
            # Redeliver only to a subscriber that has drained its queue: a slow one must not
            # pile up copies of the same events every ack wait (bounded memory).
            if all(sub.queue.qsize() for sub in state.subscribers):
                break
            pos = state.redeliver.popleft()
            waiting = state.in_flight.get(pos)
            if waiting is not None and waiting.subscriber is None:
                self._deliver(state, pos, waiting.event, waiting.count + 1, idle_only=True)

    async def _dispatch(self, state: ConsumerState) -> None:
        """Delivers while the consumer has subscribers. Without any, it only moves the consumer
        past what its filter leaves out, up to the first event it matches or the durable top;
        then it ends (on_durable follows the top from there)."""
        record = state.record
        while state.error is None and not state.deleting:
            state.wake.clear()
            if state.subscribers:
                self._redeliver(state)
                # Bounded memory: in flight, and acked above the oldest unacked event.
                room = min(record.max_unacked - len(state.in_flight), record.max_unacked - len(state.acked))
                limit = min(room * 4, SCAN_CHUNK)
            else:
                room, limit = SCAN_CHUNK, SCAN_CHUNK
            top = self._hub.durable_revision
            moved = False
            if room > 0 and state.next_pos[0] <= top:
                try:
                    events = await self._hub.read(state.next_pos, limit)
                except OutOfRange:
                    self.mark_behind(self._hub.oldest_revision)
                    return
                moved = self._consume(state, events, room, limit, top)
            if not state.subscribers:
                if not moved:
                    # Caught up, or at an event it matches: wait for a subscriber.
                    state.blocked = state.next_pos[0] <= self._hub.durable_revision
                    return
                await asyncio.sleep(0)
                continue
            if moved:
                await asyncio.sleep(0)
                continue
            await self._wait(state, room)

    def _consume(self, state: ConsumerState, events: list[Event], room: int, limit: int, top: int) -> bool:
        """Deliver (or, without subscribers, step past) what was read; True if it moved on."""
        record = state.record
        start = state.next_pos
        for event in events:
            pos = (event.revision, event.index)
            if pos > state.floor and pos not in state.acked and record.filter.matches(event):
                if not state.subscribers:
                    break  # an idle consumer stops at the first event it matches
                self._deliver(state, pos, event, 1)
                state.next_pos = after(pos)
                room -= 1
                if room <= 0:
                    break
            else:
                state.next_pos = after(pos)
        else:
            # A short read ends at the durable top as of the read (>= top): every revision up
            # to top was read in full.
            if len(events) < limit and state.next_pos < (top + 1, 0):
                state.next_pos = (top + 1, 0)
        self._advance(state)
        return state.next_pos != start

    async def _wait(self, state: ConsumerState, room: int) -> None:
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
