"""The PostgreSQL reference's client side, run by the load process (bench/load.py) with asyncpg:
the same logical work as statekeeper's sections, done the way a team would do it with "a table
with a version column and an outbox".

    nodes   (id text primary key, state, data, count)   one row per node, as statekeeper's nodes
    events  (revision bigserial primary key, node_id, kind, payload)   the outbox / event log

A durable write is one statement: the compare-and-swap UPDATE on the node's transition count and
the event INSERT, in a CTE (autocommit, so one transaction, synced at commit). The client knows
each node's count (read at the start, then from its own writes); when the CAS fails because
another caller moved the node first, it re-reads the count and tries again, as a statekeeper
client using expected_transition_count would. Revisions come from a sequence: unlike
statekeeper's they may have gaps and commit out of order (the reference does less, not more).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import cpu

SCHEMA = """
CREATE TABLE nodes (
    id text PRIMARY KEY,
    state text NOT NULL,
    data bytea NOT NULL,
    count bigint NOT NULL
);
CREATE TABLE events (
    revision bigserial PRIMARY KEY,
    node_id text NOT NULL,
    kind text NOT NULL,
    payload bytea NOT NULL
);
CREATE TABLE replay_events (
    revision bigint PRIMARY KEY,
    node_id text NOT NULL,
    kind text NOT NULL,
    payload bytea NOT NULL
);
"""

KIND = "node_transitioned"

# One CAS write: the node moves only if its count is still the one the client knows.
CAS = """
WITH moved AS (
    UPDATE nodes SET state = $2, count = count + 1
    WHERE id = $1 AND count = $3
    RETURNING id, state, data, count
), event AS (
    INSERT INTO events (node_id, kind, payload)
    SELECT id, 'node_transitioned', $4 FROM moved
    RETURNING revision
)
SELECT event.revision, moved.state, moved.data, moved.count FROM moved, event
"""

# Many CAS writes in one statement (arrays unnested); returns the ids that moved. The rows are
# locked first, in id order (LockRows above the sort; an InitPlan, so before the UPDATE touches
# any row): concurrent batches sharing nodes then wait for each other instead of deadlocking.
CAS_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(id, state, expected)
), locked AS (
    SELECT id FROM nodes WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
), moved AS (
    UPDATE nodes SET state = input.state, count = nodes.count + 1
    FROM input
    WHERE nodes.id = input.id AND nodes.count = input.expected
      AND nodes.id = ANY(ARRAY(SELECT id FROM locked))
    RETURNING nodes.id
)
INSERT INTO events (node_id, kind, payload)
SELECT id, 'node_transitioned', $4 FROM moved
RETURNING node_id
"""

COUNT = "SELECT count FROM nodes WHERE id = $1"
COUNTS = "SELECT id, count FROM nodes WHERE id = ANY($1::text[])"

# Keyset pages in revision order, as an outbox reader or a replaying consumer reads.
REPLAY_PAGE = """
SELECT revision, node_id, kind, payload FROM replay_events
WHERE revision > $1 ORDER BY revision LIMIT $2
"""

# `n` events with revisions after `after`, with the workload's node ids and a payload of `size`.
FILL_REPLAY = """
INSERT INTO replay_events (revision, node_id, kind, payload)
SELECT $1 + g,
       'r' || lpad(((g / $3) % $4)::text, 7, '0')
           || CASE WHEN g % $3 = 0 THEN '' ELSE '/bench_item:i' || (g % $3)::text END,
       'node_transitioned',
       decode(repeat('78', $5), 'hex')
FROM generate_series(1, $2) AS g
"""


def _percentiles(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    n = len(latencies)
    if not n:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": latencies[n // 2] * 1000, "p99_ms": latencies[min(n - 1, int(0.99 * n))] * 1000}


async def _connect(dsn: str, n: int) -> list[Any]:
    import asyncpg

    return list(await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(n))))


async def _close(connections: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in connections))


