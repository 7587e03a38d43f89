"""Durability: acknowledged writes survive a clean restart and a SIGKILL; revisions are gap-free
across restarts; the store refuses a second server and a newer format."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import statekeeper as sk
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess


def _setup(address: str) -> None:
    with sk.SyncClient.connect(address) as c:
        c.register_machine_type(ORDER)
        c.register_machine_type(ITEM)


def test_write_stop_start_read_back(fresh_server: ServerProcess) -> None:
    _setup(fresh_server.address)
    with sk.SyncClient.connect(fresh_server.address) as c:
        root = c.create_root("order", "o1", b"hello", content_type="text/plain")
        c.add_child(root, "item", "i1")
        paid = c.transition(root, "pay")
        before = c.walk(root)
    assert fresh_server.terminate() == 0
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        assert c.walk(root) == before
        assert c.get_machine_type("order") == c.get_machine_type("order", 1)
        assert c.get_machine_type("order").transitions[0].tasks[0].destination == "payments"
        # revisions continue after the last one written before the stop
        assert c.transition(root, "ship").revision == paid.revision + 1
    with sk.SyncClient.connect(fresh_server.address) as c:
        assert c.get_node(root).state == "shipped"


def test_revisions_are_gap_free_and_never_reused_across_restarts(fresh_server: ServerProcess) -> None:
    _setup(fresh_server.address)  # revisions 1 and 2
    revisions = []
    with sk.SyncClient.connect(fresh_server.address) as c:
        revisions.append(c.create_root("order", "g").create_revision)
        revisions += [c.transition("g", "touch").revision for _ in range(3)]
    fresh_server.kill()
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        revisions += [c.transition("g", "touch").revision for _ in range(3)]
        revisions.append(
            c.execute(sk.Batch().add_child("g", "item", "a").add_child("g", "item", "b")).revision
        )
    assert revisions == list(range(3, 3 + len(revisions)))


async def _hammer(address: str, workers: int, acked: dict[str, int], stop: asyncio.Event) -> None:
    async def worker(w: int) -> None:
        root = f"k{w}"
        try:
            async with await sk.Client.connect(address, timeout=5) as c:
                while not stop.is_set():
                    n = acked[root] + 1
                    await c.transition(root, "touch", str(n), request_id=f"{root}-{n}")
                    acked[root] = n
        except (sk.StatekeeperError, ConnectionError, OSError):
            return  # the server was killed

    await asyncio.gather(*(worker(w) for w in range(workers)))


def test_every_acknowledged_transition_survives_kill_9(fresh_server: ServerProcess) -> None:
    _setup(fresh_server.address)
    workers = 16
    with sk.SyncClient.connect(fresh_server.address) as c:
        batch = sk.Batch()
        for w in range(workers):
            batch.create_root("order", f"k{w}")
        c.execute(batch)
    acked = {f"k{w}": 0 for w in range(workers)}

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(_hammer(fresh_server.address, workers, acked, stop))
        await asyncio.sleep(1.0)
        fresh_server.kill()  # SIGKILL mid-load: no shutdown code runs
        stop.set()
        await task

    asyncio.run(run())
    total = sum(acked.values())
    assert total > 50, f"too few transitions acknowledged before the kill ({total}) for the test to mean much"
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        for root, count in acked.items():
            node = c.get_node(root)
            # every acknowledged transition is there; at most the one in flight at the kill more
            assert count <= node.transition_count <= count + 1, (root, count, node.transition_count)
            # retrying the in-flight request applies it at most once
            n = count + 1
            c.transition(root, "touch", str(n), request_id=f"{root}-{n}")
            again = c.transition(root, "touch", str(n), request_id=f"{root}-{n}")
            assert again.node.transition_count == n
            assert c.get_node(root).transition_count == n and c.get_node(root).data == str(n).encode()


def test_second_server_on_same_folder_is_refused_clearly(fresh_server: ServerProcess) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "statekeeper_server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(fresh_server.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "in use by another statekeeper server" in result.stderr
    assert "Traceback" not in result.stderr
    assert fresh_server.health() == 1  # the first server is unharmed


def test_newer_store_format_is_refused(tmp_path: Path) -> None:
    from statekeeper_server.storage import keys
    from statekeeper_server.storage.base import Keyspace
    from statekeeper_server.storage.rocksdb import FORMAT_VERSION, RocksStore

    store = RocksStore(tmp_path / "data")
    batch = store.new_batch()
    batch.put(Keyspace.META, keys.META_FORMAT_VERSION, keys.u64(FORMAT_VERSION + 1))
    store.write(batch, sync=True)
    store.close()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "statekeeper_server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"format version {FORMAT_VERSION + 1}, newer than this server's {FORMAT_VERSION}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_lets_in_flight_calls_finish_and_closes_the_store(fresh_server: ServerProcess) -> None:
    _setup(fresh_server.address)
    with sk.SyncClient.connect(fresh_server.address) as c:
        c.create_root("order", "s")

    async def run() -> list[object]:
        async with await sk.Client.connect(fresh_server.address) as c:
            calls = [
                asyncio.ensure_future(c.transition("s", "touch", request_id=f"s-{i}")) for i in range(200)
            ]
            await asyncio.sleep(0.005)
            assert fresh_server.proc is not None
            fresh_server.proc.terminate()
            return list(await asyncio.gather(*calls, return_exceptions=True))

    outcomes = asyncio.run(run())
    assert fresh_server.proc is not None and fresh_server.proc.wait(20) == 0
    ok = [o for o in outcomes if isinstance(o, sk.TransitionResult)]
    refused = [o for o in outcomes if isinstance(o, sk.StatekeeperError)]
    assert len(ok) + len(refused) == len(outcomes), [
        o for o in outcomes if not isinstance(o, (sk.TransitionResult, sk.StatekeeperError))
    ]
    assert '"stopped; store closed' in fresh_server.log()
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        assert c.get_node("s").transition_count == len(ok)


@pytest.mark.parametrize("fsync", ["true", "false"])
def test_fsync_setting_is_reported(tmp_path: Path, fsync: str) -> None:
    proc = ServerProcess(tmp_path / "d", "--fsync", fsync).start()
    try:
        assert f"fsync {'on' if fsync == 'true' else 'OFF'}" in proc.log()
    finally:
        proc.terminate()
