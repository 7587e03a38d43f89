"""The PostgreSQL schema of a cluster store, created on first start and versioned.

Portable SQL only (it must run on PostgreSQL-compatible distributed engines too): tables,
primary keys, one secondary index, unnest() for batched writes, row locks taken by UPDATE and
SELECT ... FOR UPDATE, now(), and LISTEN/NOTIFY used only as a wake-up (everything is correct by
polling alone). No advisory locks, no triggers, no stored procedures.

    statekeeper_meta      name -> value: format_version, shard_count
    statekeeper_revision  the one store-wide revision (a single row): its row lock orders the
                          commits of every server, so revisions are gap-free in commit order
    statekeeper_kv        (keyspace, shard, key) -> value: every record of every keyspace, the
                          same keys and values as the embedded store's column families; `shard`
                          says which shard owns the row (request ids are per shard)
    statekeeper_shards    shard -> owner, its address, generation, lease expiry (the database's
                          clock): taking a shard bumps its generation; every commit checks the
                          generations it holds inside its own transaction
    statekeeper_servers   server id -> advertised address, heartbeat (the database's clock), and
                          the revision up to which it has read every event (event compaction
                          never deletes what a live server has not read yet)
"""

from __future__ import annotations

from statekeeper_server.storage.base import Keyspace

FORMAT_VERSION = 1
"""Bump when the layout changes incompatibly; a server refuses a newer store."""

# Stable numbers for the keyspaces (never reuse one).
KEYSPACE_IDS: dict[Keyspace, int] = {
    Keyspace.META: 1,
    Keyspace.TYPES: 2,
    Keyspace.NODES: 3,
    Keyspace.TASKS: 4,
    Keyspace.EVENTS: 5,
    Keyspace.REQUESTS: 6,
    Keyspace.REQUEST_EXPIRY: 7,
    Keyspace.TASKS_BY_NODE: 8,
    Keyspace.TIMERS: 9,
    Keyspace.OUTBOUND_QUEUE: 10,
    Keyspace.DEAD_LETTERS: 11,
    Keyspace.CONSUMERS: 12,
    Keyspace.NODE_INDEX: 13,
    Keyspace.RUNS: 14,
    Keyspace.SAVEPOINTS: 15,
    Keyspace.TREE_SNAPSHOTS: 16,
    Keyspace.RUN_ENTITIES: 17,
    Keyspace.SAVEPOINT_PARTS: 18,
    Keyspace.SAVEPOINT_STATES: 19,
    Keyspace.TREE_SNAPSHOT_ITEMS: 20,
    Keyspace.TASKS_FINISHED: 21,
}

CREATE = [
    """CREATE TABLE IF NOT EXISTS statekeeper_meta (
        name text PRIMARY KEY,
        value bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS statekeeper_revision (
        id int PRIMARY KEY,
        revision bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS statekeeper_kv (
        ks smallint NOT NULL,
        shard int NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (ks, shard, key)
    )""",
    "CREATE INDEX IF NOT EXISTS statekeeper_kv_by_key ON statekeeper_kv (ks, key)",
    """CREATE TABLE IF NOT EXISTS statekeeper_shards (
        shard int PRIMARY KEY,
        owner text NOT NULL,
        address text NOT NULL,
        generation bigint NOT NULL,
        lease_until timestamptz NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS statekeeper_servers (
        id text PRIMARY KEY,
        address text NOT NULL,
        heartbeat timestamptz NOT NULL,
        started timestamptz NOT NULL
    )""",
    # Added after format version 1 was released: a store created before gets it here (older
    # servers leave it at 0, which holds event compaction back while they run).
    "ALTER TABLE statekeeper_servers ADD COLUMN IF NOT EXISTS tail_revision bigint NOT NULL DEFAULT 0",
]
