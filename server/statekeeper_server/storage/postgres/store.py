"""The Store on PostgreSQL (cluster mode), through asyncpg.

The same keyspaces, keys and record bytes as the embedded store, in one table
(statekeeper_kv: keyspace, shard, key -> value). Three faces:

- builds (the committer, synchronous): served from memory. This server is the only one that
  writes the shards it owns (fenced), so what it loaded of them stays true until it writes
  again: a cache of keys and of whole key ranges, per owned shard. A build that reads what is
  not in memory raises NotCached; the committer calls fault_in() and runs the build again.
  Machine types are global and immutable: a loaded type is kept for good, an absent one is
  looked up again after a second.
- group writes: one transaction per commit group: the fence (every shard the group writes must
  still be held at the generation this server took it with: `UPDATE statekeeper_shards ...`
  counts the rows), the revision row (`SELECT ... FOR UPDATE`: its lock orders the commits of
  every server; if another server committed since the group was built, the committer builds
  it again from the current revision while the lock is held), the rows, the new revision, a
  NOTIFY to wake other servers' readers. PostgreSQL's COMMIT is durable (synchronous_commit).
- client reads (durable views): plain SELECTs of committed rows, from any server. Events are
  read together with the compaction mark (one statement): a compacted revision is refused
  (REVISION_COMPACTED), never skipped.
- housekeeping (cluster/housekeeping.py, cluster/compaction.py): deletions in transactions
  that pass the fence of the shard they work for, like a commit (`fenced`, `compact_events`);
  memory forgets what they deleted, and a load that overlapped them is read again.

A group that fails before COMMIT was not applied; one whose COMMIT fails has an unknown
outcome: the shards it wrote are dropped from memory (read again from the database).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from statekeeper_server.domain.errors import OutOfRange, Unavailable
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import (
    BackupNotSupported,
    GroupWrite,
    Keyspace,
    NotApplied,
    NotCached,
    OutcomeUnknown,
    ShardsLost,
    StoreError,
    StoreUnreachable,
)
from statekeeper_server.storage.postgres.schema import CREATE, FORMAT_VERSION, KEYSPACE_IDS

log = logging.getLogger("statekeeper.postgres")

KS = KEYSPACE_IDS
TYPES_TTL_S = 5.0  # an absence a build loaded is forgotten after this long
MAX_CACHED = 2_000_000  # keys held for builds; beyond this the cache starts over
MAX_RANGES = 512  # complete ranges remembered per (shard, keyspace)
NOTIFY_CHANNEL = "statekeeper_commit"
EVENTS_COMPACTED_KEY = b"events_compacted_revision"
"""META key of the compaction mark: every event of a revision up to it was deleted (the key the
event hub reads at start, features/events/hub.py META_COMPACTED)."""

_CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError)


def unavailable(error: BaseException) -> Unavailable:
    return Unavailable(
        "STORE_UNAVAILABLE",
        f"PostgreSQL is unavailable ({type(error).__name__}: {error}); retry",
    )


@dataclass
class _Range:
    start: bytes
    end: bytes | None
    keys: list[bytes] = field(default_factory=list)  # sorted, present keys only

    def covers(self, start: bytes, end: bytes | None) -> bool:
        if start < self.start:
            return False
        if self.end is None:
            return True
        return end is not None and end <= self.end

    def holds(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)


@dataclass
class _Load:
    """A read fault_in has under way: `end` None: the key `start`; b"": open-ended."""

    shard: int
    keyspace: Keyspace
    start: bytes
    end: bytes | None
    more: frozenset[bytes] = frozenset()  # with end None: further single keys
    spoiled: bool = False  # housekeeping deleted a row of it meanwhile: keep nothing, load again

    def spoil(self, shard: int, deleted: list[tuple[Keyspace, bytes]]) -> None:
        if shard != self.shard:
            return
        for ks, key in deleted:
            if ks is self.keyspace and (
                (key == self.start or key in self.more)
                if self.end is None
                else self.start <= key and (not self.end or key < self.end)
            ):
                self.spoiled = True
                return


class PgBatch:
    """Writes of a group, each tagged with its shard."""

    __slots__ = ("_shard", "ops", "ranges")

    def __init__(self) -> None:
        self._shard = 0
        # (keyspace, shard, key) -> value (None: delete); later writes replace earlier ones
        self.ops: dict[tuple[Keyspace, int, bytes], bytes | None] = {}
        self.ranges: list[tuple[Keyspace, bytes, bytes]] = []

    def set_shard(self, shard: int) -> None:
        self._shard = shard

    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None:
        self.ops[(keyspace, self._shard, key)] = value

    def delete(self, keyspace: Keyspace, key: bytes) -> None:
        self.ops[(keyspace, self._shard, key)] = None

    def write_all(self, mutations: list[tuple[Keyspace, bytes, bytes | None]]) -> None:
        ops, shard = self.ops, self._shard
        for keyspace, key, value in mutations:
            ops[(keyspace, shard, key)] = value

    def delete_range(self, keyspace: Keyspace, start: bytes, end: bytes) -> None:
        """Every shard's keys in [start, end) (no build writes one; housekeeping goes through
        PgStore.fenced and compact_events)."""
        self.ranges.append((keyspace, start, end))

    def __len__(self) -> int:
        return len(self.ops) + len(self.ranges)


class FencedWork:
    """What one fenced housekeeping transaction reads and deletes (PgStore.fenced): rows of its
    shard only; the deletes are written at its end."""

    def __init__(self, conn: asyncpg.Connection, shard: int) -> None:
        self._conn = conn
        self.shard = shard
        self.deleted: list[tuple[Keyspace, bytes]] = []

    async def scan(
        self, keyspace: Keyspace, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        args: list[Any] = [KS[keyspace], self.shard, start]
        where = "ks = $1 AND shard = $2 AND key >= $3"
        if end is not None:
            args.append(end)
            where += " AND key < $4"
        args.append(max(0, limit))
        rows = await self._conn.fetch(
            f"SELECT key, value FROM statekeeper_kv WHERE {where} ORDER BY key LIMIT ${len(args)}", *args
        )
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    async def get_many(self, keyspace: Keyspace, keys_: list[bytes]) -> dict[bytes, bytes]:
        if not keys_:
            return {}
        rows = await self._conn.fetch(
            "SELECT key, value FROM statekeeper_kv WHERE ks = $1 AND shard = $2 AND key = ANY($3::bytea[])",
            KS[keyspace],
            self.shard,
            list(set(keys_)),
        )
        return {bytes(r[0]): bytes(r[1]) for r in rows}

    def delete(self, keyspace: Keyspace, key: bytes) -> None:
        self.deleted.append((keyspace, key))

    async def flush(self) -> None:
        if not self.deleted:
            return
        await self._conn.execute(
            "DELETE FROM statekeeper_kv WHERE shard = $1 AND (ks, key) IN "
            "(SELECT * FROM unnest($2::smallint[], $3::bytea[]))",
            self.shard,
            [KS[ks] for ks, _ in self.deleted],
            [key for _, key in self.deleted],
        )


class PgView:
    """A durable view: committed rows, read with the pool (any server)."""

    def __init__(self, store: PgStore) -> None:
        self._store = store

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self._store.pool.acquire() as conn:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows
        except _CONNECTION_ERRORS as e:
            raise unavailable(e) from e
        except asyncpg.PostgresError as e:
            raise unavailable(e) from e

    async def get(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        rows = await self._fetch(
            "SELECT value FROM statekeeper_kv WHERE ks = $1 AND key = $2 LIMIT 1", KS[keyspace], key
        )
        return bytes(rows[0][0]) if rows else None

    async def get_many(self, keyspace: Keyspace, keys_: list[bytes]) -> list[bytes | None]:
        if not keys_:
            return []
        rows = await self._fetch(
            "SELECT key, value FROM statekeeper_kv WHERE ks = $1 AND key = ANY($2::bytea[])",
            KS[keyspace],
            list(set(keys_)),
        )
        found = {bytes(r[0]): bytes(r[1]) for r in rows}
        return [found.get(k) for k in keys_]

    async def scan(
        self,
        keyspace: Keyspace,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        limit: int,
        reverse: bool = False,
        shards: Collection[int] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        if keyspace is Keyspace.EVENTS and not reverse and shards is None:
            # Reading events on from a revision: one that was compacted (by any server, even
            # between two slices of one read) is refused as EventHub.check_start refuses it,
            # never skipped.
            mark, rows = await self.events(start, end, limit)
            requested = keys.seq_key_parts(start[:12])[0] if len(start) >= 12 else 0
            if 0 < requested <= mark:
                raise OutOfRange(
                    "REVISION_COMPACTED",
                    f"revision {requested} was compacted; the oldest revision still available is {mark + 1}",
                    oldest_revision=mark + 1,
                    requested_revision=requested,
                )
            return rows
        args: list[Any] = [KS[keyspace], start]
        where = "ks = $1 AND key >= $2"
        if end is not None:
            args.append(end)
            where += f" AND key < ${len(args)}"
        if shards is not None:
            args.append(list(shards))
            where += f" AND shard = ANY(${len(args)}::int[])"
        args.append(max(0, limit))
        order = "DESC" if reverse else "ASC"
        rows = await self._fetch(
            f"SELECT key, value FROM statekeeper_kv WHERE {where} ORDER BY key {order} LIMIT ${len(args)}",
            *args,
        )
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    async def seek(self, keyspace: Keyspace, key: bytes) -> tuple[bytes, bytes] | None:
        found = await self.scan(keyspace, key, None, limit=1)
        return found[0] if found else None

    async def due_shards(self, keyspace: Keyspace, end: bytes, shards: list[int]) -> list[int]:
        """Those of these shards that hold a key below end in keyspace (one read)."""
        if not shards:
            return []
        rows = await self._fetch(
            "SELECT s FROM unnest($3::int[]) AS s WHERE EXISTS "
            "(SELECT 1 FROM statekeeper_kv WHERE ks = $1 AND shard = s AND key < $2)",
            KS[keyspace],
            end,
            shards,
        )
        return sorted(int(r[0]) for r in rows)

    async def events(
        self, start: bytes, end: bytes | None, limit: int
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The compaction mark and up to limit events with start <= key < end, in key order,
        read in one statement (one snapshot): an event missing because it was compacted is
        always told apart from one not yet written. Every read passes the mark on
        (PgStore.note_compacted), so this server learns of another's compaction."""
        args: list[Any] = [KS[Keyspace.META], EVENTS_COMPACTED_KEY, KS[Keyspace.EVENTS], start]
        where = "ks = $3 AND key >= $4"
        if end is not None:
            args.append(end)
            where += f" AND key < ${len(args)}"
        args.append(max(0, limit))
        rows = await self._fetch(
            "SELECT NULL::bytea, (SELECT value FROM statekeeper_kv WHERE ks = $1 AND shard = 0 AND key = $2) "
            f"UNION ALL (SELECT key, value FROM statekeeper_kv WHERE {where} ORDER BY key LIMIT ${len(args)})",
            *args,
        )
        mark = 0
        found: list[tuple[bytes, bytes]] = []
        for key, value in rows:
            if key is None:
                mark = keys.read_u64(bytes(value)) if value is not None else 0
            else:
                found.append((bytes(key), bytes(value)))
        found.sort()  # UNION ALL keeps no order by itself (already sorted: cheap)
        self._store.note_compacted(mark)
        return mark, found


