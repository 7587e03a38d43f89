"""EventService: watch the event log, durable consumers, acknowledgements."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator
from typing import Any

from statekeeper.v1 import common_pb2
from statekeeper.v1 import event_pb2 as pb
from statekeeper_server.core.engine import Engine
from statekeeper_server.domain.errors import InvalidArgument, OutOfRange
from statekeeper_server.domain.events import EventFilter
from statekeeper_server.domain.model import EventKind, NodeAddress
from statekeeper_server.domain.validation import check_address, check_name, check_page_size
from statekeeper_server.entrypoints.grpc import convert
from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS, event_pb, event_wire, varint
from statekeeper_server.features import listings
from statekeeper_server.features.events.consumers import ConsumerManager, ConsumerState, covered_revision
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.features.events.lane import SLICE_EVENTS, STORED_SLICE_EVENTS
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace

Context = Any

DEFAULT_BATCH = 1000
DEFAULT_PROGRESS_MS = 1000
DEFAULT_ACK_WAIT_MS = 30_000
DEFAULT_MAX_UNACKED = 1000
HEARTBEAT_S = 1.0
DEFAULT_SCAN_LIMIT = 50_000
MAX_SCAN_LIMIT = 1_000_000
_EVENTS_TOKEN = struct.Struct(">QI8s")  # continue before (revision, index); the listing's digest
MAX_STREAM_MESSAGE_BYTES = 128 * 1024
"""A Watch or Subscribe message stops growing at this size (or at its event count). A stream
encodes its next message only once the transport has taken the previous one (gRPC completes a
send once HTTP/2 flow control let it out), so a stream holds at most one such message: a client
that stops reading costs the server this much, not its backlog."""


def _field_head(tag: int, n: int) -> bytes:
    """The tag and length of a length-delimited field of n bytes."""
    return bytes((tag,)) + varint(n)


def _message_field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag` is field number << 3 | 2) of protobuf's wire format: a
    message built from encoded parts is the concatenation of its fields."""
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return bytes((tag,)) + varint(n) + payload


_EVENTS_FIELD = 1 << 3 | 2  # WatchResponse.events, SubscribeResponse.deliveries
_SHORT = 1 << 14  # field lengths of at most two varint bytes: their heads are made once
_EVENT_HEADS = [bytes((_EVENTS_FIELD,)) + varint(n) for n in range(_SHORT)]
_PROGRESS_FIELD = 2 << 3  # WatchResponse.progress_revision (varint)
_DELIVERY_COUNT_FIELD = 2 << 3  # Delivery.delivery_count (varint)


def event_filter(f: pb.EventFilter, engine: Engine) -> EventFilter:
    limits = engine.limits
    if f.root_id:
        check_address(
            convert.address(common_pb2.NodeRef(root_id=f.root_id, path=f.path_prefix)), "filter", limits
        )
    elif len(f.path_prefix):
        raise InvalidArgument(
            "FIELD_REQUIRED", "filter.path_prefix needs filter.root_id", field="filter.root_id"
        )
    for i, name in enumerate(f.machine_types):
        check_name(name, f"filter.machine_types[{i}]", limits)
    kinds = set()
    for i, k in enumerate(f.kinds):
        try:
            kinds.add(EventKind(k))
        except ValueError:
            raise InvalidArgument(
                "FIELD_INVALID", f"filter.kinds[{i}] {k} is not a known EventKind", field=f"filter.kinds[{i}]"
            ) from None
    return EventFilter(
        f.root_id, tuple((k.type, k.id) for k in f.path_prefix), frozenset(f.machine_types), frozenset(kinds)
    )


def filter_pb(f: EventFilter) -> pb.EventFilter:
    return pb.EventFilter(
        root_id=f.root_id,
        path_prefix=[common_pb2.NodeKey(type=t, id=i) for t, i in f.path_prefix],
        machine_types=sorted(f.machine_types),
        kinds=sorted(int(k) for k in f.kinds),  # type: ignore[misc]
    )


