"""Bounded growth through the real server (issue 11, item 7): expired request-id records are
swept within seconds whatever their number, finished tasks are deleted after their retention
(with their TASKS_BY_NODE entries), and destinations a worker stream named are forgotten once
idle. The counts here are small to keep the suite quick; scripts/growth.py measures the large
ones (100k transitions with request ids, 10k completed tasks: disk and RSS back near the start).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import rocksdict

import statekeeper as sk
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.rocksdb import RocksStore
from tests.conftest import ORDER
from tests.support import ServerProcess


def count_keys(data_dir: Path, *keyspaces: Keyspace) -> dict[Keyspace, int]:
    """Keys per keyspace of a store a server holds open (a RocksDB read-only instance: no lock,
    reads what was written up to now, WAL included)."""
    opts = rocksdict.Options(raw_mode=True)
    cfs = {ks.value: rocksdict.Options(raw_mode=True) for ks in keyspaces}
    for attempt in range(20):
        try:
            db = rocksdict.Rdict(
                str(data_dir), opts, column_families=cfs, access_type=rocksdict.AccessType.read_only()
            )
            break
        except Exception as e:
            # The server compacts while we open: a file the manifest named may be gone by the
            # time the read-only instance looks at it. Open again (a newer manifest).
            if "No such file or directory" not in str(e) or attempt == 19:
                raise
            time.sleep(0.05)
    try:
        out = {}
        for ks in keyspaces:
            cf = db.get_column_family(ks.value)
            it, n = cf.iter(), 0
            it.seek_to_first()
            while it.valid():
                n += 1
                it.next()
            del it
            out[ks] = n
            cf.close()
        return out
    finally:
        db.close()


def eventually(check: Callable[[], None], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, pytest.fail.Exception):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_expired_request_ids_are_swept_within_seconds_however_many(tmp_path: Path) -> None:
    """Regression: request-id records were swept at most 10,000 per minute (in one blocking
    pass) while ordinary traffic writes more. Now every expired record goes within seconds, a
    chunk at a time."""
    data = tmp_path / "data"
    proc = ServerProcess(data, "--request-ttl-s", "1").start()
    with sk.SyncClient.connect(proc.address) as c:
        c.register_machine_type(ORDER)
        c.create_root("order", "a")
        for i in range(200):
            c.transition("a", "touch", request_id=f"t-{i}")
    assert proc.terminate() == 0
    # More expired records than the old sweep removed per minute, in the server's own format
    # (as if written by a long burst of traffic).
    store = RocksStore(data)
    try:
        expired = int(time.time() * 1000) - 1_000
        for start in range(0, 25_000, 5_000):
            batch = store.new_batch()
            for i in range(start, start + 5_000):
                rid = f"burst-{i}"
                batch.put(Keyspace.REQUESTS, rid.encode(), codec.encode_request(b"fp", b"", expired, 1))
                batch.put(Keyspace.REQUEST_EXPIRY, keys.expiry_key(expired, rid), b"")
            store.write(batch, sync=True)
    finally:
        store.close()
    proc.start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.transition("a", "touch", request_id="fresh")  # kept for its TTL, then swept too

            def swept() -> None:
                left = count_keys(data, Keyspace.REQUESTS, Keyspace.REQUEST_EXPIRY)
                assert left == {Keyspace.REQUESTS: 0, Keyspace.REQUEST_EXPIRY: 0}, left

            eventually(swept)
            # an expired id is free again: the same id with other content applies anew
            assert c.transition("a", "touch", b"new", request_id="t-0").node.data == b"new"
    finally:
        proc.terminate()


def test_finished_tasks_are_deleted_after_their_retention(tmp_path: Path) -> None:
    """Regression: completed, stale and discarded tasks were kept for ever. With
    --task-retention-s they are deleted (record and TASKS_BY_NODE entry) once that long
    finished; pending and dead-lettered ones stay."""
    data = tmp_path / "data"
    proc = ServerProcess(data, "--task-retention-s", "1", "--task-max-attempts", "1").start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.register_machine_type(ORDER)
            for i in range(12):
                c.create_root("order", f"o{i}")
                c.transition(f"o{i}", "pay")  # emits an outbound "charge" task to "payments"
            c.transition("o10", "cancel")  # its task goes stale when leased
            ids = {t.ref.root_id: t.id for t in c.list_tasks(destination="payments")}
            assert len(ids) == 12

        async def work() -> None:
            async with await sk.Client.connect(proc.address) as c:
                seen = 0
                async for leased in c.lease_tasks(["payments"], max_in_flight=12):
                    root = leased.task.ref.root_id
                    if root in ("o8", "o9"):
                        await c.fail_task(leased, "no", permanent=True)  # dead-lettered
                    elif root != "o10":
                        await c.complete_task(leased)
                    seen += 1
                    if seen == 11:  # o10's task is dropped as stale, not handed out
                        return

        asyncio.run(work())
        with sk.SyncClient.connect(proc.address) as c:
            c.discard_dead_letter(ids["o9"])

            def finished_gone() -> None:
                for root in ids:
                    if root == "o8":
                        continue
                    with pytest.raises(sk.NotFoundError):
                        c.get_task(ids[root])
                    assert c.list_tasks(root) == []

            eventually(finished_gone)
            assert c.get_task(ids["o8"]).status == "dead_letter"  # needs an operator: kept
            assert [t.id for t in c.list_tasks("o8")] == [ids["o8"]]
            left = count_keys(data, Keyspace.TASKS, Keyspace.TASKS_BY_NODE, Keyspace.TASKS_FINISHED)
            assert left == {Keyspace.TASKS: 1, Keyspace.TASKS_BY_NODE: 1, Keyspace.TASKS_FINISHED: 0}
    finally:
        proc.terminate()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_destinations_named_by_worker_streams_are_forgotten_when_idle(tmp_path: Path) -> None:
    """Regression: the server kept in memory the state of every destination name a LeaseTasks
    stream ever named. 60,000 names later its resident memory grew by tens of MB; now the
    state of an idle destination is dropped when its last stream ends."""
    proc = ServerProcess(tmp_path / "data").start()
    try:

        async def streams(first: int, count: int) -> None:
            async with await sk.Client.connect(proc.address) as c:
                for n in range(first, first + count, 100):
                    it = c.lease_tasks([f"d{n + i}" for i in range(100)])
                    # the stream is open once the server answers a call after it
                    waiting = asyncio.ensure_future(it.__anext__())
                    await c.list_machine_types()
                    waiting.cancel()
                    await asyncio.gather(waiting, return_exceptions=True)
                    await it.aclose()  # type: ignore[attr-defined]

        assert proc.proc is not None
        asyncio.run(streams(0, 10_000))  # warm up: grpc, allocator arenas
        time.sleep(0.5)
        before = _rss_kb(proc.proc.pid)
        asyncio.run(streams(10_000, 60_000))
        time.sleep(0.5)
        grown = _rss_kb(proc.proc.pid) - before
        assert grown < 15_000, f"resident memory grew by {grown} kB"
    finally:
        proc.terminate()