class PgStore:
    """A cluster store. Open with `await PgStore.open(dsn, shard_count)`."""

    pipelined = False  # one transaction per group, one group at a time
    supports_backup = False  # PostgreSQL's own tools back it up
    fail_stop = False  # a failed transaction leaves PostgreSQL consistent: service goes on

    def __init__(self, dsn: str, pool: asyncpg.Pool, shard_count: int) -> None:
        self.dsn = dsn
        self.pool = pool
        self.shard_count = shard_count
        self.build_shard = 0
        self.server_id = ""
        # shard -> generation held; kept by the cluster membership (cluster/ownership.py)
        self.owned: dict[int, int] = {}
        self._view = PgView(self)
        self._cache: dict[tuple[int, Keyspace, bytes], bytes | None] = {}
        self._ranges: dict[tuple[int, Keyspace], list[_Range]] = {}
        self._types: dict[bytes, bytes] = {}
        # Machine types another server may register at any moment: an absence (a key, or a
        # range fully read) is believed only by the build that loaded it, when it runs again.
        self.build_token: object = None
        self._types_absent: dict[bytes, tuple[object, float]] = {}
        self._types_ranges: list[tuple[bytes, bytes | None, object, float]] = []
        self._meta: dict[bytes, bytes] = {}
        self.commit_listeners: list[Callable[[int], None]] = []  # (top revision) after each commit
        # The compaction mark as last read (every revision up to it was deleted) and who wants
        # to know when it moves (the oldest revision left).
        self.events_compacted = 0
        self.compaction_listeners: list[Callable[[int], None]] = []
        self._loads: list[_Load] = []  # what fault_in is reading now (housekeeping may spoil it)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(cls, dsn: str, shard_count: int, *, pool_size: int = 16) -> PgStore:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=2, max_size=pool_size, command_timeout=30, timeout=10
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            if isinstance(e, OSError | TimeoutError | asyncpg.CannotConnectNowError):  # down, starting
                raise StoreUnreachable(f"cannot connect to PostgreSQL at {_safe(dsn)}: {e}") from e
            raise StoreError(f"cannot connect to PostgreSQL at {_safe(dsn)}: {e}") from e
        assert pool is not None
        store = cls(dsn, pool, shard_count)
        try:
            await store._init_schema(shard_count)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _init_schema(self, shard_count: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for statement in CREATE:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO statekeeper_meta (name, value) VALUES ('format_version', $1), "
                "('shard_count', $2) ON CONFLICT (name) DO NOTHING",
                FORMAT_VERSION,
                shard_count,
            )
            meta = {r[0]: int(r[1]) for r in await conn.fetch("SELECT name, value FROM statekeeper_meta")}
            found = meta["format_version"]
            if found > FORMAT_VERSION:
                raise StoreError(
                    f"the PostgreSQL store at {_safe(self.dsn)} has format version {found}, newer than this "
                    f"server's {FORMAT_VERSION}; upgrade statekeeper to open it"
                )
            self.shard_count = meta["shard_count"]
            if self.shard_count != shard_count:
                log.warning(
                    "the store has %d shards (fixed when it was created); --shards %d is ignored",
                    self.shard_count,
                    shard_count,
                )
            await conn.execute(
                "INSERT INTO statekeeper_revision (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
            )
            await conn.execute(
                "INSERT INTO statekeeper_shards (shard, owner, address, generation, lease_until) "
                "SELECT s, '', '', 0, 'epoch' FROM generate_series(0, $1 - 1) AS s ON CONFLICT (shard) DO NOTHING",
                self.shard_count,
            )
        await self.refresh_meta()
        rows = await self._view.scan(Keyspace.TYPES, b"", None, limit=1_000_000)
        for key, value in rows:
            self._types[key] = value
        # Every type, for the catalog the engine builds at start (outside any build).
        self._types_ranges.append((b"", None, None, time.monotonic() + TYPES_TTL_S))

    async def refresh_meta(self) -> None:
        """Read the revision and the META keyspace again (at start, after trouble)."""
        async with self.pool.acquire() as conn:
            revision = await conn.fetchval("SELECT revision FROM statekeeper_revision WHERE id = 1")
            rows = await conn.fetch("SELECT key, value FROM statekeeper_kv WHERE ks = $1", KS[Keyspace.META])
        self._meta = {bytes(r[0]): bytes(r[1]) for r in rows}
        self._meta[keys.META_REVISION] = keys.u64(int(revision))
        mark = self._meta.get(EVENTS_COMPACTED_KEY)
        self.note_compacted(keys.read_u64(mark) if mark is not None else 0)

    def note_compacted(self, mark: int) -> None:
        """Every event of a revision up to mark is deleted (read from the store, or deleted here)."""
        if mark <= self.events_compacted:
            return
        self.events_compacted = mark
        self._meta[EVENTS_COMPACTED_KEY] = keys.u64(mark)
        for listener in self.compaction_listeners:
            listener(mark + 1)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call wake() on every commit's NOTIFY, for ever (a connection of its own, opened again
        when it drops). Only a wake-up: readers poll anyway."""
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda *args, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *args: wake())
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("the NOTIFY connection failed: %s", e)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)

    async def shard_of_key(self, keyspace: Keyspace, key: bytes) -> int | None:
        """The shard a stored row belongs to (a task's, for routing task calls), or None."""
        rows = await self._view._fetch(
            "SELECT shard FROM statekeeper_kv WHERE ks = $1 AND key = $2 LIMIT 1", KS[keyspace], key
        )
        return int(rows[0][0]) if rows else None

    async def aclose(self) -> None:
        await self.pool.close()

    def close(self) -> None:
        """The pool is closed with aclose(); nothing to do synchronously."""

    # -- builds: memory --------------------------------------------------------------------

    def get(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        if keyspace is Keyspace.META:
            return self._meta.get(key)
        if keyspace is Keyspace.TYPES:
            value = self._types.get(key)
            if value is not None:
                return value
            absent = self._types_absent.get(key)
            if (absent is not None and absent[0] is self.build_token) or self._types_range_known(
                key, key + b"\x00"
            ):
                return None
            raise NotCached(0, keyspace, key)
        shard = self.build_shard
        k = (shard, keyspace, key)
        cache = self._cache
        if k in cache:
            return cache[k]
        for r in self._ranges.get((shard, keyspace), ()):
            if r.holds(key):
                return None
        raise NotCached(shard, keyspace, key)

    def get_many(self, keyspace: Keyspace, keys_: list[bytes]) -> list[bytes | None]:
        """get of each key; the keys not in memory are reported together (one load, one rebuild)."""
        found: list[bytes | None] = []
        missing: list[bytes] = []
        for key in keys_:
            try:
                found.append(self.get(keyspace, key))
            except NotCached as e:
                if keyspace is Keyspace.TYPES:  # types are loaded their own way (fault_in)
                    raise
                missing.append(e.start)
        if missing:
            raise NotCached(self.build_shard, keyspace, missing[0], None, missing[1:])
        return found

    def scan(
        self, keyspace: Keyspace, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        if keyspace is Keyspace.TYPES:
            if not self._types_range_known(start, end):
                raise NotCached(0, keyspace, start, end or b"")
            found = sorted(k for k in self._types if k >= start and (end is None or k < end))
            items = [(k, self._types[k]) for k in found]
            return iter(reversed(items) if reverse else items)
        if keyspace is Keyspace.META:
            items = sorted((k, v) for k, v in self._meta.items() if k >= start and (end is None or k < end))
            return iter(reversed(items) if reverse else items)
        shard = self.build_shard
        for r in self._ranges.get((shard, keyspace), ()):
            if r.covers(start, end):
                lo = bisect.bisect_left(r.keys, start)
                hi = bisect.bisect_left(r.keys, end) if end is not None else len(r.keys)
                cache = self._cache
                items = []
                for k in r.keys[lo:hi]:
                    value = cache.get((shard, keyspace, k))
                    if value is not None:
                        items.append((k, value))
                return iter(reversed(items) if reverse else items)
        raise NotCached(shard, keyspace, start, end or b"")

    def _types_range_known(self, start: bytes, end: bytes | None) -> bool:
        token = self.build_token
        return any(
            s <= start and (e is None or (end is not None and end <= e)) and owner is token
            for s, e, owner, _ in self._types_ranges
        )

    def _forget_old_absences(self) -> None:
        now = time.monotonic()
        self._types_absent = {k: v for k, v in self._types_absent.items() if v[1] > now}
        self._types_ranges = [r for r in self._types_ranges if r[3] > now]

    async def fault_in(self, missing: NotCached) -> None:
        ks, start, end = missing.keyspace, missing.start, missing.end
        load = _Load(missing.shard, ks, start, end, frozenset(missing.more))
        self._loads.append(load)
        try:
            async with self.pool.acquire() as conn:
                if ks is Keyspace.TYPES:
                    if end is None:
                        value = await conn.fetchval(
                            "SELECT value FROM statekeeper_kv WHERE ks = $1 AND key = $2 LIMIT 1",
                            KS[ks],
                            start,
                        )
                        self._forget_old_absences()
                        if value is not None:
                            self._types[start] = bytes(value)
                        else:
                            self._types_absent[start] = (missing.token, time.monotonic() + TYPES_TTL_S)
                        return
                    rows = await conn.fetch(
                        "SELECT key, value FROM statekeeper_kv WHERE ks = $1 AND key >= $2"
                        + (" AND key < $3" if end else ""),
                        KS[ks],
                        start,
                        *([end] if end else []),
                    )
                    self._forget_old_absences()
                    for r in rows:
                        self._types[bytes(r[0])] = bytes(r[1])
                    self._types_ranges.append(
                        (start, end or None, self.build_token, time.monotonic() + TYPES_TTL_S)
                    )
                    return
                shard = missing.shard
                if end is None:
                    wanted = [start, *missing.more]
                    found = await conn.fetch(
                        "SELECT key, value FROM statekeeper_kv WHERE ks = $1 AND shard = $2 AND key = ANY($3::bytea[])",
                        KS[ks],
                        shard,
                        wanted,
                    )
                    if shard in self.owned and not load.spoiled:
                        values = {bytes(r[0]): bytes(r[1]) for r in found}
                        for key in wanted:
                            k = (shard, ks, key)
                            if k not in self._cache:  # memory is never older than the database
                                self._cache[k] = values.get(key)
                    return
                rows = await conn.fetch(
                    "SELECT key, value FROM statekeeper_kv WHERE ks = $1 AND shard = $2 AND key >= $3"
                    + (" AND key < $4" if end else "")
                    + " ORDER BY key",
                    KS[ks],
                    shard,
                    start,
                    *([end] if end else []),
                )
        except _CONNECTION_ERRORS as e:
            raise unavailable(e) from e
        finally:
            self._loads.remove(load)
        if shard not in self.owned:
            return  # given up while loading: nothing of it is kept
        if load.spoiled:
            return
        cache = self._cache
        present: set[bytes] = set()
        for r in rows:
            key, value = bytes(r[0]), bytes(r[1])
            k = (shard, ks, key)
            if k not in cache:  # memory is never older than the database for an owned shard
                cache[k] = value
            if cache[k] is not None:
                present.add(key)
        # Keys this server wrote in the range that the database did not return cannot exist
        # (they were committed), but memory wins anyway: count what memory holds.
        for (s, k_ks, key), value in cache.items():
            if s == shard and k_ks is ks and value is not None and start <= key and (not end or key < end):
                present.add(key)
        ranges = self._ranges.setdefault((shard, ks), [])
        ranges.append(_Range(start, end or None, sorted(present)))
        if len(ranges) > MAX_RANGES:
            del ranges[: len(ranges) - MAX_RANGES]

    def drop_shards(self, shards: Collection[int]) -> None:
        """Forget what memory holds of these shards (lost, or an unknown write outcome)."""
        doomed = set(shards)
        if not doomed:
            return
        self._cache = {k: v for k, v in self._cache.items() if k[0] not in doomed}
        self._ranges = {k: v for k, v in self._ranges.items() if k[0] not in doomed}

    def _apply(self, batch: PgBatch, top: int) -> None:
        """Memory follows a committed group, for the shards still owned: one given up while the
        group was being written is forgotten for good (its next owner writes it from now on)."""
        cache = self._cache
        ranges = self._ranges
        owned = self.owned
        for (ks, shard, key), value in batch.ops.items():
            if ks is Keyspace.TYPES:
                if value is not None:
                    self._types[key] = value
                continue
            if ks is Keyspace.META:
                if value is None:
                    self._meta.pop(key, None)
                else:
                    self._meta[key] = value
                continue
            if shard not in owned or ks is Keyspace.EVENTS:  # builds never read events
                continue
            cache[(shard, ks, key)] = value
            for r in ranges.get((shard, ks), ()):
                if r.holds(key):
                    i = bisect.bisect_left(r.keys, key)
                    there = i < len(r.keys) and r.keys[i] == key
                    if value is None and there:
                        del r.keys[i]
                    elif value is not None and not there:
                        r.keys.insert(i, key)
        for ks, start, end in batch.ranges:
            for k in [k for k in cache if k[1] is ks and start <= k[2] < end]:
                cache[k] = None
            for (_, r_ks), rs in ranges.items():
                if r_ks is ks:
                    for r in rs:
                        r.keys = [k for k in r.keys if not (start <= k < end)]
        if top:
            self._meta[keys.META_REVISION] = keys.u64(top)
        if len(cache) > MAX_CACHED:
            log.info("build cache over %d keys: starting over", MAX_CACHED)
            self._cache = {}
            self._ranges = {}

    # -- writes ------------------------------------------------------------------------------

    def new_batch(self) -> PgBatch:
        return PgBatch()

    def write(self, batch: Any, *, sync: bool) -> None:
        raise StoreError(
            "the PostgreSQL store writes through the committer (write_group); housekeeping "
            "through fenced() and compact_events()"
        )

    @contextlib.asynccontextmanager
    async def fenced(self, shard: int) -> AsyncIterator[FencedWork]:
        """Housekeeping of one shard (deleting what expired), in one transaction that first
        passes the shard's fence like a commit (ShardsLost: this server does not hold it, and
        nothing is deleted). The fence's row lock keeps this server's own commits for the shard
        out until the end, so what the work reads is current and nothing changes under it."""
        work: FencedWork | None = None
        committing = False
        try:
            async with self.pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    await self._fence(conn, frozenset({shard}))
                    work = FencedWork(conn, shard)
                    yield work
                    await work.flush()
                except BaseException:
                    await _rollback(tx)
                    raise
                committing = True
                await tx.commit()
        except _CONNECTION_ERRORS as e:
            if committing:
                self.drop_shards([shard])  # COMMIT sent, no answer: memory may be wrong
            raise unavailable(e) from e
        except asyncpg.PostgresError as e:
            raise unavailable(e) from e
        assert work is not None
        self._forget(shard, work.deleted)

    def _forget(self, shard: int, deleted: list[tuple[Keyspace, bytes]]) -> None:
        """Memory follows rows that housekeeping deleted (committed)."""
        if not deleted:
            return
        cache, ranges = self._cache, self._ranges
        for load in self._loads:
            load.spoil(shard, deleted)
        for ks, key in deleted:
            cache.pop((shard, ks, key), None)
            for r in ranges.get((shard, ks), ()):
                if r.holds(key):
                    i = bisect.bisect_left(r.keys, key)
                    if i < len(r.keys) and r.keys[i] == key:
                        del r.keys[i]

    async def compact_events(self, below: int, shard: int = 0) -> int:
        """Delete every event of a revision below `below`, and move the compaction mark to
        below - 1, in one transaction fenced by `shard` (the server holding it is the one that
        compacts); returns the mark. ShardsLost: not held, nothing deleted."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._fence(conn, frozenset({shard}))
                raw = await conn.fetchval(
                    "SELECT value FROM statekeeper_kv WHERE ks = $1 AND shard = 0 AND key = $2",
                    KS[Keyspace.META],
                    EVENTS_COMPACTED_KEY,
                )
                mark = keys.read_u64(bytes(raw)) if raw is not None else 0
                if below - 1 > mark:
                    await conn.execute(
                        "DELETE FROM statekeeper_kv WHERE ks = $1 AND key >= $2 AND key < $3",
                        KS[Keyspace.EVENTS],
                        keys.seq_key(mark + 1, 0),
                        keys.seq_key(below, 0),
                    )
                    mark = below - 1
                    await conn.execute(
                        "INSERT INTO statekeeper_kv (ks, shard, key, value) VALUES ($1, 0, $2, $3) "
                        "ON CONFLICT (ks, shard, key) DO UPDATE SET value = EXCLUDED.value",
                        KS[Keyspace.META],
                        EVENTS_COMPACTED_KEY,
                        keys.u64(mark),
                    )
                    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, "compacted")
        except _CONNECTION_ERRORS as e:
            raise unavailable(e) from e
        except asyncpg.PostgresError as e:
            raise unavailable(e) from e
        self.note_compacted(mark)
        return mark

    def reclaim(self, keyspace: Keyspace, start: bytes | None, end: bytes | None) -> None:
        """Nothing to do: PostgreSQL's autovacuum returns the space of deleted rows."""

    def write_group(self, group: GroupWrite, done: Callable[[BaseException | None], None]) -> None:
        asyncio.get_running_loop().create_task(self._commit(group, done), name="pg-commit")

    async def _commit(self, group: GroupWrite, done: Callable[[BaseException | None], None]) -> None:
        batch = group.batch
        top = group.top_revision
        committing = False
        try:
            async with self.pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    await self._fence(conn, group.shards)
                    if group.first_revision:
                        current = await conn.fetchval(
                            "SELECT revision FROM statekeeper_revision WHERE id = 1 FOR UPDATE"
                        )
                        if int(current) != group.first_revision - 1:
                            batch, top = group.rebuild(int(current) + 1)
                    group.before_sync()
                    assert isinstance(batch, PgBatch)
                    await self._write_rows(conn, batch)
                    if top:
                        await conn.execute("UPDATE statekeeper_revision SET revision = $1 WHERE id = 1", top)
                        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(top))
                except BaseException:
                    await _rollback(tx)
                    raise
                committing = True
                await tx.commit()
        except ShardsLost as e:
            done(e)
            return
        except BaseException as e:
            if committing:
                # Sent COMMIT, no answer: it may or may not have happened.
                self.drop_shards(group.shards)
                done(OutcomeUnknown(f"{type(e).__name__}: {e}"))
            else:
                done(NotApplied(f"{type(e).__name__}: {e}"))
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        assert isinstance(batch, PgBatch)
        self._apply(batch, top)
        for listener in self.commit_listeners:
            listener(top)
        done(None)

    async def _fence(self, conn: asyncpg.Connection, shards: frozenset[int]) -> None:
        """Inside the group's transaction: every shard must still be held at our generation.
        The UPDATE row-locks the shard rows until COMMIT, so a takeover waits for this commit
        (and then sees it) or came first (and this fails)."""
        if not shards:
            return
        held = {s: self.owned[s] for s in shards if s in self.owned}  # before any await
        if len(held) != len(shards):
            raise ShardsLost(frozenset(shards) - frozenset(held))
        order = sorted(held)
        generations = [held[s] for s in order]
        status = await conn.execute(
            "UPDATE statekeeper_shards SET generation = generation WHERE owner = $1 AND "
            "(shard, generation) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))",
            self.server_id,
            order,
            generations,
        )
        if int(status.rsplit(" ", 1)[1]) != len(held):
            rows = await conn.fetch(
                "SELECT shard, generation FROM statekeeper_shards WHERE shard = ANY($1::int[]) AND owner = $2",
                order,
                self.server_id,
            )
            still = {int(r[0]) for r in rows if held.get(int(r[0])) == int(r[1])}
            raise ShardsLost(frozenset(held) - still)

    async def _write_rows(self, conn: asyncpg.Connection, batch: PgBatch) -> None:
        puts: tuple[list[int], list[int], list[bytes], list[bytes]] = ([], [], [], [])
        dels: tuple[list[int], list[int], list[bytes]] = ([], [], [])
        for (ks, shard, key), value in batch.ops.items():
            if value is None:
                dels[0].append(KS[ks])
                dels[1].append(shard)
                dels[2].append(key)
            else:
                puts[0].append(KS[ks])
                puts[1].append(shard)
                puts[2].append(key)
                puts[3].append(value)
        if dels[0]:
            await conn.execute(
                "DELETE FROM statekeeper_kv WHERE (ks, shard, key) IN "
                "(SELECT * FROM unnest($1::smallint[], $2::int[], $3::bytea[]))",
                *dels,
            )
        if puts[0]:
            await conn.execute(
                "INSERT INTO statekeeper_kv (ks, shard, key, value) "
                "SELECT * FROM unnest($1::smallint[], $2::int[], $3::bytea[], $4::bytea[]) "
                "ON CONFLICT (ks, shard, key) DO UPDATE SET value = EXCLUDED.value",
                *puts,
            )
        for ks, start, end in batch.ranges:
            await conn.execute(
                "DELETE FROM statekeeper_kv WHERE ks = $1 AND key >= $2 AND key < $3", KS[ks], start, end
            )

    # -- reads --------------------------------------------------------------------------------

    def durable(self) -> PgView:
        return self._view

    def publish_durable(self) -> None:
        """Committed rows are what every reader sees: nothing to publish."""

    def checkpoint(self, path: str) -> int:
        raise BackupNotSupported(
            "backups of a cluster store are PostgreSQL's own (pg_dump, pg_basebackup, "
            "point-in-time recovery): see docs/operations.md"
        )

    def sync_wal(self) -> None:
        """PostgreSQL's COMMIT is durable: nothing to sync."""


async def _rollback(tx: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is gone: rolled back with it
        await tx.rollback()


def _safe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, _, rest = dsn.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
