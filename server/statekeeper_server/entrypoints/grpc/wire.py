"""API messages in their wire form, encoded here on the write path.

Events are encoded once, at commit, as the `statekeeper.v1.Event` message they are sent as, so
Watch and Subscribe send stored bytes as they are (no decode, no encode per reader or per
replay). The field numbers of a published message never change (`buf breaking`), so stored bytes
stay valid across versions. Events a store held before this format (msgpack, storage/codec.py)
are still read, and sent re-encoded.

The messages every write answers or stores (Event, Node, ApplyTransitionResponse) are encoded
by hand rather than built as protobuf objects: filling a message field by field from Python
cost about 5 µs per Event and 5 µs per Node, most of a transition's budget, against about 1 µs
here, where the parts that repeat (a node's reference, a type's name and version, a state, a
transition's four strings) are encoded once and cached. The output is what protobuf itself writes,
byte for byte (fields in number order, defaults left out; map entries, whose order protobuf
does not fix, sorted by key): tests/storage/test_wire.py holds the two to it over generated
messages.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from statekeeper._varint import varint as varint  # re-exported: the server's one varint
from statekeeper.v1 import event_pb2 as pb
from statekeeper_server.domain.model import Event, EventKind, NodeAddress, NodeRecord, TaskRecord
from statekeeper_server.entrypoints.grpc import convert
from statekeeper_server.storage import codec, keys

_KINDS = {int(k): k for k in EventKind}


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) holding payload."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


@functools.lru_cache(maxsize=16_384)  # about 5 MB: the nodes written most recently
def node_ref(a: NodeAddress) -> bytes:
    """A statekeeper.v1.NodeRef message (root_id = 1, path = 2 of NodeKey{type = 1, id = 2})."""
    out = field(1, a.root_id.encode()) if a.root_id else b""
    for type_name, node_id in a.path:
        key = (field(1, type_name.encode()) if type_name else b"") + (
            field(2, node_id.encode()) if node_id else b""
        )
        out += field(2, key)
    return out


@functools.lru_cache(maxsize=4096)
def _text(number: int, text: str) -> bytes:
    """A string field; empty (nothing) when the text is empty, as proto3 leaves defaults out.
    For the few strings that repeat: names, states, content types."""
    return field(number, text.encode()) if text else b""


@functools.lru_cache(maxsize=4096)
def _event_names(node_type: str, from_state: str, to_state: str, transition: str) -> bytes:
    """Event fields 6 to 9: machine_type, from_state, to_state, transition."""
    return _text(6, node_type) + _text(7, from_state) + _text(8, to_state) + _text(9, transition)


_EVENT_KIND = [b"\x18" + varint(i) if i else b"" for i in range(max(_KINDS) + 1)]


class _Last:
    """The encoding of the last number seen: the events of a commit share their revision and
    time, which are too large for the table of small varints."""

    __slots__ = ("_tag", "encoded", "value")

    def __init__(self, tag: bytes) -> None:
        self.value, self.encoded, self._tag = 0, b"", tag

    def __call__(self, value: int) -> bytes:
        if value != self.value:
            self.value, self.encoded = value, self._tag + varint(value) if value else b""
        return self.encoded


_revision_field = _Last(b"\x08")
_time_field = _Last(b"\x20")


def encode_event(e: Event) -> bytes:
    """The statekeeper.v1.Event message of an event."""
    a = e.address
    ref = node_ref(a) if a is not None else b""
    return b"".join(
        (
            _revision_field(e.revision),
            b"\x10" + varint(e.index) if e.index else b"",
            _EVENT_KIND[e.kind],
            _time_field(e.time_ms),
            b"\x2a" + varint(len(ref)) + ref if a is not None else b"",
            _event_names(e.node_type, e.from_state, e.to_state, e.transition),
            b"\x50" + varint(e.transition_count) if e.transition_count else b"",
            field(11, e.task_id.encode()) if e.task_id else b"",
            field(12, e.detail.encode()) if e.detail else b"",
        )
    )


@functools.lru_cache(maxsize=1024)
def _node_type(type_name: str, type_version: int) -> bytes:
    """Node fields 2 and 3: type, type_version."""
    return _text(2, type_name) + (b"\x18" + varint(type_version) if type_version else b"")


def encode_node(a: NodeAddress, r: NodeRecord) -> bytes:
    """The statekeeper.v1.Node message of a node (its Data always present, as the API sends it)."""
    ref = node_ref(a)
    value = r.data
    data = (b"\x0a" + varint(len(value)) + value if value else b"") + _text(2, r.content_type)
    counts = r.child_counts
    return b"".join(
        (
            b"\x0a" + varint(len(ref)) + ref,
            _node_type(r.type, r.type_version),
            _text(4, r.state),
            b"\x2a" + varint(len(data)) + data,
            b"\x30" + varint(r.transition_count) if r.transition_count else b"",
            b"\x38" + varint(r.create_revision) if r.create_revision else b"",
            b"\x40" + varint(r.update_revision) if r.update_revision else b"",
            b"\x48\x01" if r.terminal else b"",
            b"".join([_count_entry(k, counts[k]) for k in sorted(counts)]) if counts else b"",
        )
    )


def _count_entry(name: str, count: int) -> bytes:
    """One entry of Node.child_counts (field 10): a map entry {key = 1, value = 2}, both always
    written, as protobuf writes map entries."""
    return field(10, field(1, name.encode()) + b"\x10" + varint(count))


def encode_transition_response(
    a: NodeAddress, r: NodeRecord, revision: int, from_state: str, tasks: Sequence[TaskRecord]
) -> bytes:
    """A statekeeper.v1.ApplyTransitionResponse: node = 1, revision = 2, from_state = 3, tasks = 4."""
    node = encode_node(a, r)
    out = b"".join(
        (
            b"\x0a" + varint(len(node)) + node,
            b"\x10" + varint(revision) if revision else b"",
            _text(3, from_state),
        )
    )
    if tasks:  # rare on the hot path: protobuf serializes them
        out += b"".join([field(4, convert.task(t).SerializeToString()) for t in tasks])
    return out


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
        return encode_event(event)

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
    return encode_event(e)
