"""Fencing at the store: a server that lost a shard can never commit for it again, whatever its
clock or lease says — the commit's own transaction checks the generation it holds. Two stores
in one process over one real PostgreSQL stand for two servers, so the moment of the takeover is
exact (the process-level test in test_cluster.py pauses a real server with SIGSTOP)."""

from __future__ import annotations

import asyncio

import asyncpg

from statekeeper_server.storage.base import GroupWrite, Keyspace, ShardsLost
from statekeeper_server.storage.postgres import PgStore, ShardTable


async def _write(store: PgStore, key: bytes, first: int) -> BaseException | None:
    batch = store.new_batch()
    batch.set_shard(0)
    batch.put(Keyspace.NODES, key, b"v")
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    store.write_group(
        GroupWrite(batch, first, first, frozenset({0}), lambda: None, lambda f: (batch, f)),
        lambda e: done.set_result(e),
    )
    return await done


def test_a_server_that_lost_its_shard_cannot_commit_even_with_a_live_lease(dsn: str) -> None:
    async def main() -> None:
        a = await PgStore.open(dsn, 4)
        b = await PgStore.open(dsn, 4)
        try:
            a.server_id, b.server_id = "a", "b"
            ta = ShardTable(a.pool, "a", "a:1", lease_s=60.0)
            tb = ShardTable(b.pool, "b", "b:1", lease_s=60.0)
            gen_a = await ta.acquire(0)
            assert gen_a is not None
            a.owned[0] = gen_a
            assert await _write(a, b"a1", 1) is None
            # b cannot take a live lease ...
            assert await tb.acquire(0) is None
            # ... but once it has run out (here: forced, as if a had been paused for long), b
            # takes the shard with a new generation, while a still believes it holds it.
            conn = await asyncpg.connect(dsn)
            await conn.execute("UPDATE statekeeper_shards SET lease_until = now() - interval '1 second'")
            await conn.close()
            gen_b = await tb.acquire(0)
            assert gen_b == gen_a + 1
            b.owned[0] = gen_b
            assert await _write(b, b"b1", 2) is None
            refused = await _write(a, b"a2", 3)
            assert isinstance(refused, ShardsLost) and refused.shards == frozenset({0})
            # Renewing tells a it lost the shard; nothing a tried after the takeover is there.
            assert await ta.renew({0: gen_a}) == set()
            view = b.durable()
            assert await view.get(Keyspace.NODES, b"a1") == b"v"
            assert await view.get(Keyspace.NODES, b"b1") == b"v"
            assert await view.get(Keyspace.NODES, b"a2") is None
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())
