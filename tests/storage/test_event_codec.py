"""The stored forms of events: the API's wire form, and msgpack records of older stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

from statekeeper_server.domain.model import Event, EventKind, NodeAddress
from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS, event_pb
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.rocksdb import RocksStore

EVENT = Event(7, 1, EventKind.NODE_TRANSITIONED, 1_700_000_000_000, NodeAddress("o1", (("item", "i1"),)),
              "item", "open", "packed", "pack", 3)  # fmt: skip


def test_both_stored_forms_decode_to_the_same_event_and_send_the_same_bytes() -> None:
    sent = event_pb(EVENT).SerializeToString()
    for raw in (WIRE_EVENTS.encode(EVENT), codec.encode_event(EVENT)):
        decoded = WIRE_EVENTS.decode(EVENT.revision, EVENT.index, raw)
        assert decoded == EVENT and decoded.encoded == raw
        assert WIRE_EVENTS.wire(keys.seq_key(EVENT.revision, EVENT.index), raw) == sent


def test_a_window_event_read_back_from_msgpack_is_sent_whole(tmp_path: Path) -> None:
    """Regression: an event decoded from a msgpack record (a store written before the wire form,
    read by a cluster server's tail) kept no stored bytes, so an unfiltered Watch served from the
    in-memory window sent it as an empty Event."""
    store = RocksStore(tmp_path / "data")
    try:
        hub = EventHub(store, 0, event_codec=WIRE_EVENTS)
        hub.feed([WIRE_EVENTS.decode(EVENT.revision, EVENT.index, codec.encode_event(EVENT))], EVENT.revision)
        rows, top = asyncio.run(hub.read_stored_upto((EVENT.revision, EVENT.index), 10))
        assert top == EVENT.revision and len(rows) == 1
        key, raw = rows[0]
        assert keys.seq_key_parts(key) == (EVENT.revision, EVENT.index)
        assert WIRE_EVENTS.wire(key, raw) == event_pb(EVENT).SerializeToString()
    finally:
        store.close()
