"""The cluster store: PostgreSQL through asyncpg (cluster mode)."""

from statekeeper_server.storage.postgres.shards import ShardTable
from statekeeper_server.storage.postgres.store import PgStore

__all__ = ["PgStore", "ShardTable"]
