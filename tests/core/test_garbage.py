"""What the write path leaves for the garbage collector, on a real RocksDB store.

The server raises the collector's threshold (app/server.py) on the ground that a write frees
what it allocated as soon as it is answered and that the event window holds objects the
collector does not track. These tests hold it to that: were either untrue, memory would grow
between collections and every collection would walk it (pauses of over 100 ms were measured).
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekeeper_server.core.engine import Commit, Engine
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.model import Event, EventKind, NodeAddress
from statekeeper_server.entrypoints.grpc import wire
from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage.rocksdb import RocksStore


class _Marker:
    """Something a build refers to (as a request would be)."""


@pytest.fixture
def no_collector() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def test_an_answered_write_keeps_nothing_alive_without_a_collection(
    tmp_path: Path, no_collector: None
) -> None:
    async def main() -> list[weakref.ref[_Marker]]:
        store = RocksStore(tmp_path / "store")
        engine = Engine(store, Limits(), event_codec=WIRE_EVENTS)
        await engine.start(sweep=False)
        refs = []
        try:
            for i in range(3):
                marker = _Marker()
                refs.append(weakref.ref(marker))

                def build(c: Commit, marker: _Marker = marker, i: int = i) -> _Marker:
                    c.event(EventKind.NODE_CREATED, NodeAddress(f"n{i}"), node_type="t")
                    return marker

                answer = await engine.commit(build, lambda result, revision: revision)
                assert answer == i + 1
                del marker, build
        finally:
            await engine.close()
            store.close()
        return refs

    refs = asyncio.run(main())
    # Freed by reference counting alone: no cycle through the committer's intent holds them.
    assert [r() for r in refs] == [None, None, None]


def test_the_event_window_adds_no_objects_for_the_collector_to_walk(tmp_path: Path) -> None:
    store = RocksStore(tmp_path / "store")
    try:
        hub = EventHub(store, 0, event_codec=WIRE_EVENTS)
        addresses = [NodeAddress(f"r{r}", (("item", "i1"),)) for r in range(1, 20_001)]
        # The encoder keeps a bounded cache of node references, which is not the window (and
        # holds them whether or not the window does): filled before counting.
        for a in addresses:
            wire.node_ref(a)
        gc.collect()
        before = len(gc.get_objects())
        events = [
            Event(r, 0, EventKind.NODE_TRANSITIONED, 1, addresses[r - 1], "item", "a", "b")
            for r in range(1, 20_001)
        ]
        for e in events:
            e.encoded = WIRE_EVENTS.encode(e)
        hub.feed(events, 20_000)
        del events, e
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert grown < 1_000, f"the window of 20,000 events added {grown} tracked objects"
        # And it still serves them, decoded or as stored.
        got = asyncio.run(hub.read((19_999, 0), 5))
        assert [(e.revision, e.address) for e in got] == [
            (19_999, NodeAddress("r19999", (("item", "i1"),))),
            (20_000, NodeAddress("r20000", (("item", "i1"),))),
        ]
    finally:
        store.close()
