"""Events stored in the API's wire form: each event is encoded once, at commit, as the
`statekeeper.v1.Event` message it is sent as, so Watch and Subscribe send stored bytes as they
are (no decode, no encode per reader or per replay). The field numbers of a published message
never change (`buf breaking`), so stored bytes stay valid across versions. Events a store held
before this format (msgpack, storage/codec.py) are still read, and sent re-encoded."""

from __future__ import annotations

from statekeeper.v1 import event_pb2 as pb
from statekeeper_server.domain.model import Event, EventKind
from statekeeper_server.entrypoints.grpc import convert
from statekeeper_server.storage import codec, keys

_KINDS = {int(k): k for k in EventKind}


def event_pb(e: Event) -> pb.Event:
    m = pb.Event(
        revision=e.revision,
        index=e.index,
        kind=int(e.kind),  # type: ignore[arg-type]
        time_ms=e.time_ms,
        machine_type=e.node_type,
        from_state=e.from_state,
        to_state=e.to_state,
        transition=e.transition,
        transition_count=e.transition_count,
        task_id=e.task_id,
        detail=e.detail,
    )
    if e.address is not None:
        convert.fill_ref(m.node, e.address)  # in place: cheaper than building a NodeRef to copy in
    return m


class WireEvents:
    """The EventCodec the server runs with (app/server.py)."""

    def encode(self, event: Event) -> bytes:
        return event_pb(event).SerializeToString()

    def decode(self, revision: int, index: int, raw: bytes) -> Event:
        if raw[:1] == _MSGPACK:
            return codec.decode_event(revision, index, raw)
        m = pb.Event.FromString(raw)
        return Event(
            revision,
            index,
            _KINDS[m.kind],
            m.time_ms,
            convert.address(m.node) if m.HasField("node") else None,
            m.machine_type,
            m.from_state,
            m.to_state,
            m.transition,
            m.transition_count,
            m.task_id,
            m.detail,
            raw,
        )

    def wire(self, key: bytes, raw: bytes) -> bytes:
        """The encoded Event message for a stored event (its key and stored bytes)."""
        if raw[:1] == _MSGPACK:
            return self.encode(codec.decode_event(*keys.seq_key_parts(key), raw))
        return raw


_MSGPACK = bytes((codec.MSGPACK_EVENT,))
WIRE_EVENTS = WireEvents()


def event_wire(e: Event) -> bytes:
    """An event's encoded Event message: its stored bytes when they are in wire form."""
    raw = e.encoded
    if raw and raw[:1] != _MSGPACK:
        return raw
    return event_pb(e).SerializeToString()
