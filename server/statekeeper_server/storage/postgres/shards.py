"""Shard leases and server heartbeats in PostgreSQL (the database's clock decides expiry).

Taking a shard bumps its generation; a server holds a shard only at the generation it took it
with, and every commit checks that generation inside its own transaction (store.py `_fence`).
Lease expiry only decides when another server may take a shard: a server that lost its lease
(paused, partitioned, slow) can never commit for it again, whatever the clocks say, because the
taker bumped the generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg


@dataclass(frozen=True, slots=True)
class ShardRow:
    shard: int
    owner: str
    address: str
    generation: int
    leased: bool  # the lease has not expired (database clock)


@dataclass(frozen=True, slots=True)
class ServerRow:
    id: str
    address: str
    alive: bool  # heartbeat within the lease time
    tail_revision: int = 0  # it had read every event up to this revision at its last heartbeat


class ShardTable:
    def __init__(
        self,
        pool: asyncpg.Pool,
        server_id: str,
        address: str,
        lease_s: float,
        tail_revision: Callable[[], int] = lambda: 0,
    ) -> None:
        """tail_revision: every event up to it has been read by this server (cluster/events.py),
        reported with each heartbeat."""
        self._pool = pool
        self.server_id = server_id
        self.address = address
        self._lease = timedelta(seconds=lease_s)
        self._tail_revision = tail_revision

    async def heartbeat(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO statekeeper_servers (id, address, heartbeat, started, tail_revision) "
                "VALUES ($1, $2, now(), now(), $3) ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, "
                "heartbeat = now(), tail_revision = EXCLUDED.tail_revision",
                self.server_id,
                self.address,
                self._tail_revision(),
            )

    async def servers(self) -> list[ServerRow]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, address, heartbeat > now() - $1::interval, tail_revision FROM statekeeper_servers "
                "ORDER BY id",
                self._lease,
            )
        return [ServerRow(r[0], r[1], bool(r[2]), int(r[3])) for r in rows]

    async def shards(self) -> list[ShardRow]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT shard, owner, address, generation, lease_until > now() FROM statekeeper_shards ORDER BY shard"
            )
        return [ShardRow(int(r[0]), r[1], r[2], int(r[3]), bool(r[4])) for r in rows]

    async def renew(self, held: dict[int, int]) -> set[int]:
        """Extend the leases of the shards held (shard -> generation); returns those renewed."""
        if not held:
            return set()
        shards = sorted(held)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "UPDATE statekeeper_shards SET lease_until = now() + $4::interval, address = $5 "
                "WHERE owner = $1 AND (shard, generation) IN (SELECT * FROM unnest($2::int[], $3::bigint[])) "
                "RETURNING shard",
                self.server_id,
                shards,
                [held[s] for s in shards],
                self._lease,
                self.address,
            )
        return {int(r[0]) for r in rows}

    async def acquire(self, shard: int) -> int | None:
        """Take a shard whose lease expired (or that nobody holds); its new generation, or None."""
        async with self._pool.acquire() as conn:
            generation = await conn.fetchval(
                "UPDATE statekeeper_shards SET owner = $1, address = $2, generation = generation + 1, "
                "lease_until = now() + $4::interval WHERE shard = $3 AND (lease_until <= now() OR owner = '') "
                "RETURNING generation",
                self.server_id,
                self.address,
                shard,
                self._lease,
            )
        return int(generation) if generation is not None else None

    async def release(self, shard: int, generation: int) -> None:
        """Give a shard up at once (rebalancing, a clean stop): another server may take it now."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE statekeeper_shards SET owner = '', lease_until = 'epoch' "
                "WHERE shard = $1 AND owner = $2 AND generation = $3",
                shard,
                self.server_id,
                generation,
            )

    async def leave(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute("DELETE FROM statekeeper_servers WHERE id = $1", self.server_id)
