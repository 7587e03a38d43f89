"""The RocksDB store bounds its memory and WAL as a whole (issue 11, item 9): a shared
write-buffer budget, a total WAL cap, Bloom filters on the families read by key. Read back from
the OPTIONS file RocksDB writes, so what is checked is what RocksDB actually runs with."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.rocksdb import RocksStore
from statekeeper_server.storage.rocksdb.store import POINT_LOOKUP, MiB, Tuning


def _options(path: Path) -> dict[str, dict[str, str]]:
    """The newest OPTIONS file as {section: {option: value}}."""
    latest = max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in latest.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def test_memory_and_the_wal_are_bounded_for_the_whole_store(tmp_path: Path) -> None:
    RocksStore(tmp_path).close()
    options = _options(tmp_path)
    db = options["DBOptions"]
    assert int(db["max_total_wal_size"]) == 256 * MiB  # was 0: 4 x every memtable (~10 GB)
    assert int(db["db_write_buffer_size"]) == 128 * MiB  # was 0: no shared budget
    for ks in Keyspace:
        family = options[f'CFOptions "{ks.value}"']
        assert int(family["write_buffer_size"]) == 32 * MiB, ks
        assert int(family["max_write_buffer_number"]) == 2, ks
        table = options[f'TableOptions/BlockBasedTable "{ks.value}"']
        assert table["cache_index_and_filter_blocks"] == "true", ks
        bloom = table["filter_policy"].startswith("bloomfilter")
        assert bloom == (ks in POINT_LOOKUP), (ks, table["filter_policy"])
    assert {Keyspace.NODES, Keyspace.TASKS, Keyspace.REQUESTS, Keyspace.TYPES, Keyspace.RUNS} <= POINT_LOOKUP


def _wal_bytes(path: Path) -> int:
    total = 0
    for p in path.glob("*.log"):
        if re.fullmatch(r"\d+\.log", p.name):
            with contextlib.suppress(FileNotFoundError):  # deleted in the background meanwhile
                total += p.stat().st_size
    return total


def test_a_rarely_written_family_does_not_keep_the_whole_wal(tmp_path: Path) -> None:
    """One write to a quiet family, then many to a busy one: the busy family's memtable flushes
    again and again, but every WAL file since the quiet write stays needed until the quiet family
    flushes too. The total WAL cap makes RocksDB flush it."""
    tuning = Tuning(write_buffer_size=2 * MiB, max_total_wal=1 * MiB)
    store = RocksStore(tmp_path, tuning)
    try:
        batch = store.new_batch()
        batch.put(Keyspace.TYPES, b"quiet", b"x")
        store.write(batch, sync=True)
        value = b"v" * (64 * 1024)
        for i in range(24 * 16):  # 24 MiB into one family
            batch = store.new_batch()
            batch.put(Keyspace.NODES, i.to_bytes(4, "big"), value)
            store.write(batch, sync=False)
        deadline = time.monotonic() + 10
        while _wal_bytes(tmp_path) > 8 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)  # obsolete WAL files are deleted in the background
        assert _wal_bytes(tmp_path) <= 8 * MiB
        assert store.get(Keyspace.TYPES, b"quiet") == b"x"
    finally:
        store.close()