class EventServicer:
    def __init__(self, engine: Engine, hub: EventHub, consumers: ConsumerManager) -> None:
        self.engine = engine
        self.hub = hub
        self.consumers = consumers
        # Open Watch streams and the revision each has delivered up to (for the metrics).
        self.watches: dict[object, int] = {}

    def subscriber_count(self) -> int:
        """Watch and Subscribe streams open now (safe to call from another thread)."""
        return len(self.watches) + self.consumers.subscriber_count()

    def max_subscriber_lag(self) -> int:
        """The largest lag of an open stream: a watch's position, a subscribed consumer's
        acknowledged revision, behind the durable revision (safe from another thread)."""
        durable = self.hub.durable_revision
        watching = max((durable - seen for seen in list(self.watches.values())), default=0)
        return max(watching, self.consumers.max_subscribed_lag(), 0)

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse | bytes]:
        flt = event_filter(request.filter, self.engine)
        if (
            request.start_revision < 0
            or request.max_events_per_message < 0
            or request.progress_interval_ms < 0
        ):
            raise InvalidArgument("FIELD_INVALID", "revisions, sizes and intervals must not be negative")
        batch = min(request.max_events_per_message or DEFAULT_BATCH, 10_000)
        progress_s = (request.progress_interval_ms or DEFAULT_PROGRESS_MS) / 1000
        hub = self.hub
        if request.start_revision:
            hub.check_start(request.start_revision)
            cursor = (request.start_revision, 0)
        else:
            cursor = (hub.durable_revision + 1, 0)
        seen = cursor[0] - 1  # every event up to this revision was delivered or filtered out
        everything = flt == EventFilter()
        wire, unpack = WIRE_EVENTS.wire, keys.seq_key_parts
        watch = object()
        self.watches[watch] = seen
        try:
            # Tell the client at once where it stands, so it can resume precisely even if no
            # event arrives before a disconnect.
            yield pb.WatchResponse(progress_revision=min(seen, hub.durable_revision))
            while True:
                # Build one message a slice at a time, through the stream lane; send it (the
                # yield returns once the transport took it), then build the next.
                parts: list[bytes] = []
                size = count = 0
                while count < batch and size < MAX_STREAM_MESSAGE_BYTES:
                    want = min(STORED_SLICE_EVENTS if everything else SLICE_EVENTS, batch - count)
                    # Every event is sent: as stored, not decoded and encoded again. With a
                    # filter each event is decoded to match it. Read and built in one turn.
                    done = 0
                    async with hub.lane.turn():
                        if everything:
                            rows, top = await hub.read_stored_upto(cursor, want, in_turn=True)
                            for key, raw in rows:
                                done += 1
                                payload = wire(key, raw)
                                n = len(payload)
                                # The field's tag and length, then the event's bytes as they are:
                                # no concatenation per event (b"".join below copies once).
                                head = _EVENT_HEADS[n] if n < _SHORT else _field_head(_EVENTS_FIELD, n)
                                parts += (head, payload)
                                size += len(head) + n
                                if size >= MAX_STREAM_MESSAGE_BYTES:
                                    break
                            count += done
                            if done:
                                revision, index = unpack(rows[done - 1][0])
                                cursor = (revision, index + 1)
                            read = len(rows)
                        else:
                            events, top = await hub.read_upto(cursor, want, in_turn=True)
                            for event in events:
                                done += 1
                                if flt.matches(event):
                                    part = _message_field(_EVENTS_FIELD, event_wire(event))
                                    parts.append(part)
                                    size += len(part)
                                    count += 1
                                    if size >= MAX_STREAM_MESSAGE_BYTES:
                                        break
                            if done:
                                cursor = (events[done - 1].revision, events[done - 1].index + 1)
                            read = len(events)
                    if done == read < want:
                        # A short read, all of it taken: every event up to `top` was seen.
                        seen = max(seen, top)
                        break
                    # Stopped at or within a revision: only the ones before it are complete.
                    seen = max(seen, cursor[0] - 1)
                self.watches[watch] = seen
                if parts:
                    progress = min(seen, hub.durable_revision)
                    if progress > 0:
                        parts.append(bytes((_PROGRESS_FIELD,)) + varint(progress))
                    message = b"".join(parts)
                    del parts
                    yield message
                    continue
                # Nothing matched up to the durable top: wait for more (or send progress).
                if not await hub.wait(seen, progress_s):
                    yield pb.WatchResponse(progress_revision=min(seen, hub.durable_revision))
        finally:
            self.watches.pop(watch, None)

    def _consumer_pb(self, state: ConsumerState) -> pb.Consumer:
        """A consumer as durable state has it (its position, and the deliveries in memory)."""
        r, consumers = state.record, self.consumers
        return pb.Consumer(
            name=r.name,
            filter=filter_pb(r.filter),
            ack_wait_ms=r.ack_wait_ms,
            max_unacked=r.max_unacked,
            acked_revision=consumers.acked_revision(state),
            unacked_count=consumers.unacked(state),
            lag_revisions=consumers.lag(r.name),
            subscribers=len(state.subscribers),
            create_revision=r.create_revision,
        )

    async def CreateConsumer(
        self, request: pb.CreateConsumerRequest, context: Context
    ) -> pb.CreateConsumerResponse:
        check_name(request.name, "name", self.engine.limits)
        flt = event_filter(request.filter, self.engine)
        if request.ack_wait_ms < 0 or request.max_unacked < 0:
            raise InvalidArgument("FIELD_INVALID", "ack_wait_ms and max_unacked must not be negative")
        if request.start == pb.CONSUMER_START_EARLIEST:
            start = (self.hub.oldest_revision, 0)
        elif request.start == pb.CONSUMER_START_REVISION:
            if request.start_revision < 1:
                raise InvalidArgument(
                    "FIELD_REQUIRED",
                    "start_revision must be at least 1 with CONSUMER_START_REVISION",
                    field="start_revision",
                )
            if request.start_revision > self.hub.durable_revision + 1:
                raise OutOfRange(
                    "REVISION_NOT_YET_COMMITTED",
                    f"start_revision {request.start_revision} is beyond the next revision "
                    f"{self.hub.durable_revision + 1}",
                    field="start_revision",
                    current_revision=self.hub.durable_revision,
                )
            start = (request.start_revision, 0)
        elif request.start in (pb.CONSUMER_START_UNSPECIFIED, pb.CONSUMER_START_LATEST):
            start = (self.hub.durable_revision + 1, 0)
        else:
            raise InvalidArgument(
                "FIELD_INVALID", f"start {request.start} is not a known ConsumerStart", field="start"
            )
        state = await self.consumers.create(
            request.name,
            flt,
            start,
            request.ack_wait_ms or DEFAULT_ACK_WAIT_MS,
            min(request.max_unacked or DEFAULT_MAX_UNACKED, 100_000),
        )
        return pb.CreateConsumerResponse(consumer=self._consumer_pb(state))

    async def GetConsumer(self, request: pb.GetConsumerRequest, context: Context) -> pb.GetConsumerResponse:
        check_name(request.name, "name", self.engine.limits)
        self.consumers.get(request.name)
        # A position moved past filtered-out commits is shown once it is durable.
        await self.consumers.checkpoint([request.name])
        return pb.GetConsumerResponse(consumer=self._consumer_pb(self.consumers.get(request.name)))

    async def ListConsumers(
        self, request: pb.ListConsumersRequest, context: Context
    ) -> pb.ListConsumersResponse:
        limit = check_page_size(request.page_size, self.engine.limits)
        token = convert.decode_token(request.page_token)
        if self.engine.shards.count > 1:
            return await self._list_cluster_consumers(token, limit)
        names = [n for n in self.consumers.names() if token is None or n.encode() > token]
        page = names[:limit]
        next_token = convert.encode_token(page[-1].encode()) if len(names) > limit else ""
        await self.consumers.checkpoint(page)
        shown = [self._consumer_pb(s) for n in page if (s := self.consumers.find(n)) is not None]
        return pb.ListConsumersResponse(consumers=shown, next_page_token=next_token)

    async def _list_cluster_consumers(self, token: bytes | None, limit: int) -> pb.ListConsumersResponse:
        """Cluster mode: every server's consumers, from the store; those this server owns with
        their deliveries in memory, the others as stored (position; unacked and subscribers are
        known to their owner: GetConsumer asks it)."""
        view = self.engine.reads.view()
        start = token + b"\x01" if token is not None else b""
        found: list[tuple[bytes, bytes]] = []
        while len(found) <= limit:
            rows = await view.scan(Keyspace.CONSUMERS, start, None, limit=4 * limit + 64)
            found += [(k, v) for k, v in rows if b"\x00" not in k]
            if len(rows) < 4 * limit + 64:
                break
            start = rows[-1][0] + b"\x00"
        page = found[:limit]
        shown = []
        for key, raw in page:
            state = self.consumers.find(key.decode())
            shown.append(self._consumer_pb(state) if state is not None else self._stored_consumer_pb(raw))
        more = len(found) > limit
        return pb.ListConsumersResponse(
            consumers=shown, next_page_token=convert.encode_token(page[-1][0]) if more else ""
        )

    def _stored_consumer_pb(self, raw: bytes) -> pb.Consumer:
        name, flt, ack_wait_ms, max_unacked, floor, _, create_revision = codec.decode_consumer(raw)
        acked = covered_revision(floor)
        return pb.Consumer(
            name=name,
            filter=filter_pb(flt),
            ack_wait_ms=ack_wait_ms,
            max_unacked=max_unacked,
            acked_revision=acked,
            lag_revisions=max(0, self.hub.durable_revision - acked),
            create_revision=create_revision,
        )

    async def DeleteConsumer(
        self, request: pb.DeleteConsumerRequest, context: Context
    ) -> pb.DeleteConsumerResponse:
        check_name(request.name, "name", self.engine.limits)
        await self.consumers.delete(request.name)
        return pb.DeleteConsumerResponse()

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse | bytes]:
        check_name(request.consumer, "consumer", self.engine.limits)
        state, sub = self.consumers.subscribe(request.consumer)
        lane = self.hub.lane
        try:
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    # grpc only notices a vanished client when it writes: an empty message
                    # every idle second returns a dead subscriber's deliveries promptly.
                    yield pb.SubscribeResponse()
                    continue
                # Encode what is queued into one message, a slice at a time through the stream
                # lane; the next message is built once the transport took this one.
                parts: list[bytes] = []
                size = 0
                ended = item is None
                while item is not None:
                    async with lane.turn():
                        for _ in range(SLICE_EVENTS):
                            event, count = item
                            # Delivery: the event as stored (field 1), its delivery count (field 2).
                            delivery = _message_field(_EVENTS_FIELD, event_wire(event))
                            delivery += bytes((_DELIVERY_COUNT_FIELD,)) + varint(count)
                            part = _message_field(_EVENTS_FIELD, delivery)
                            parts.append(part)
                            size += len(part)
                            full = len(parts) >= DEFAULT_BATCH or size >= MAX_STREAM_MESSAGE_BYTES
                            if full or sub.queue.empty():
                                item = None
                            else:
                                item = sub.queue.get_nowait()
                                ended = item is None
                            if item is None:
                                break
                if state.redeliver:
                    state.wake.set()  # this subscriber drained its queue: it can take redeliveries
                if parts:
                    message = b"".join(parts)
                    del parts
                    yield message
                if ended:
                    if state.error is not None:
                        raise state.error
                    return  # the consumer was deleted
        finally:
            self.consumers.unsubscribe(state, sub)

    async def Ack(self, request: pb.AckRequest, context: Context) -> pb.AckResponse:
        check_name(request.consumer, "consumer", self.engine.limits)
        if request.up_to_revision < 0:
            raise InvalidArgument(
                "FIELD_INVALID", "up_to_revision must not be negative", field="up_to_revision"
            )
        if request.up_to_revision > self.hub.durable_revision:
            raise OutOfRange(
                "REVISION_NOT_YET_COMMITTED",
                f"up_to_revision {request.up_to_revision} is beyond the current revision {self.hub.durable_revision}",
                field="up_to_revision",
                current_revision=self.hub.durable_revision,
            )
        positions = [(e.revision, e.index) for e in request.event_ids]
        acked = await self.consumers.ack(request.consumer, positions, request.up_to_revision)
        return pb.AckResponse(acked_revision=max(acked, 0))

    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        flt = event_filter(request.filter, self.engine)
        if request.exclude_descendants and not flt.root_id:
            raise InvalidArgument(
                "FIELD_REQUIRED", "exclude_descendants needs filter.root_id", field="filter.root_id"
            )
        if request.before_revision < 0 or request.scan_limit < 0:
            raise InvalidArgument("FIELD_INVALID", "before_revision and scan_limit must not be negative")
        limit = check_page_size(request.page_size, self.engine.limits)
        scan_limit = min(request.scan_limit or DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT)
        # A token carries a digest of the listing it belongs to, so it cannot continue another.
        digest = hashlib.sha256(
            request.filter.SerializeToString(deterministic=True) + bytes([request.exclude_descendants])
        ).digest()[:8]
        top = (self.hub.durable_revision + 1, 0)
        token = convert.decode_token(request.page_token)
        if token is not None:
            if len(token) != _EVENTS_TOKEN.size or token[12:] != digest:
                raise InvalidArgument(
                    "INVALID_PAGE_TOKEN", "page_token belongs to another listing", field="page_token"
                )
            revision, index, _ = _EVENTS_TOKEN.unpack(token)
            before = min((revision, index), top)
        elif request.before_revision:
            before = min((request.before_revision + 1, 0), top)
        else:
            before = top
        node = NodeAddress(flt.root_id, flt.path_prefix) if request.exclude_descendants else None
        events, more, oldest = await listings.events_before(
            self.engine.reads.view(), flt, node, before, limit, scan_limit, self.hub.codec
        )
        return pb.ListEventsResponse(
            events=[event_pb(e) for e in events],
            next_page_token=convert.encode_token(_EVENTS_TOKEN.pack(*more, digest)) if more else "",
            scanned_revision=oldest,
        )
