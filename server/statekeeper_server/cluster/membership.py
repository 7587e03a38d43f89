"""Cluster membership: this server's heartbeat, the shard leases it holds, and rebalancing.

Every `tick` (a quarter of the lease time) the server beats its heartbeat, renews the leases of
its shards, and balances: with S shards and N live servers, each takes its fair share (S // N,
one more for the first S % N servers by id) of the shards nobody holds; a server holding more
than its share while another holds less gives the surplus up (first refusing new writes for
them, then letting its in-flight commits finish). A dead server's shards are free once their
leases run out (the lease time), and the others take them.

A shard is owned from the moment its lease was taken (generation bumped) until it is given up,
a renewal comes back without it (another server took it), or renewals have failed for longer
than the lease (this server cannot know any more): from then on writes for it are refused here
and forwarded to the owner. Correctness does not rest on that: every commit checks the
generation it holds (storage/postgres/store.py `_fence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from statekeeper_server.core.shards import ShardMap
from statekeeper_server.storage.postgres.shards import ShardRow, ShardTable
from statekeeper_server.storage.postgres.store import PgStore

log = logging.getLogger("statekeeper.cluster")


def fair_share(shard_count: int, servers: list[str], me: str) -> int:
    """How many shards `me` should hold among the live `servers` (sorted ids)."""
    if me not in servers:
        servers = sorted([*servers, me])
    n = len(servers)
    base, extra = divmod(shard_count, n)
    return base + (1 if servers.index(me) < extra else 0)


class Membership:
    def __init__(
        self,
        store: PgStore,
        table: ShardTable,
        shards: ShardMap,
        lease_s: float,
        *,
        on_gained: Callable[[set[int]], None] = lambda s: None,
        on_lost: Callable[[set[int]], None] = lambda s: None,
        drain: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._table = table
        self.shards = shards
        self.lease_s = lease_s
        self.tick_s = max(0.05, lease_s / 4)
        self._on_gained = on_gained
        self._on_lost = on_lost
        self._drain = drain
        self._task: asyncio.Task[None] | None = None
        self._valid_until = 0.0  # monotonic: our leases are certainly ours until then
        self.servers: list[tuple[str, str, bool]] = []  # (id, address, alive), for server info
        self._wake = asyncio.Event()
        self.store_reachable = True  # the last round reached the store

    @property
    def server_id(self) -> str:
        return self._table.server_id

    async def start(self) -> None:
        """Join: heartbeat and take a first share before serving."""
        await self._table.heartbeat()
        await self._round()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="cluster-membership")

    async def stop(self) -> None:
        """Leave cleanly: give every shard up at once so the others take them without waiting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        held = dict(self.shards.owned)
        self._lose(set(held), "leaving the cluster")
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await self._drain()
        with contextlib.suppress(Exception):
            for shard, generation in held.items():
                await self._table.release(shard, generation)
            await self._table.leave()

    def refresh_soon(self) -> None:
        """Something suggests the owners changed (a forward was refused): look again now."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)
            self._wake.clear()
            try:
                await self._round()
                self.store_reachable = True
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.store_reachable:
                    log.warning("cluster membership round failed: %s", e)
                self.store_reachable = False
            if self.shards.owned and time.monotonic() > self._valid_until:
                self._lose(
                    set(self.shards.owned), "leases could not be renewed for longer than the lease time"
                )

    async def _round(self) -> None:
        started = time.monotonic()
        await self._table.heartbeat()
        held = dict(self.shards.owned)
        renewed = await self._table.renew(held)
        if renewed == set(held):
            self._valid_until = started + self.lease_s * 0.8
        lost = set(held) - renewed
        if lost:
            self._lose(lost, "another server took them")
        rows = await self._table.shards()
        servers = await self._table.servers()
        self.servers = [(s.id, s.address, s.alive) for s in servers]
        self.shards.owners = {r.shard: (r.owner, r.address) for r in rows if r.owner and r.leased}
        await self._balance(rows, [s.id for s in servers if s.alive])

    async def _balance(self, rows: list[ShardRow], alive: list[str]) -> None:
        me = self.server_id
        share = fair_share(len(rows), alive, me)
        mine = [r for r in rows if r.shard in self.shards.owned]
        free = [r for r in rows if not r.leased or not r.owner]
        if len(mine) < share and free:
            gained: set[int] = set()
            for row in free[: share - len(mine)]:
                generation = await self._table.acquire(row.shard)
                if generation is not None:
                    self._store.drop_shards([row.shard])  # whatever memory held of it is old
                    self.shards.owned[row.shard] = generation
                    self._store.owned[row.shard] = generation
                    self.shards.owners[row.shard] = (me, self._table.address)
                    gained.add(row.shard)
            if gained:
                log.info(
                    "took shard(s) %s (now %d of %d)", _ranges(gained), len(self.shards.owned), len(rows)
                )
                self._on_gained(gained)
            return
        if len(mine) > share:
            counts: dict[str, int] = {}
            for r in rows:
                if r.leased and r.owner:
                    counts[r.owner] = counts.get(r.owner, 0) + 1
            wanting = [s for s in alive if s != me and counts.get(s, 0) < fair_share(len(rows), alive, s)]
            if not wanting:
                return
            surplus = sorted(r.shard for r in mine)[share:]
            held = {s: self.shards.owned[s] for s in surplus}
            self._lose(set(held), "rebalancing")
            if self._drain is not None:
                await self._drain()
            for shard, generation in held.items():
                await self._table.release(shard, generation)

    def _lose(self, shards: set[int], why: str) -> None:
        shards &= set(self.shards.owned)
        if not shards:
            return
        for shard in shards:
            self.shards.owned.pop(shard, None)
            self._store.owned.pop(shard, None)
            if self.shards.owners.get(shard, ("", ""))[0] == self.server_id:
                del self.shards.owners[shard]
        self._store.drop_shards(shards)
        log.info("gave up shard(s) %s: %s (now %d)", _ranges(shards), why, len(self.shards.owned))
        self._on_lost(shards)


def _ranges(shards: set[int]) -> str:
    """1,2,3,7 -> '1-3,7' for the log."""
    out: list[str] = []
    items = sorted(shards)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)
