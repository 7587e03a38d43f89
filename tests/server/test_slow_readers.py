"""Slow readers do not starve the server (issue 11, item 3): while many Watch streams that never
read catch up on a history read from storage, other calls are still answered within a fraction of
a second, and calls over --max-concurrent-rpcs are refused at once. Before the stream lane, every
stream encoded a slice of history per loop turn, a turn took hundreds of milliseconds, and calls
waited seconds (the figures at scale: scripts/overload, README "Performance")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import statekeeper as sk
from statekeeper.v1 import common_pb2, event_pb2, node_pb2
from tests.support import ServerProcess

STREAMS = 50
EVENTS = 10_000
FLIP = sk.MachineType("flipper", 1, ["a", "b"], "a", [sk.Transition("flip", ["a", "b"], "b")])


def _history(data: Path) -> None:
    """A store with EVENTS events (root r0..r999, transitions), written by a server that is then
    stopped: the next server reads that history from storage."""
    proc = ServerProcess(data).start()
    with sk.SyncClient.connect(proc.address) as client:
        client.register_machine_type(FLIP)
        batch = sk.Batch()
        for i in range(1000):
            batch.create_root("flipper", f"r{i}")
        client.execute(batch)
        for _ in range((EVENTS - 1000) // 1000):
            batch = sk.Batch()
            for i in range(1000):
                batch.transition(f"r{i}", "flip")
            client.execute(batch)
    assert proc.terminate() == 0


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = Path(tmp_path_factory.mktemp("slow-readers")) / "data"
    _history(data)
    yield data


def _server(history: Path, tmp_path: Path, *args: str) -> ServerProcess:
    # Each test its own copy of the store (a server holds its folder's lock).
    import shutil

    data = tmp_path / "data"
    shutil.copytree(history, data)
    return ServerProcess(data, *args).start()


async def _stalled_watches(address: str) -> AsyncIterator[list[Any]]:
    """STREAMS Watch streams from revision 1, each on its own connection, never read."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(STREAMS)
    ]
    request = event_pb2.WatchRequest(start_revision=1).SerializeToString()
    calls = [ch.unary_stream("/statekeeper.v1.EventService/Watch")(request, timeout=120) for ch in channels]
    await asyncio.gather(*(ch.channel_ready() for ch in channels))
    try:
        yield calls
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            await ch.close()


async def _timed(call: Any, request: bytes) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        await call(request, timeout=60)
        code = "OK"
    except grpc.aio.AioRpcError as e:
        code = e.code().name
    return time.perf_counter() - started, code


def _get(i: int) -> bytes:
    return node_pb2.GetNodeRequest(node=common_pb2.NodeRef(root_id=f"r{i}")).SerializeToString()


def test_calls_stay_fast_while_stalled_streams_catch_up(history: Path, tmp_path: Path) -> None:
    server = _server(history, tmp_path)

    async def scenario() -> tuple[list[float], list[float], int]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            get = ch.unary_unary("/statekeeper.v1.NodeService/GetNode")
            flip = ch.unary_unary("/statekeeper.v1.NodeService/ApplyTransition")
            await _timed(get, _get(0))  # connected before the streams start
            reads, writes = [], []
            gen = _stalled_watches(server.address)
            stalled = await gen.__anext__()
            try:
                # Probe for a while: the streams catch up meanwhile (several seconds of work).
                until = time.perf_counter() + 1.5
                i = 0
                while time.perf_counter() < until or i < 15:
                    i += 1
                    elapsed, code = await _timed(get, _get(i))
                    assert code == "OK"
                    reads.append(elapsed)
                    request = node_pb2.ApplyTransitionRequest(
                        node=common_pb2.NodeRef(root_id=f"r{i}"), transition="flip"
                    ).SerializeToString()
                    elapsed, code = await _timed(flip, request)
                    assert code == "OK"
                    writes.append(elapsed)
                # A stalled stream, read now, delivers the whole history in order.
                count = 0
                expected = (1, 0)
                async for raw in stalled[0]:
                    for e in event_pb2.WatchResponse.FromString(raw).events:
                        assert (e.revision, e.index) >= expected
                        expected = (e.revision, e.index + 1)
                        count += 1
                    if count >= EVENTS:
                        break
            finally:
                await gen.aclose()
            return reads, writes, count

    try:
        reads, writes, count = asyncio.run(scenario())
    finally:
        assert server.terminate() == 0
    assert count == EVENTS
    # Before the lane, a call made as the streams started waited for their whole catch-up (3.6 s
    # here); now every call takes milliseconds. The bound leaves room for a slow machine.
    assert max(reads) < 1.0, reads
    assert max(writes) < 1.0, writes


def test_excess_calls_are_refused_at_once_while_stalled_streams_catch_up(
    history: Path, tmp_path: Path
) -> None:
    limit = 20
    # Every counted call first waits 2 s (failpoint rpc.delay): `limit` such calls fill the server.
    server = _server(history, tmp_path, "--max-concurrent-rpcs", str(limit), "--failpoints", "rpc.delay=2")

    async def scenario() -> tuple[list[float], list[str]]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            get = ch.unary_unary("/statekeeper.v1.NodeService/GetNode")
            await _timed(get, _get(0))
            gen = _stalled_watches(server.address)
            await gen.__anext__()
            try:
                # Streams are admitted (after their own 2 s delay), then hold no call slot.
                await asyncio.sleep(2.5)
                filling = [asyncio.ensure_future(_timed(get, _get(i))) for i in range(limit)]
                await asyncio.sleep(0.5)
                refused, codes = [], []
                for i in range(10):
                    elapsed, code = await _timed(get, _get(i))
                    codes.append(code)
                    refused.append(elapsed)
                filled = await asyncio.gather(*filling)
                assert [code for _, code in filled] == ["OK"] * limit, filled
            finally:
                await gen.aclose()
            return refused, codes

    try:
        refused, codes = asyncio.run(scenario())
    finally:
        assert server.terminate() == 0
    assert codes == ["RESOURCE_EXHAUSTED"] * 10, codes
    # Before the lane, open streams also held call slots (the calls filling the server were
    # refused) and a refusal waited for the loop.
    assert max(refused) < 0.5, refused
