"""The hand encoders of entrypoints/grpc/wire.py write, byte for byte, what protobuf writes for
the same message (canonical: fields in number order, defaults left out). A map has no one
canonical order (upb's deterministic order is its own), so a node with several child counts is
compared as the message it parses to."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from statekeeper.v1 import node_pb2
from statekeeper_server.domain.model import (
    Event,
    EventKind,
    NodeAddress,
    NodeRecord,
    TaskKind,
    TaskRecord,
)
from statekeeper_server.entrypoints.grpc import convert, wire

text = st.text(max_size=40)
ids = st.text(min_size=1, max_size=30)
int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
counts = st.one_of(st.integers(min_value=0, max_value=20_000), int64)
addresses = st.builds(NodeAddress, ids, st.lists(st.tuples(text, text), max_size=4).map(tuple))
records = st.builds(
    NodeRecord,
    text,
    st.integers(min_value=0, max_value=(1 << 32) - 1),
    text,
    st.binary(max_size=300),
    text,
    counts,
    counts,
    counts,
    st.booleans(),
    st.dictionaries(text, counts, max_size=4),
)
events = st.builds(
    Event,
    counts,
    st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1),
    st.sampled_from(list(EventKind)),
    counts,
    st.one_of(st.none(), addresses),
    text,
    text,
    text,
    text,
    counts,
    text,
    text,
)


@settings(max_examples=400, deadline=None)
@given(events)
def test_an_event_is_encoded_as_protobuf_encodes_it(e: Event) -> None:
    assert wire.encode_event(e) == wire.event_pb(e).SerializeToString()


@settings(max_examples=400, deadline=None)
@given(addresses, records)
def test_a_node_is_encoded_as_protobuf_encodes_it(a: NodeAddress, r: NodeRecord) -> None:
    encoded, expected = wire.encode_node(a, r), convert.node(a, r)
    if len(r.child_counts) > 1:
        assert node_pb2.Node.FromString(encoded) == expected
    else:
        assert encoded == expected.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(addresses, records, counts, text, st.integers(min_value=0, max_value=2))
def test_a_transition_response_is_encoded_as_protobuf_encodes_it(
    a: NodeAddress, r: NodeRecord, revision: int, from_state: str, task_count: int
) -> None:
    tasks = [
        TaskRecord(f"{revision}-{i}", f"t{i}", TaskKind.TIMER, a, 3, 4, "go", revision, deadline_ms=99)
        for i in range(task_count)
    ]
    expected = node_pb2.ApplyTransitionResponse(
        node=convert.node(a, r),
        revision=revision,
        from_state=from_state,
        tasks=[convert.task(t) for t in tasks],
    )
    encoded = wire.encode_transition_response(a, r, revision, from_state, tasks)
    if len(r.child_counts) > 1:
        assert node_pb2.ApplyTransitionResponse.FromString(encoded) == expected
    else:
        assert encoded == expected.SerializeToString()


def test_varints_of_every_size_match_protobuf() -> None:
    for value in [1, 127, 128, 16_383, 16_384, 2**31 - 1, 2**63 - 1, -1, -(2**63)]:
        m = node_pb2.Node(transition_count=value)
        assert b"\x30" + wire.varint(value) == m.SerializeToString()
