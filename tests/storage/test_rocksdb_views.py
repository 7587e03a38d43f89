"""The durable view of the RocksDB store shows what was published and nothing written after it
(storage/base.py: a reader never sees a write that is not yet durable). A group is written to
the store before its fsync, so everything written since the last publish is exactly what a
client must not see yet: scans and seeks as well as point reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.rocksdb import RocksStore


def _put(store: RocksStore, *pairs: tuple[bytes, bytes], delete: tuple[bytes, ...] = ()) -> None:
    batch = store.new_batch()
    for key, value in pairs:
        batch.put(Keyspace.NODES, key, value)
    for key in delete:
        batch.delete(Keyspace.NODES, key)
    store.write(batch, sync=False)


async def _read(
    store: RocksStore,
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], object, object]:
    view = store.durable()
    forward = await view.scan(Keyspace.NODES, b"a", b"z", limit=100)
    backward = await view.scan(Keyspace.NODES, b"a", b"z", limit=100, reverse=True)
    return forward, backward, await view.seek(Keyspace.NODES, b"b"), await view.get(Keyspace.NODES, b"b")


def test_scans_of_the_durable_view_do_not_see_writes_made_after_it(tmp_path: Path) -> None:
    store = RocksStore(tmp_path)
    try:
        _put(store, (b"a1", b"durable"), (b"c1", b"durable"))
        store.publish_durable()
        # Written, not yet published (a group whose fsync is under way): a new key, a changed
        # value, a deleted key.
        _put(store, (b"b1", b"pending"), (b"c1", b"changed"), delete=(b"a1",))

        forward, backward, seek, get = asyncio.run(_read(store))
        assert forward == [(b"a1", b"durable"), (b"c1", b"durable")]  # was [b1 pending, c1 changed]
        assert backward == forward[::-1]
        assert seek == (b"c1", b"durable")  # was (b1, pending)
        assert get is None

        store.publish_durable()
        forward, _, seek, _ = asyncio.run(_read(store))
        assert forward == [(b"b1", b"pending"), (b"c1", b"changed")]
        assert seek == (b"b1", b"pending")
    finally:
        store.close()


def test_a_view_held_across_publishes_keeps_reading_its_own_moment(tmp_path: Path) -> None:
    """A reader that took a view (a replay reads slice after slice from one) keeps it while
    later groups are written and published; other scans of the same view in between do not
    disturb it."""
    store = RocksStore(tmp_path)
    try:
        _put(store, *((b"k%03d" % i, b"old") for i in range(50)))
        store.publish_durable()
        view = store.durable()
        first = view.scan_now(Keyspace.NODES, b"k", b"l", limit=10)
        _put(store, *((b"k%03d" % i, b"new") for i in range(50)), (b"k025x", b"new"))
        store.publish_durable()
        assert view.scan_now(Keyspace.NODES, b"k040", b"l", limit=5)[0] == (b"k040", b"old")
        rest = view.scan_now(Keyspace.NODES, first[-1][0] + b"\x00", b"l", limit=100)
        assert [k for k, _ in first + rest] == [b"k%03d" % i for i in range(50)]
        assert {v for _, v in first + rest} == {b"old"}
        assert store.durable().scan_now(Keyspace.NODES, b"k025", b"k026", limit=5) == [
            (b"k025", b"new"),
            (b"k025x", b"new"),
        ]
    finally:
        store.close()
