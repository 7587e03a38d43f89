"""LeaseTasks in cluster mode: outbound tasks are handed out by the server that owns their
shard (it holds their leases), so a worker's stream on any server gathers tasks from every
server: its own, and one internal stream per peer, merged. The worker's max_in_flight is split
evenly over the servers. Tasks leased for the stream that never left this server (the worker
went away while they waited here) are released again, so they do not count as an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc

from statekeeper.v1 import task_pb2 as pb
from statekeeper_server.entrypoints.grpc.forwarding import Forwarder

log = logging.getLogger("statekeeper.fanout")

LEASE_METHOD = "/statekeeper.v1.TaskService/LeaseTasks"
RELEASE_METHOD = "/statekeeper.v1.TaskService/ReleaseTask"
_PEER_RETRY_S = 1.0

LocalStream = Callable[[int], AsyncGenerator[pb.LeaseTasksResponse, None]]
Release = Callable[[str, str], None]


async def merged(
    request: pb.LeaseTasksRequest,
    context: Any,
    forwarder: Forwarder,
    peers: Callable[[], list[str]],
    local: LocalStream,
    release_local: Release,
) -> AsyncGenerator[pb.LeaseTasksResponse, None]:
    max_in_flight = request.max_in_flight or 1
    share = max(1, math.ceil(max_in_flight / (len(peers()) + 1)))
    queue: asyncio.Queue[tuple[str, pb.LeaseTasksResponse]] = asyncio.Queue()
    workers: dict[str, asyncio.Task[None]] = {}
    closed = asyncio.Event()

    async def from_local() -> None:
        async with contextlib.aclosing(local(share)) as batches:
            async for batch in batches:
                await queue.put(("", batch))

    async def from_peer(address: str) -> None:
        peer_request = pb.LeaseTasksRequest()
        peer_request.CopyFrom(request)
        peer_request.max_in_flight = share
        while not closed.is_set():
            call = forwarder.peer_stream(address, LEASE_METHOD, peer_request, context)
            try:
                async for raw in call:
                    await queue.put((address, pb.LeaseTasksResponse.FromString(raw)))
            except grpc.aio.AioRpcError as e:
                log.debug("lease stream from %s ended: %s", address, e.code())
            finally:
                call.cancel()
            if address not in peers():
                return
            await asyncio.sleep(_PEER_RETRY_S)

    async def watch_peers() -> None:
        while not closed.is_set():
            for address in peers():
                if address not in workers or workers[address].done():
                    workers[address] = asyncio.ensure_future(from_peer(address))
            await asyncio.sleep(_PEER_RETRY_S * 2)

    own = asyncio.ensure_future(from_local())
    watcher = asyncio.ensure_future(watch_peers())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([getter, own], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                own.result()  # the local stream ended (the server stops): so does this one
                return
            _, batch = getter.result()
            # Closed at this yield, the batch may have been delivered: its leases stay.
            yield batch
    finally:
        closed.set()
        for task in [own, watcher, *workers.values()]:
            task.cancel()
        await asyncio.gather(own, watcher, *workers.values(), return_exceptions=True)
        while not queue.empty():
            source, batch = queue.get_nowait()
            await _give_back(source, batch, context, forwarder, release_local)


async def _give_back(
    source: str, batch: pb.LeaseTasksResponse, context: Any, forwarder: Forwarder, release_local: Release
) -> None:
    """Leased for the stream, never delivered: released, the attempt does not count."""
    for leased in batch.tasks:
        try:
            if source:
                await forwarder.peer_unary(
                    source,
                    RELEASE_METHOD,
                    pb.ReleaseTaskRequest(task_id=leased.task.id, lease_token=leased.lease_token),
                    context,
                )
            else:
                release_local(leased.task.id, leased.lease_token)
        except Exception as e:  # the lease then simply expires
            log.debug("releasing undelivered task %s failed: %s", leased.task.id, e)
