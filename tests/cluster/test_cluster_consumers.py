"""Durable consumers in cluster mode: a consumer lives on its shard's owner; its subscribers may
be connected to different servers and share it; it sees every event of every server; its
position survives a kill -9 of its owner (another server takes it over)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import statekeeper as sk
from tests.cluster.conftest import StartCluster
from tests.conftest import ORDER


def test_subscribers_on_different_servers_share_one_consumer_across_a_kill_of_its_owner(
    start_cluster: StartCluster,
) -> None:
    procs = start_cluster(3)
    addresses = [p.address for p in procs]
    with sk.SyncClient.connect(addresses[0]) as c:
        c.register_machine_type(ORDER)
        c.create_consumer("billing", start="latest", machine_types=["order"], ack_wait_ms=2000)
    seen: Counter[tuple[int, int]] = Counter()
    created: set[str] = set()

    async def subscriber(address: str, stop: asyncio.Event) -> None:
        async with await sk.Client.connect(address) as client:

            async def consume() -> None:
                async for d in client.subscribe("billing"):  # reconnects by itself
                    if d.event.kind == "node_created":
                        seen[(d.event.revision, d.event.index)] += 1
                    # The consumer may be moving: the delivery then comes again (at least once).
                    with contextlib.suppress(sk.UnavailableError):
                        await client.ack("billing", d)

            running = asyncio.ensure_future(consume())
            await stop.wait()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    async def writer(address: str, prefix: str, n: int) -> None:
        async with await sk.Client.connect(address) as client:
            for i in range(n):
                root = f"{prefix}-{i}"
                for _ in range(100):
                    try:
                        await client.create_root("order", root, request_id=f"c-{root}")
                        break
                    except sk.UnavailableError:
                        await asyncio.sleep(0.1)
                created.add(root)

    async def main() -> str:
        stop = asyncio.Event()
        # Two subscribers, on the servers that do not own the consumer (they forward to it).
        owner = _owner(addresses, "billing")
        subs = [asyncio.ensure_future(subscriber(a, stop)) for a in addresses if a != owner]
        await asyncio.gather(*(writer(a, f"w{k}", 15) for k, a in enumerate(addresses)))
        owner = _owner(addresses, "billing")
        victim = next(p for p in procs if p.address == owner)
        victim.kill()  # the consumer's owner: another server takes the consumer over
        survivors = [a for a in addresses if a != owner]
        await asyncio.gather(*(writer(a, f"x{k}", 15) for k, a in enumerate(survivors)))
        deadline = time.monotonic() + 60
        while len(seen) < len(created) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*subs, return_exceptions=True)
        return owner

    owner = asyncio.run(main())
    assert len(created) == 75
    # Every created node's event was delivered (at least once: redeliveries after the kill).
    assert len(seen) == len(created), (len(seen), len(created))
    survivor = next(a for a in addresses if a != owner)
    with sk.SyncClient.connect(survivor) as c:
        deadline = time.monotonic() + 20
        while (consumer := c.get_consumer("billing")).lag_revisions > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert consumer.unacked_count == 0 and consumer.lag_revisions == 0, consumer
        assert [x.name for x in c.list_consumers()] == ["billing"]


def _owner(addresses: list[str], name: str) -> str:
    """The address of the server that owns the consumer's shard (its GetServerInfo)."""
    import zlib

    import grpc

    from statekeeper.v1 import admin_pb2, admin_pb2_grpc
    from tests.cluster.conftest import SHARDS

    shard = zlib.crc32(name.encode()) % int(SHARDS)
    with grpc.insecure_channel(addresses[0]) as channel:
        info = admin_pb2_grpc.AdminServiceStub(channel).GetServerInfo(admin_pb2.GetServerInfoRequest())
    for member in info.cluster_members:
        if shard in member.owned_shards:
            return str(member.address)
    raise AssertionError(f"no owner of shard {shard} in {info}")