async def setup(dsn: str, ids: list[str], data: list[bytes]) -> dict[str, Any]:
    """Create the tables and load the nodes (state a, count 0)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table(
            "nodes", records=[(i, "a", d, 0) for i, d in zip(ids, data, strict=True)]
        )
        await conn.execute("VACUUM ANALYZE nodes")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers")
        }
    finally:
        await conn.close()
    return {"settings": settings}


async def _known_counts(conn: Any) -> dict[str, int]:
    return {r["id"]: r["count"] for r in await conn.fetch("SELECT id, count FROM nodes")}


async def cas(
    dsn: str,
    picks: list[tuple[str, str]],
    concurrency: int,
    seconds: float,
    warmup: float,
    payload_bytes: int,
    cpu_pid: int,
) -> dict[str, Any]:
    """`concurrency` connections, each doing CAS writes back-to-back on the picked (node id,
    destination state) pairs, cycling. Counted as in load.unary: completions inside the window,
    latency (including any re-read and retry) of writes started inside it, and the CPU of all of
    PostgreSQL's processes (the postmaster cpu_pid's tree) inside the window per write."""
    connections = await _connect(dsn, concurrency)
    try:
        counts = await _known_counts(connections[0])
        payload = b"p" * payload_bytes
        for conn in connections:  # prepare outside the measurement
            await conn.prepare(CAS)
            await conn.prepare(COUNT)
        latencies: list[float] = []
        done = retries = 0
        n = len(picks)
        clock = time.perf_counter
        start = clock() + warmup
        end = start + seconds

        async def caller(k: int, conn: Any) -> None:
            nonlocal done, retries
            i = k
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                node, to = picks[i % n]
                expected = counts[node]
                while await conn.fetchrow(CAS, node, to, expected, payload) is None:
                    retries += 1  # another caller moved it first: re-read, try again
                    expected = await conn.fetchval(COUNT, node)
                counts[node] = expected + 1
                t1 = clock()
                if start <= t1 <= end:
                    done += 1
                    if t0 >= start:
                        latencies.append(t1 - t0)
                i += concurrency

        sampler = asyncio.ensure_future(cpu.during(start, end, lambda: cpu.tree_seconds(cpu_pid)))
        await asyncio.gather(*(caller(k, c) for k, c in enumerate(connections)))
        used = await sampler
    finally:
        await _close(connections)
    return {
        "calls_per_s": done / seconds,
        "calls": done,
        "retries": retries,
        "server_cpu_us": used / max(1, done) * 1e6,
        **_percentiles(latencies),
    }


async def cas_batch(
    dsn: str,
    batches: list[tuple[list[str], list[str]]],
    concurrency: int,
    seconds: float,
    warmup: float,
    payload_bytes: int,
    cpu_pid: int,
) -> dict[str, Any]:
    """`concurrency` connections, each sending one CAS_BATCH statement at a time over the
    batches ((node ids sorted, destination states) each: sorted so that concurrent batches lock
    rows in one order), cycling. The writes whose CAS failed (a concurrent batch moved the node)
    are re-read and sent again until the whole batch is applied; a batch counts when it is."""
    import asyncpg

    connections = await _connect(dsn, concurrency)
    try:
        counts = await _known_counts(connections[0])
        payload = b"p" * payload_bytes
        for conn in connections:
            await conn.prepare(CAS_BATCH)
            await conn.prepare(COUNTS)
        latencies: list[float] = []
        done = ops = retries = deadlocks = 0
        n = len(batches)
        clock = time.perf_counter
        start = clock() + warmup
        end = start + seconds

        async def apply(conn: Any, ids: list[str], states: list[str]) -> None:
            nonlocal retries, deadlocks
            expected = [counts[i] for i in ids]
            while True:
                try:
                    moved = {r[0] for r in await conn.fetch(CAS_BATCH, ids, states, expected, payload)}
                except asyncpg.exceptions.DeadlockDetectedError:
                    deadlocks += 1
                    moved = set()
                for i, e in zip(ids, expected, strict=True):
                    if i in moved:
                        counts[i] = e + 1
                if len(moved) == len(ids):
                    return
                retry = [(i, s) for i, s in zip(ids, states, strict=True) if i not in moved]
                retries += len(retry)
                ids, states = [i for i, _ in retry], [s for _, s in retry]
                fresh = {r[0]: r[1] for r in await conn.fetch(COUNTS, ids)}
                expected = [fresh[i] for i in ids]

        async def caller(k: int, conn: Any) -> None:
            nonlocal done, ops
            i = k
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                ids, states = batches[i % n]
                await apply(conn, ids, states)
                t1 = clock()
                if start <= t1 <= end:
                    done += 1
                    ops += len(ids)
                    if t0 >= start:
                        latencies.append(t1 - t0)
                i += concurrency

        sampler = asyncio.ensure_future(cpu.during(start, end, lambda: cpu.tree_seconds(cpu_pid)))
        await asyncio.gather(*(caller(k, c) for k, c in enumerate(connections)))
        used = await sampler
    finally:
        await _close(connections)
    return {
        "calls_per_s": done / seconds,
        "ops_per_s": ops / seconds,
        "server_cpu_us": used / max(1, ops) * 1e6,
        "calls": done,
        "retries": retries,
        "deadlocks": deadlocks,
        **_percentiles(latencies),
    }


async def fill_replay(
    dsn: str, after: int, events: int, tree_size: int, trees: int, payload_bytes: int
) -> dict[str, Any]:
    """Append `events` rows after revision `after` to replay_events (one statement), then
    VACUUM ANALYZE it, as autovacuum would soon after a load."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute(FILL_REPLAY, after, events, tree_size, trees, payload_bytes)
        await conn.execute("VACUUM ANALYZE replay_events")
    finally:
        await conn.close()
    return {"seconds": time.perf_counter() - started}


async def replay(dsn: str, first: int, events: int, page: int) -> dict[str, Any]:
    """Read `events` events from revision `first` in revision order, `page` rows per query (the
    statekeeper Watch sends up to 1,000 per message); events/s from the first query to the last."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.prepare(REPLAY_PAGE)
        received = 0
        last = first - 1
        started = time.perf_counter()
        while received < events:
            rows = await conn.fetch(REPLAY_PAGE, last, min(page, events - received))
            if not rows:
                break
            received += len(rows)
            last = rows[-1][0]
        span = time.perf_counter() - started
    finally:
        await conn.close()
    return {"events_per_s": received / span if span > 0 else 0.0, "events": received}
