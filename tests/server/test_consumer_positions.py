"""Durable consumer positions through the real server (issue 11, items 4 and 8).

A consumer's position (its ack floor, like a JetStream consumer's) covers every revision that
is acknowledged or that its filter leaves out: acking everything delivered leaves nothing
unacked and no lag, commits it does not match move it on, so a caught-up consumer never holds
back event retention and is never cut off by the retention cap. What GetConsumer and the
compactor see of a consumer is durable: a consumer being created, or an ack whose write is not
yet durable, is not visible.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

import statekeeper as sk
from tests.conftest import ORDER
from tests.support import ServerProcess

T = TypeVar("T")


async def take(it: AsyncIterator[T], n: int, timeout: float = 20.0) -> list[T]:
    out: list[T] = []

    async def collect() -> None:
        async for item in it:
            out.append(item)
            if len(out) >= n:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return out


async def eventually(check: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    """Poll an async check until it stops raising AssertionError (generous: a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except (AssertionError, pytest.fail.Exception):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _server(tmp_path: Path, *args: str) -> ServerProcess:
    return ServerProcess(tmp_path / "data", *args).start()


def test_acking_everything_delivered_leaves_nothing_unacked_and_no_lag(tmp_path: Path) -> None:
    """Regression: GetConsumer showed lag 1 and the position at the last-but-one event."""
    proc = _server(tmp_path)
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("all", root_id="a")
                await c.create_root("order", "a")
                for _ in range(3):
                    last = await c.transition("a", "touch")
                got = await take(c.subscribe("all"), 4)
                assert got[-1].event.revision == last.revision
                acked = await c.ack("all", *got)
                assert acked == last.revision
                info = await c.get_consumer("all")
                assert (info.unacked_count, info.lag_revisions) == (0, 0), info
                assert info.acked_revision == last.revision

        asyncio.run(main())
    finally:
        proc.terminate()


def test_commits_the_filter_leaves_out_move_the_position(tmp_path: Path) -> None:
    """Regression: commits a consumer's filter excludes never moved its position, so its lag
    grew for ever, with or without a subscriber connected."""
    proc = _server(tmp_path)
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("only-a", root_id="a")
                await c.create_consumer("idle", root_id="nothing-matches")
                await c.create_root("order", "a")
                (first,) = await take(c.subscribe("only-a"), 1)
                await c.ack("only-a", first)
                # a subscriber stays connected to only-a while other trees change
                it = c.subscribe("only-a")
                pending = asyncio.ensure_future(it.__anext__())
                await c.create_root("order", "b")
                for _ in range(20):
                    top = (await c.transition("b", "touch")).revision

                async def caught_up() -> None:
                    for name in ("only-a", "idle"):
                        info = await c.get_consumer(name)
                        assert info.acked_revision >= top and info.lag_revisions == 0, info
                        assert info.unacked_count == 0, info

                await eventually(caught_up)
                assert not pending.done()  # nothing of b was delivered
                # and the next matching event is still delivered
                await c.transition("a", "touch")
                delivery = await asyncio.wait_for(pending, 20)
                assert delivery.event.ref is not None and delivery.event.ref.root_id == "a"
                await it.aclose()  # type: ignore[attr-defined]

        asyncio.run(main())
    finally:
        proc.terminate()


def test_a_caught_up_consumer_is_never_cut_off_by_the_retention_cap(tmp_path: Path) -> None:
    """Regression: a consumer that had acked everything its filter matched fell "behind" the
    cap while other trees changed: Subscribe failed with CONSUMER_BEHIND_RETENTION and its next
    matching event was never delivered."""
    proc = _server(
        tmp_path,
        "--event-retention-revisions",
        "2",
        "--event-retention-max-revisions",
        "4",
        "--event-compaction-interval-s",
        "0.1",
    )
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("a-only", root_id="a")
                await c.create_root("order", "a")
                got = await take(c.subscribe("a-only"), 1)
                await c.ack("a-only", *got)
                await c.create_root("order", "b")
                for _ in range(30):
                    await c.transition("b", "touch")

                async def compacted() -> None:
                    with pytest.raises(sk.OutOfRangeError):
                        await take(c.watch(start_revision=1, reconnect=False), 1)

                await eventually(compacted)
                await asyncio.sleep(0.5)  # a few more compaction runs
                await c.transition("a", "touch")
                (delivery,) = await take(c.subscribe("a-only", reconnect=False), 1)
                assert delivery.event.kind == "node_transitioned" and delivery.event.ref is not None
                assert delivery.event.ref.root_id == "a"

        asyncio.run(main())
    finally:
        proc.terminate()


def test_a_caught_up_consumer_does_not_hold_back_compaction(tmp_path: Path) -> None:
    """Regression: without a cap, a consumer whose filter matched nothing new held back
    compaction for ever (its position never passed the commits it does not match)."""
    proc = _server(tmp_path, "--event-retention-revisions", "2", "--event-compaction-interval-s", "0.1")
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("a-only", root_id="a", start="earliest")
                await c.create_root("order", "a")
                got = await take(c.subscribe("a-only"), 1)
                await c.ack("a-only", *got)
                await c.create_root("order", "b")
                for _ in range(10):
                    await c.transition("b", "touch")

                async def compacted() -> None:
                    with pytest.raises(sk.OutOfRangeError):
                        await take(c.watch(start_revision=got[0].event.revision + 1, reconnect=False), 1)

                await eventually(compacted)

        asyncio.run(main())
    finally:
        proc.terminate()


def test_acknowledgements_beyond_a_stuck_event_are_bounded(tmp_path: Path) -> None:
    """Acks above the oldest unacknowledged event are kept (and persisted) individually; their
    number is bounded by max_unacked: while the oldest stays unacked, new deliveries stop once
    that many later events are acked. Regression: they grew without a cap."""
    proc = _server(tmp_path)
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("stuck", root_id="a", max_unacked=5, ack_wait_ms=600_000)
                await c.create_root("order", "a")
                for _ in range(40):
                    await c.transition("a", "touch")
                deliveries: asyncio.Queue[sk.Delivery] = asyncio.Queue()

                async def pump() -> None:
                    async for d in c.subscribe("stuck"):
                        deliveries.put_nowait(d)

                pumping = asyncio.ensure_future(pump())
                first = await asyncio.wait_for(deliveries.get(), 20)
                received = 1
                while True:  # ack everything but the first, as it arrives
                    try:
                        d = await asyncio.wait_for(deliveries.get(), 2.0)
                    except TimeoutError:
                        break
                    received += 1
                    await c.ack("stuck", d)
                # 4 in flight besides the first, then 5 acked beyond it: 10 at most
                assert received <= 10, received
                await c.ack("stuck", first)
                while received < 41:
                    d = await asyncio.wait_for(deliveries.get(), 20)
                    received += 1
                    await c.ack("stuck", d)
                pumping.cancel()
                info = await c.get_consumer("stuck")
                assert (info.unacked_count, info.lag_revisions) == (0, 0), info

        asyncio.run(main())
    finally:
        proc.terminate()


def test_positions_survive_a_restart_with_acks_above_the_floor(tmp_path: Path) -> None:
    """Acks above an unacked event are persisted one key each: after kill -9 the acked ones
    are not redelivered, the unacked one is, and acking it moves the position to the top."""
    proc = _server(tmp_path)
    try:

        async def before() -> list[sk.Delivery]:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("c", root_id="a")
                await c.create_root("order", "a")
                for _ in range(4):
                    await c.transition("a", "touch")
                got = await take(c.subscribe("c"), 5)
                await c.ack("c", *got[2:])
                await c.ack("c", got[0])
                info = await c.get_consumer("c")
                assert info.acked_revision == got[0].event.revision and info.unacked_count == 1
                return got

        got = asyncio.run(before())
        proc.restart()

        async def after() -> None:
            async with await sk.Client.connect(proc.address) as c:
                it = c.subscribe("c")
                (again,) = await take(it, 1)
                assert again.event == got[1].event and again.delivery_count == 1
                assert await c.ack("c", again) == got[-1].event.revision
                info = await c.get_consumer("c")
                assert (info.unacked_count, info.lag_revisions) == (0, 0), info

        asyncio.run(after())
    finally:
        proc.terminate()


# -- item 8: visible only once durable -------------------------------------------------------------


SLOW_SYNC = ("--failpoints", "commit.sync_delay=0.6")


def test_a_consumer_is_visible_only_once_its_creation_is_durable(tmp_path: Path) -> None:
    """Regression: CreateConsumer put the consumer in memory before its write was durable, so
    GetConsumer (and the compactor) saw a consumer that a crash would roll back."""
    proc = _server(tmp_path, *SLOW_SYNC)
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                creating = asyncio.ensure_future(c.create_consumer("slow"))
                await asyncio.sleep(0.2)  # the create is waiting for its fsync
                assert not creating.done()
                with pytest.raises(sk.NotFoundError):
                    await c.get_consumer("slow")
                assert "slow" not in [x.name for x in await c.list_consumers()]
                await creating
                assert (await c.get_consumer("slow")).name == "slow"

        asyncio.run(main())
    finally:
        proc.terminate()


def test_an_ack_moves_the_visible_position_only_once_durable(tmp_path: Path) -> None:
    """Regression: Ack moved the floor in memory before its write was durable: GetConsumer
    showed it, and the compactor could delete events that a crash would make needed again."""
    proc = _server(
        tmp_path, "--event-retention-revisions", "1", "--event-compaction-interval-s", "0.05", *SLOW_SYNC
    )
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address) as c:
                await c.register_machine_type(ORDER)
                await c.create_consumer("c", root_id="a", start="earliest")
                await c.create_root("order", "a")
                for _ in range(2):
                    await c.transition("a", "touch")
                got = await take(c.subscribe("c"), 3)
                before = await c.get_consumer("c")
                assert before.acked_revision < got[0].event.revision
                acking = asyncio.ensure_future(c.ack("c", *got))
                await asyncio.sleep(0.25)  # the ack is waiting for its fsync; compaction runs
                assert not acking.done()
                during = await c.get_consumer("c")
                assert during.acked_revision == before.acked_revision, during
                # what the durable position still needs was not compacted
                events = await take(c.watch(start_revision=got[0].event.revision, reconnect=False), 1)
                assert events[0].revision == got[0].event.revision
                assert await acking == got[-1].event.revision
                after = await c.get_consumer("c")
                assert after.acked_revision == got[-1].event.revision and after.unacked_count == 0

        asyncio.run(main())
    finally:
        proc.terminate()
