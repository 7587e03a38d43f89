"""The durable event stream through the real server: watch, consumers, acks, retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

import statekeeper as sk
from statekeeper.v1 import event_pb2, event_pb2_grpc
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess

T = TypeVar("T")


async def take(it: AsyncIterator[T], n: int, timeout: float = 10.0, close: bool = True) -> list[T]:
    out: list[T] = []

    async def collect() -> None:
        async for item in it:
            out.append(item)
            if len(out) >= n:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    finally:
        if close:
            await it.aclose()  # type: ignore[attr-defined]
    return out


async def nothing_within(it: AsyncIterator[T], seconds: float) -> bool:
    try:
        await asyncio.wait_for(it.__anext__(), seconds)
    except TimeoutError:
        return True
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return False


def arun(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# -- Plane's state-store tests, over gRPC ----------------------------------------------------


def test_single_event_read_back(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            node = await c.create_root("order", uid)
            assert (await c.get_node(uid)).state == "new"
            events = await take(c.watch(start_revision=node.create_revision, root_id=uid), 1)
            assert events[0].kind == "node_created" and events[0].to_state == "new"
            assert events[0].ref == sk.Ref(uid) and events[0].revision == node.create_revision

    arun(main())


def test_latest_of_two_states_wins(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            node = await c.create_root("order", uid)
            await c.transition(uid, "pay")
            assert (await c.get_node(uid)).state == "paid"
            await c.transition(uid, "ship")
            assert (await c.get_node(uid)).state == "shipped"
            events = await take(
                c.watch(start_revision=node.create_revision, root_id=uid, kinds=["node_transitioned"]), 2
            )
            assert [(e.from_state, e.to_state, e.transition_count) for e in events] == [
                ("new", "paid", 1),
                ("paid", "shipped", 2),
            ]

    arun(main())


def test_subscriber_registered_first_gets_each_event_live_in_order(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            await c.create_consumer(f"live-{uid}", root_id=uid, kinds=["node_transitioned", "node_created"])
            deliveries = c.subscribe(f"live-{uid}")
            first = asyncio.ensure_future(take(deliveries, 1, close=False))
            await asyncio.sleep(0.2)
            await c.create_root("order", uid)
            (d1,) = await first
            assert d1.event.kind == "node_created" and d1.delivery_count == 1
            await c.ack(f"live-{uid}", d1)
            await c.transition(uid, "pay")
            (d2,) = await take(deliveries, 1)
            assert (d2.event.kind, d2.event.to_state) == ("node_transitioned", "paid")
            assert (d2.event.revision, d2.event.index) > (d1.event.revision, d1.event.index)

    arun(main())


def test_events_are_durable_replayed_until_acked(server: ServerProcess, uid: str) -> None:
    name = f"plane-{uid}"

    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            await c.create_consumer(name, root_id=uid)
            await c.create_root("order", uid)  # event 1
            await c.transition(uid, "pay")  # event 2 (+ task created)
            first = await take(c.subscribe(name), 2)
            assert [d.event.kind for d in first] == ["node_created", "node_transitioned"]
            assert all(d.delivery_count == 1 for d in first)
        async with await sk.Client.connect(server.address) as c:
            # a new subscriber (the first went away without acking) gets both again
            again = await take(c.subscribe(name), 2)
            assert [d.event for d in again] == [d.event for d in first]
            assert all(d.delivery_count == 2 for d in again)
            await c.ack(name, again[0])
            await c.ack(name, again[0])  # acking twice is harmless
            await c.ack(name, sk.Event(10**12, 0, "node_created", 0, None))  # unknown id: harmless
        async with await sk.Client.connect(server.address) as c:
            it = c.subscribe(name)
            (only,) = await take(it, 1)
            assert only.event == first[1].event and only.delivery_count == 3
            info = await c.get_consumer(name)
            assert info.acked_revision == first[0].event.revision and info.unacked_count >= 1

    arun(main())


# -- watch semantics ---------------------------------------------------------------------------


def test_no_gap_and_no_duplicate_while_history_is_replayed(fresh_server: ServerProcess) -> None:
    async def main() -> None:
        async with await sk.Client.connect(fresh_server.address) as c:
            await c.register_machine_type(ORDER)
            batch = sk.Batch()
            for i in range(50):
                batch.create_root("order", f"h{i}")
            await c.execute(batch)
            for i in range(300):
                await c.transition(f"h{i % 50}", "touch")
            top = (await c.get_node("h0")).update_revision

            async def writer() -> int:
                last = 0
                for i in range(300):
                    last = (await c.transition(f"h{i % 50}", "touch")).revision
                return last

            write = asyncio.ensure_future(writer())
            seen: list[tuple[int, int]] = []
            async for e in c.watch(start_revision=1, progress=True):
                if e.kind != "progress":
                    seen.append((e.revision, e.index))
                if write.done() and e.revision >= write.result():
                    break
            assert seen == sorted(set(seen)), "events out of order or duplicated"
            revisions = sorted({r for r, _ in seen})
            assert revisions == list(range(1, revisions[-1] + 1)), "a revision is missing"
            assert revisions[-1] > top + 250

    arun(main())


def test_progress_notice_when_idle_and_resume_from_it(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with sk.Client(grpc.aio.insecure_channel(server.address)) as c:
            stub = event_pb2_grpc.EventServiceStub(c.channel)
            call = stub.Watch(
                event_pb2.WatchRequest(filter=event_pb2.EventFilter(root_id=uid), progress_interval_ms=100)
            )
            first = await asyncio.wait_for(call.read(), 5)
            assert not first.events and first.progress_revision > 0
            second = await asyncio.wait_for(call.read(), 5)
            assert not second.events and second.progress_revision >= first.progress_revision
            node = await c.create_root("order", uid)
            msg = await asyncio.wait_for(call.read(), 5)
            while not msg.events:
                msg = await asyncio.wait_for(call.read(), 5)
            assert msg.events[0].revision == node.create_revision
            call.cancel()

    arun(main())


def test_filters(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            root = await c.create_root("order", uid)
            a = await c.add_child(root, "item", "a")
            await c.add_child(root, "item", "b")
            await c.transition(a, "pack")
            await c.transition(sk.Ref(uid).child("item", "b"), "pack")
            await c.transition(root, "pay")
            start = root.create_revision
            below_a = await take(c.watch(start_revision=start, root_id=uid, path_prefix=[("item", "a")]), 2)
            assert [(e.kind, e.ref) for e in below_a] == [
                ("node_created", a.ref),
                ("node_transitioned", a.ref),
            ]
            items = await take(c.watch(start_revision=start, root_id=uid, machine_types=["item"]), 4)
            assert {e.machine_type for e in items} == {"item"}
            tasks = await take(c.watch(start_revision=start, root_id=uid, kinds=["task_created"]), 1)
            assert tasks[0].detail == "charge"
            with pytest.raises(sk.InvalidArgumentError):
                await take(c.watch(path_prefix=[("item", "a")]), 1)
            with pytest.raises(ValueError):
                await take(c.watch(kinds=["no-such-kind"]), 1)

    arun(main())


def test_compacted_start_revision_is_out_of_range(tmp_path: Path) -> None:
    proc = ServerProcess(
        tmp_path / "d", "--event-retention-revisions", "5", "--event-compaction-interval-s", "0.1"
    ).start()
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_root("order", "x")
                for _ in range(20):
                    await c.transition("x", "touch")
                await asyncio.sleep(0.5)
                with pytest.raises(sk.OutOfRangeError) as e:
                    await take(c.watch(start_revision=1, reconnect=False), 1)
                assert e.value.reason == "REVISION_COMPACTED"
                oldest = int(e.value.metadata["oldest_revision"])
                assert 2 < oldest <= 22 - 4
                events = await take(c.watch(start_revision=oldest), 1)
                assert events[0].revision == oldest

        arun(main())
    finally:
        proc.terminate()


def test_consumers_hold_back_compaction_until_acked(tmp_path: Path) -> None:
    proc = ServerProcess(
        tmp_path / "d", "--event-retention-revisions", "2", "--event-compaction-interval-s", "0.1"
    ).start()
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("keep", start="earliest")
                await c.create_root("order", "x")
                for _ in range(10):
                    await c.transition("x", "touch")
                await asyncio.sleep(0.4)
                got = await take(c.subscribe("keep"), 12)
                assert got[0].event.revision == 1  # nothing the consumer needs was compacted
                await c.ack("keep", up_to_revision=got[-1].event.revision)
                await asyncio.sleep(0.4)
                with pytest.raises(sk.OutOfRangeError):
                    await take(c.watch(start_revision=1, reconnect=False), 1)

        arun(main())
    finally:
        proc.terminate()


# -- consumers -------------------------------------------------------------------------------


def test_unacked_events_survive_a_restart(fresh_server: ServerProcess) -> None:
    async def before_kill() -> list[sk.Delivery]:
        async with await sk.Client.connect(fresh_server.address) as c:
            await c.register_machine_type(ORDER)
            await c.create_consumer("orders", machine_types=["order"])
            await c.create_root("order", "r")
            await c.transition("r", "pay")
            got = await take(c.subscribe("orders"), 3)
            await c.ack("orders", got[0])
            return got

    got = asyncio.run(before_kill())
    fresh_server.kill()
    fresh_server.start()

    async def after_restart() -> None:
        async with await sk.Client.connect(fresh_server.address) as c:
            again = await take(c.subscribe("orders"), 2)
            assert [d.event for d in again] == [d.event for d in got[1:]]
            assert (await c.get_consumer("orders")).acked_revision == got[0].event.revision

    asyncio.run(after_restart())


def test_ack_wait_redelivers_with_a_higher_count(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            await c.create_consumer(f"aw-{uid}", root_id=uid, ack_wait_ms=300, kinds=["node_created"])
            it = c.subscribe(f"aw-{uid}")
            await c.create_root("order", uid)
            (first,) = await take(it, 1, close=False)
            (second,) = await take(it, 1, timeout=5, close=False)
            assert second.event == first.event and (first.delivery_count, second.delivery_count) == (1, 2)
            await c.ack(f"aw-{uid}", second)
            assert await nothing_within(it, 0.8)

    arun(main())


def test_two_subscribers_share_a_consumer(server: ServerProcess, uid: str) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            name = f"share-{uid}"
            await c.create_consumer(name, root_id=uid, kinds=["node_created"])
            s1, s2 = c.subscribe(name), c.subscribe(name)
            got1: list[sk.Delivery] = []
            got2: list[sk.Delivery] = []

            async def pump(it: AsyncIterator[sk.Delivery], out: list[sk.Delivery]) -> None:
                async for d in it:
                    await c.ack(name, d)
                    out.append(d)  # counted once acknowledged, so stopping after 21 loses no ack

            tasks = [asyncio.ensure_future(pump(s1, got1)), asyncio.ensure_future(pump(s2, got2))]
            await asyncio.sleep(0.3)
            await c.create_root("order", uid)
            for i in range(20):
                await c.add_child(uid, "item", f"i{i}")
            for _ in range(100):
                if len(got1) + len(got2) >= 21:
                    break
                await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            ids1 = {(d.event.revision, d.event.index) for d in got1}
            ids2 = {(d.event.revision, d.event.index) for d in got2}
            assert len(ids1) + len(ids2) == 21 and not ids1 & ids2
            assert got1 and got2, "both subscribers got a share"
            assert (await c.get_consumer(name)).unacked_count == 0

    arun(main())


def test_consumer_management_errors(client: sk.SyncClient, uid: str) -> None:
    name = f"m-{uid}"
    created = client.create_consumer(name, machine_types=["order"], kinds=["node_created"])
    assert created.name == name and created.kinds == ("node_created",)
    with pytest.raises(sk.AlreadyExistsError):
        client.create_consumer(name)
    assert name in [c.name for c in client.list_consumers()]
    client.delete_consumer(name)
    with pytest.raises(sk.NotFoundError):
        client.get_consumer(name)
    with pytest.raises(sk.NotFoundError):
        client.ack(name, up_to_revision=1)
    with pytest.raises(sk.InvalidArgumentError):
        client.create_consumer("1bad")


def test_a_stalled_watcher_does_not_hold_up_commits_or_others(fresh_server: ServerProcess) -> None:
    async def main() -> None:
        async with await sk.Client.connect(fresh_server.address) as c:
            await c.register_machine_type(ORDER)
            await c.register_machine_type(ITEM)
            stub = event_pb2_grpc.EventServiceStub(c.channel)
            stalled = stub.Watch(event_pb2.WatchRequest(start_revision=1))  # never read
            live = c.watch(start_revision=1)
            count = 0
            for b in range(20):
                batch = sk.Batch()
                for i in range(500):
                    batch.create_root("order", f"s{b}-{i}")
                revision = (await c.execute(batch)).revision
            async for e in live:
                count += 1
                if e.revision == revision and e.index == 499:
                    break
            assert count == 2 + 20 * 500
            # the stalled one still gets everything, in order, once it reads
            got = 0
            last = (0, 0)
            while got < 2 + 20 * 500:
                msg = await asyncio.wait_for(stalled.read(), 10)
                for e in msg.events:
                    assert (e.revision, e.index) > last
                    last = (e.revision, e.index)
                    got += 1
            stalled.cancel()

    arun(main())


def test_active_listing(client: sk.SyncClient, uid: str) -> None:
    mt = sk.MachineType(
        f"job{uid.replace('-', '')}",
        1,
        ["queued", "running", "done"],
        "queued",
        [sk.Transition("start", ["queued"], "running"), sk.Transition("finish", ["running"], "done")],
        terminal_states=["done"],
    )
    client.register_machine_type(mt)
    for i in range(5):
        client.create_root(mt.name, f"{uid}-{i}")
    client.transition(f"{uid}-0", "start")
    client.transition(f"{uid}-1", "start")
    client.transition(f"{uid}-1", "finish")
    client.delete_node(f"{uid}-4")
    ids = lambda nodes: sorted(n.ref.root_id for n in nodes)  # noqa: E731
    assert ids(client.list_nodes(mt.name, status="active")) == [f"{uid}-{i}" for i in (0, 2, 3)]
    assert ids(client.list_nodes(mt.name, status="terminal")) == [f"{uid}-1"]
    assert ids(client.list_nodes(mt.name, state="queued")) == [f"{uid}-2", f"{uid}-3"]
    assert ids(client.list_nodes(mt.name, state="running", status="active")) == [f"{uid}-0"]
    assert ids(client.list_nodes(mt.name, page_size=1)) == [f"{uid}-{i}" for i in range(4)]
    assert client.list_nodes(mt.name, state="done", status="active") == []


def test_a_consumer_from_the_start_delivers_after_a_restart(fresh_server: ServerProcess) -> None:
    """A consumer that has acknowledged nothing since revision 0 (or up to the oldest retained
    revision) resumes at the next revision after a restart, not at one already gone."""

    async def before_kill() -> None:
        async with await sk.Client.connect(fresh_server.address) as c:
            await c.create_consumer("from-start", start="earliest")
            await c.register_machine_type(ORDER)

    asyncio.run(before_kill())
    fresh_server.kill()
    fresh_server.start()

    async def after_restart() -> None:
        async with await sk.Client.connect(fresh_server.address) as c:
            await c.create_root("order", "after")  # a live event too, so the history is read from disk
            got = await take(c.subscribe("from-start"), 2)
            assert [(d.event.revision, d.event.kind) for d in got] == [
                (1, "machine_type_registered"),
                (2, "node_created"),
            ]

    asyncio.run(after_restart())


def test_retention_cap_bounds_only_what_consumers_hold_back(tmp_path: Path) -> None:
    proc = ServerProcess(
        tmp_path / "d",
        "--event-retention-revisions",
        "10",
        "--event-retention-max-revisions",
        "4",
        "--event-compaction-interval-s",
        "0.1",
    ).start()
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("lagging", start="earliest")
                node = await c.create_root("order", "x")
                revision = node.create_revision
                for _ in range(20):
                    revision = (await c.transition("x", "touch")).revision
                await asyncio.sleep(0.5)
                # the count rule still keeps the newest 10 revisions despite the smaller cap
                events = await take(c.watch(start_revision=revision - 9), 1)
                assert events[0].revision == revision - 9
                # the consumer behind the cap is told so, explicitly
                with pytest.raises(sk.OutOfRangeError) as e:
                    await take(c.subscribe("lagging", reconnect=False), 1)
                assert e.value.reason == "CONSUMER_BEHIND_RETENTION"

        arun(main())
    finally:
        proc.terminate()


def test_positions_beyond_the_current_revision_are_refused(client: sk.SyncClient, uid: str) -> None:
    name = f"far-{uid}"
    client.create_consumer(name, root_id=uid)
    with pytest.raises(sk.OutOfRangeError) as e:
        client.ack(name, up_to_revision=10**12)
    assert e.value.reason == "REVISION_NOT_YET_COMMITTED"
    with pytest.raises(sk.OutOfRangeError):
        client.create_consumer(f"{name}-2", start="revision", start_revision=10**12)
    client.create_root("order", uid)
    # the refused ack skipped nothing: the consumer still gets the new event
    (delivery,) = asyncio.run(_first_delivery(client, name))
    assert delivery.event.kind == "node_created"


async def _first_delivery(client: sk.SyncClient, name: str) -> list[sk.Delivery]:
    address = client.channel._channel.target().decode()  # type: ignore[attr-defined]
    async with await sk.Client.connect(address) as c:
        return await take(c.subscribe(name), 1)


def test_a_future_start_never_reports_progress_beyond_the_current_revision(server: ServerProcess) -> None:
    async def main() -> None:
        async with await sk.Client.connect(server.address) as c:
            stub = event_pb2_grpc.EventServiceStub(c.channel)
            call = stub.Watch(event_pb2.WatchRequest(start_revision=10**15, progress_interval_ms=100))
            first = await asyncio.wait_for(call.read(), 5)
            second = await asyncio.wait_for(call.read(), 5)
            assert first.progress_revision < 10**15 and second.progress_revision < 10**15
            call.cancel()

    arun(main())


def test_an_sdk_watch_resumes_by_itself_across_a_kill_9_of_its_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a server killed in the middle of a stream closes the socket, and the SDK took
    that for a plaintext client refused by a TLS server (TLS_REQUIRED, not retried): the watch
    ended instead of resuming once the server was back. While it waits, it says so in the log."""
    import asyncio

    proc = ServerProcess(tmp_path / "data").start()
    port = proc.address.rpartition(":")[2]
    with sk.SyncClient.connect(proc.address) as c:
        c.register_machine_type(ORDER)
        c.create_root("order", "before")

    async def main() -> list[str]:
        seen: list[str] = []
        async with await sk.Client.connect(proc.address) as client:
            events = client.watch(start_revision=1, kinds=["node_created"])
            async for ev in events:
                seen.append(ev.ref.root_id if ev.ref else "")
                if ev.ref and ev.ref.root_id == "before":
                    proc.kill()
                    # The same port again, so the client finds the server where it was.
                    restarted = ServerProcess(tmp_path / "data", "--listen", f"127.0.0.1:{port}")
                    await asyncio.to_thread(restarted.start)
                    proc.proc = restarted.proc
                    async with await sk.Client.connect(proc.address) as writer:
                        await writer.create_root("order", "after")
                if ev.ref and ev.ref.root_id == "after":
                    break
            await events.aclose()
        return seen

    try:
        with caplog.at_level("WARNING", logger="statekeeper"):
            assert asyncio.run(asyncio.wait_for(main(), 60)) == ["before", "after"]
        assert any("watch: the stream broke" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        proc.kill()


# -- the stored form of events ------------------------------------------------------------------


def test_events_stored_before_the_wire_form_are_still_served(fresh_server: ServerProcess) -> None:
    """Events are stored in the API's wire form (sent as stored); a store written before holds
    msgpack records. Rewriting every stored event into the old format must change nothing a
    client sees: Watch (with and without a filter), a consumer's deliveries, ListEvents."""
    from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS
    from statekeeper_server.storage import codec, keys
    from statekeeper_server.storage.base import Keyspace
    from statekeeper_server.storage.rocksdb import RocksStore

    async def seen(c: sk.Client, top: int) -> tuple[list[object], ...]:
        async with grpc.aio.insecure_channel(fresh_server.address) as channel:
            listed = await event_pb2_grpc.EventServiceStub(channel).ListEvents(event_pb2.ListEventsRequest())
        assert listed.events[0].revision == top
        everything = await take(c.watch(start_revision=1), len(listed.events))
        orders = await take(c.watch(start_revision=1, machine_types=["order"]), 4)
        deliveries = await take(c.subscribe("orders"), 4)
        return everything, orders, [d.event for d in deliveries], list(listed.events)

    async def write() -> tuple[int, tuple[list[object], ...]]:
        async with await sk.Client.connect(fresh_server.address) as c:
            await c.register_machine_type(ORDER)
            await c.register_machine_type(ITEM)
            await c.create_consumer("orders", machine_types=["order"], start="earliest")
            await c.create_root("order", "o1")
            await c.add_child("o1", "item", "i1")
            await c.transition("o1", "pay")
            await c.transition("o1/item:i1", "pack")
            await c.create_root("order", "o2")
            top = (await c.get_node("o2")).create_revision
            return top, await seen(c, top)

    top, before = asyncio.run(write())
    assert len(before[1]) == 4 and all(e.machine_type == "order" for e in before[1])
    fresh_server.terminate()
    store = RocksStore(fresh_server.data_dir)
    try:
        rows = list(store.scan(Keyspace.EVENTS, b"", None))
        assert rows and all(raw[:1] != bytes((codec.MSGPACK_EVENT,)) for _, raw in rows)
        batch = store.new_batch()
        for key, raw in rows:
            event = WIRE_EVENTS.decode(*keys.seq_key_parts(key), raw)
            batch.put(Keyspace.EVENTS, key, codec.encode_event(event))
        # ...and the store marked as written before (format 1): it is upgraded in place.
        batch.put(Keyspace.META, keys.META_FORMAT_VERSION, keys.u64(1))
        store.write(batch, sync=True)
    finally:
        store.close()
    fresh_server.start()
    assert "store format 1 upgraded to 2" in fresh_server.log()

    async def read_again() -> tuple[list[object], ...]:
        async with await sk.Client.connect(fresh_server.address) as c:
            return await seen(c, top)

    assert asyncio.run(read_again()) == before
