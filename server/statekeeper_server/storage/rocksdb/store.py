"""The Store on RocksDB through rocksdict, in raw mode: bytes in, bytes out, one column family
per keyspace, and a format-version key checked on open.

Memory and WAL are bounded for the store as a whole, not per column family (docs/operations.md,
"Memory"): one write-buffer budget shared by every family's memtables, one block cache shared
by every family (index and filter blocks charged to it), and a cap on the total WAL size, past
which RocksDB flushes the families that keep the oldest WAL file alive (without it, a rarely
written family kept every WAL file since its last write: gigabytes to replay on a restart).
Families read by key get a Bloom filter, so a miss (a new request_id, a node that does not
exist) costs no disk read.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from statekeeper_server.storage import keys
from statekeeper_server.storage.base import GroupWrite, Keyspace, NotCached, StoreError, WriteBatch

# Bump when the on-disk layout changes incompatibly; an older server refuses a newer store.
# 2: events may be stored in the API's wire form (the app's event codec). A version-1 store
#    needs no conversion (its msgpack events stay readable): it is marked 2 when opened.
FORMAT_VERSION = 2

log = logging.getLogger("statekeeper.store")


def _os_error(e: Exception) -> Exception:
    """RocksDB reports I/O errors as text: a full disk becomes OSError(ENOSPC), so the
    committer can say so plainly."""
    text = str(e)
    if "No space left on device" in text:
        return OSError(errno.ENOSPC, text)
    return e


class RocksWriteBatch:
    __slots__ = ("_batch", "_count", "_handles")

    def __init__(self, handles: dict[Keyspace, rocksdict.ColumnFamily]) -> None:
        self._batch = rocksdict.WriteBatch(raw_mode=True)
        self._handles = handles
        self._count = 0

    def set_shard(self, shard: int) -> None:
        """One store holds one shard: nothing to do."""

    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None:
        self._batch.put(key, value, self._handles[keyspace])
        self._count += 1

    def delete(self, keyspace: Keyspace, key: bytes) -> None:
        self._batch.delete(key, self._handles[keyspace])
        self._count += 1

    def write_all(self, mutations: list[tuple[Keyspace, bytes, bytes | None]]) -> None:
        batch, handles = self._batch, self._handles
        put, delete = batch.put, batch.delete
        for keyspace, key, value in mutations:
            if value is None:
                delete(key, handles[keyspace])
            else:
                put(key, value, handles[keyspace])
        self._count += len(mutations)

    def delete_range(self, keyspace: Keyspace, start: bytes, end: bytes) -> None:
        self._batch.delete_range(start, end, self._handles[keyspace])
        self._count += 1

    def __len__(self) -> int:
        return self._count


MiB = 1 << 20


@dataclass(frozen=True)
class Tuning:
    """Sizes of the store's memory and WAL; the defaults are documented in docs/operations.md."""

    write_buffer_budget: int = 128 * MiB  # every family's memtables together
    write_buffer_size: int = 32 * MiB  # one memtable (a family has at most 2)
    block_cache: int = 64 * MiB  # data, index and filter blocks of every family
    max_total_wal: int = 256 * MiB
    bloom_bits_per_key: int = 10  # about 1 % false positives


# Families read by key (get / get_many): a whole-key Bloom filter saves the disk read of a miss.
# The others are only scanned by range, where such a filter does not help.
POINT_LOOKUP = frozenset(
    {
        Keyspace.META,
        Keyspace.TYPES,
        Keyspace.NODES,
        Keyspace.TASKS,
        Keyspace.REQUESTS,
        Keyspace.TIMERS,
        Keyspace.DEAD_LETTERS,
        Keyspace.CONSUMERS,
        Keyspace.RUNS,
        Keyspace.SAVEPOINTS,
        Keyspace.TREE_SNAPSHOTS,
        Keyspace.RUN_ENTITIES,
        Keyspace.SAVEPOINT_PARTS,
    }
)


def _options(tuning: Tuning) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_max_background_jobs(2)
    opts.set_bytes_per_sync(1 << 20)
    opts.set_db_write_buffer_size(tuning.write_buffer_budget)
    opts.set_max_total_wal_size(tuning.max_total_wal)
    return opts


