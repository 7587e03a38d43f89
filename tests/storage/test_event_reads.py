"""The event hub's reads from the store: every event in order, in slices, whatever the store
holds beyond the range read (each slice is bounded by revision)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.rocksdb import RocksStore


def test_slices_from_the_store_return_every_event_in_order(tmp_path: Path) -> None:
    store = RocksStore(tmp_path / "data")
    try:
        batch = store.new_batch()
        written = []
        for revision in range(1, 1001):
            if revision == 500:  # no events at all: a slice's revision bound must not end the read
                continue
            for index in range(3):
                key = keys.seq_key(revision, index)
                batch.put(Keyspace.EVENTS, key, b"e%d.%d" % (revision, index))
                written.append(key)
        store.write(batch, sync=True)
        store.publish_durable()
        hub = EventHub(store, 1000, event_codec=WIRE_EVENTS)

        async def read_all(slice_size: int) -> list[bytes]:
            got: list[bytes] = []
            position = (1, 0)
            while True:
                rows, top = await hub.read_stored_upto(position, slice_size)
                assert top == 1000
                got += [key for key, _ in rows]
                if len(rows) < slice_size:
                    return got
                revision, index = keys.seq_key_parts(rows[-1][0])
                position = (revision, index + 1)

        assert asyncio.run(read_all(64)) == written
        assert asyncio.run(read_all(256)) == written
        # From within a revision, in the caller's turn (one read of what it asked for).
        rows, _ = asyncio.run(hub.read_stored_upto((2, 1), 500, in_turn=True))
        assert [key for key, _ in rows] == written[4:504]
    finally:
        store.close()