def _family_options(keyspace: Keyspace, tuning: Tuning, cache: rocksdict.Cache) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.set_write_buffer_size(tuning.write_buffer_size)
    opts.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    if keyspace in POINT_LOOKUP:
        table.set_bloom_filter(tuning.bloom_bits_per_key, False)
    opts.set_block_based_table_factory(table)
    return opts


class SnapshotView:
    """A durable view: a RocksDB snapshot per column family (point reads), all taken at the same
    moment (on the event loop, between two writes), and the same moment for scans.

    Scans cannot go through the snapshots: rocksdict 0.3.29's Snapshot.iter() builds the
    iterator's read options anew, without the snapshot, so a scan through it read the live store,
    groups still being synced among them. A RocksDB iterator reads the store as it was when it
    was created instead. Until the store's next write, the live store is the view: each scan
    makes a fresh iterator. Just before that write the store freezes the view: one iterator per
    family, made then, serves its scans from then on (they run on the event loop, each to its end
    without an await). So a view pins memtables and files only once something was written after
    it, and an idle server's newest view pins nothing."""

    __slots__ = ("_frozen", "_live", "_snaps")

    def __init__(
        self, snaps: dict[Keyspace, rocksdict.Snapshot], live: dict[Keyspace, rocksdict.Rdict]
    ) -> None:
        self._snaps = snaps
        self._live: dict[Keyspace, rocksdict.Rdict] | None = live
        self._frozen: dict[Keyspace, rocksdict.RdictIter] = {}

    def freeze(self) -> None:
        """The store is about to write: scans read iterators made now from here on."""
        live = self._live
        if live is not None:
            self._frozen = {ks: cf.iter() for ks, cf in live.items()}
            self._live = None

    def _iterator(self, keyspace: Keyspace) -> rocksdict.RdictIter:
        live = self._live
        return live[keyspace].iter() if live is not None else self._frozen[keyspace]

    def get_now(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        try:
            value: bytes = self._snaps[keyspace][key]
        except Exception:  # rocksdict raises a bare Exception("key not found") for a miss
            return None
        return value

    async def get(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        return self.get_now(keyspace, key)

    async def get_many(self, keyspace: Keyspace, keys_: list[bytes]) -> list[bytes | None]:
        get = self.get_now
        return [get(keyspace, k) for k in keys_]

    def scan_now(
        self,
        keyspace: Keyspace,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        limit: int,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        live = self._live
        if live is not None and not reverse:
            # RocksDB itself stops at the bound (and leaves out every file beyond it), and
            # rocksdict yields the pairs: one call per key instead of four.
            options = rocksdict.ReadOptions()
            if end is not None:
                options.set_iterate_upper_bound(end)
            pairs: Iterator[tuple[bytes, bytes]] = live[keyspace].items(from_key=start, read_opt=options)  # type: ignore[assignment]  # rocksdict's stub types it as RdictItems
            return list(itertools.islice(pairs, limit))
        it = self._iterator(keyspace)
        if reverse:
            return list(itertools.islice(_iterate(it, start, end, reverse), limit))
        # Forward (every event replay): the loop of _iterate without a generator's resumptions.
        out: list[tuple[bytes, bytes]] = []
        it.seek(start)
        valid, key, value, step = it.valid, it.key, it.value, it.next
        while valid() and len(out) < limit:
            k = key()
            if end is not None and k >= end:
                break
            out.append((k, value()))
            step()
        return out

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
        return self.scan_now(keyspace, start, end, limit=limit, reverse=reverse)

    async def seek(self, keyspace: Keyspace, key: bytes) -> tuple[bytes, bytes] | None:
        it = self._iterator(keyspace)
        it.seek(key)
        return (it.key(), it.value()) if it.valid() else None


def _iterate(
    it: rocksdict.RdictIter, start: bytes, end: bytes | None, reverse: bool
) -> Iterator[tuple[bytes, bytes]]:
    if reverse:
        if end is None:
            it.seek_to_last()
        else:
            it.seek_for_prev(end)
            if it.valid() and it.key() >= end:
                it.prev()
        while it.valid():
            k = it.key()
            if k < start:
                return
            yield k, it.value()
            it.prev()
    else:
        it.seek(start)
        while it.valid():
            k = it.key()
            if end is not None and k >= end:
                return
            yield k, it.value()
            it.next()


class RocksStore:
    """Opens (or creates) a store folder. Only one process may hold it open at a time."""

    pipelined = True  # a written group is in the memtable: the next one may build on it
    fail_stop = True  # a failed write or sync leaves the local store unknown
    build_shard = 0
    build_token: object = None

    def __init__(self, path: str | os.PathLike[str], tuning: Tuning | None = None) -> None:
        self.path = Path(path)
        self.tuning = tuning = tuning or Tuning()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the data folder {self.path}: {e.strerror}") from e
        self._cache = rocksdict.Cache(tuning.block_cache)
        column_families = {ks.value: _family_options(ks, tuning, self._cache) for ks in Keyspace}
        # Held by a checkpoint running on a thread: close() waits for it.
        self._checkpointing = threading.Lock()
        try:
            self._db: rocksdict.Rdict | None = rocksdict.Rdict(
                str(self.path), _options(tuning), column_families=column_families
            )
        except Exception as e:
            text = str(e)
            if "lock" in text.lower() and ("unavailable" in text.lower() or "temporarily" in text.lower()):
                raise StoreError(
                    f"the data folder {self.path} is in use by another statekeeper server "
                    "(RocksDB lock held); stop that server or choose another --data-dir"
                ) from e
            if "permission" in text.lower():
                raise StoreError(f"no permission to open the data folder {self.path}: {text}") from e
            raise StoreError(f"cannot open the store in {self.path}: {text}") from e
        db = self._db
        assert db is not None
        self._cfs = {ks: db.get_column_family(ks.value) for ks in Keyspace}
        self._handles = {ks: db.get_column_family_handle(ks.value) for ks in Keyspace}
        # The WAL-sync thread: one, fed by a SimpleQueue (a pool's futures and work items cost
        # more than the hand-off itself, once per commit group).
        self._sync_jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._syncer = threading.Thread(target=self._run_syncs, name="wal-sync", daemon=True)
        self._syncer.start()
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._nosync = rocksdict.WriteOptions()
        self._view = SnapshotView({}, {})  # no reader before the first one below
        self._check_format()
        # What recovery replayed from the WAL may never have been synced (a process that died
        # between write and sync): make it durable before anyone reads it.
        db.flush_wal(True)
        self._view = self._take_snapshots()

    def _check_format(self) -> None:
        raw = self.get(Keyspace.META, keys.META_FORMAT_VERSION)
        if raw is None:
            if self.get(Keyspace.META, keys.META_REVISION) is not None:
                self._close()
                raise StoreError(
                    f"the store in {self.path} has data but no format version; it is not a statekeeper store"
                )
            batch = self.new_batch()
            batch.put(Keyspace.META, keys.META_FORMAT_VERSION, keys.u64(FORMAT_VERSION))
            self.write(batch, sync=True)
            return
        found = keys.read_u64(raw)
        if found > FORMAT_VERSION:
            self._close()
            raise StoreError(
                f"the store in {self.path} has format version {found}, newer than this server's {FORMAT_VERSION}; "
                "upgrade statekeeper to open it"
            )
        if found < FORMAT_VERSION:
            # Every older format is still read as it is; marking the store stops older
            # servers from opening it once newer records may be in it.
            batch = self.new_batch()
            batch.put(Keyspace.META, keys.META_FORMAT_VERSION, keys.u64(FORMAT_VERSION))
            self.write(batch, sync=True)
            log.info("store format %d upgraded to %d in %s", found, FORMAT_VERSION, self.path)

    def get(self, keyspace: Keyspace, key: bytes) -> bytes | None:
        value: bytes | None = self._cfs[keyspace].get(key)
        return value

    def get_many(self, keyspace: Keyspace, keys_: list[bytes]) -> list[bytes | None]:
        values: list[bytes | None] = self._cfs[keyspace].get(keys_)  # type: ignore[arg-type,assignment]  # a list: RocksDB's MultiGet
        return values

    def scan(
        self, keyspace: Keyspace, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return _iterate(self._cfs[keyspace].iter(), start, end, reverse)

    def seek(self, keyspace: Keyspace, key: bytes) -> tuple[bytes, bytes] | None:
        it = self._cfs[keyspace].iter()
        it.seek(key)
        return (it.key(), it.value()) if it.valid() else None

    def _take_snapshots(self) -> SnapshotView:
        return SnapshotView({ks: cf.snapshot() for ks, cf in self._cfs.items()}, self._cfs)

    def durable(self) -> SnapshotView:
        return self._view

    def publish_durable(self) -> None:
        if self._db is not None:
            self._view = self._take_snapshots()

    def new_batch(self) -> RocksWriteBatch:
        return RocksWriteBatch(self._handles)

    def write(self, batch: WriteBatch, *, sync: bool) -> None:
        assert isinstance(batch, RocksWriteBatch)
        if self._db is None:
            raise StoreError("the store is closed")
        self._view.freeze()  # what it shows is about to change
        try:
            self._db.write(batch._batch, self._sync if sync else self._nosync)
        except Exception as e:
            error = _os_error(e)
            if error is e:
                raise
            raise error from None

    def write_group(self, group: GroupWrite, done: Callable[[BaseException | None], None]) -> None:
        """Write the group unsynced (brief, on the loop), fsync the WAL on the sync thread (it
        releases the GIL, so the loop keeps serving), then call done on the loop."""
        self.write(group.batch, sync=False)
        loop = asyncio.get_running_loop()

        def sync() -> None:
            error: BaseException | None = None
            try:
                group.before_sync()
                self.sync_wal()
            except BaseException as e:
                error = e
            loop.call_soon_threadsafe(done, error)

        self._sync_jobs.put(sync)

    def _run_syncs(self) -> None:
        jobs = self._sync_jobs
        while (job := jobs.get()) is not None:
            job()

    async def fault_in(self, missing: NotCached) -> None:
        raise AssertionError("the embedded store holds everything: nothing is ever missing")

    def sync_wal(self) -> None:
        # FlushWAL(sync=true): fsyncs the WAL; rocksdict releases the GIL during it (measured).
        db = self._db
        if db is None:
            raise StoreError("the store is closed")
        try:
            db.flush_wal(True)
        except Exception as e:
            error = _os_error(e)
            if error is e:
                raise
            raise error from None

    def checkpoint(self, path: str) -> int:
        """A consistent copy of the store in a new folder; returns the revision it holds.

        Runs on a thread (the loop goes on writing): the copy holds every group written when
        RocksDB took it, possibly one whose fsync is still under way, so the revision is read
        from the copy itself, not from the live store."""
        with self._checkpointing:
            if self._db is None:
                raise StoreError("the store is closed")
            # A checkpoint flushes the memtables first, holding the GIL all along (rocksdict
            # 0.3.29: 130 ms of a stopped loop for 75 MB of memtables); flushing each family
            # first releases it, and what is left to the checkpoint is the little written since.
            for family in list(self._cfs.values()):
                family.flush(True)
            rocksdict.Checkpoint(self._db).create_checkpoint(path)
        copy = rocksdict.Rdict(
            path,
            rocksdict.Options(raw_mode=True),
            column_families={Keyspace.META.value: rocksdict.Options(raw_mode=True)},
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            raw = copy.get_column_family(Keyspace.META.value).get(keys.META_REVISION)
        finally:
            copy.close()
        return keys.read_u64(raw) if raw is not None else 0

    def reclaim(self, keyspace: Keyspace, start: bytes | None, end: bytes | None) -> None:
        # The deleted records also sit in WAL files, which RocksDB deletes only once every
        # column family with data in them has flushed its memtable: flush them all (cheap when
        # little is left, and it frees the memtables' memory), then compact the range (drops
        # deleted keys and range tombstones). rocksdict releases the GIL meanwhile.
        for family in list(self._cfs.values()):
            family.flush(True)
        cf = self._cfs.get(keyspace)
        if cf is not None:
            cf.compact_range(start, end)

    def close(self) -> None:
        with self._checkpointing:
            self._close()

    def _close(self) -> None:
        if self._db is not None:
            # Snapshots and column family objects hold the database open too (and the LOCK file).
            self._view = SnapshotView({}, {})
            try:
                for cf in getattr(self, "_cfs", {}).values():
                    cf.close()
                self._db.close()
            except Exception as e:
                # After a failed write (e.g. the disk is full) RocksDB refuses to flush on
                # close; everything synced is in the WAL and recovered at the next open.
                log.warning("closing the store: %s (synced writes are safe in the WAL)", e)
            # Clear (not replace) the dicts: write batches share the handles dict.
            self._cfs.clear()
            self._handles.clear()
            self._db = None
        if hasattr(self, "_syncer") and self._syncer.is_alive():
            self._sync_jobs.put(None)
            self._syncer.join()
