#!/usr/bin/env python3
"""Growth test: what a burst of traffic leaves behind once its request ids expire and its
finished tasks pass their retention (issue 11, item 7).

    .venv/bin/python scripts/growth.py                       # 100k transitions, 10k tasks
    .venv/bin/python scripts/growth.py --transitions 5000 --tasks 500   # quick

A real server process (RocksDB, fsync on) with short lifetimes (--request-ttl-s,
--task-retention-s, a small event retention so the events of the burst go too). The load, from
this process: transitions with request ids (64 at once), then tasks created in batches and
completed by an SDK Worker (each completion writes a request-id record too). It prints the
server's resident memory and the data folder's size (SST files and WAL separately) at the
start, and at the peak and after expiry of each burst (--rounds), the records left per
keyspace, and the slowest of a probe's cheap calls while the sweeps ran (an event-loop stall
would show). Exits non-zero when records are left, the disk stays above the start
(--tolerance), or resident memory grows from one burst to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekeeper as sk
from statekeeper_server.core.pending import PendingOverlay
from statekeeper_server.core.requests import RequestLog
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.rocksdb import RocksStore
from tests.server.test_growth import count_keys
from tests.support import ServerProcess

ITEM = sk.MachineType(
    "gitem",
    1,
    ["new", "paid", "done"],
    "new",
    [
        sk.Transition("touch", ["new", "paid", "done"], "new"),
        sk.Transition("pay", ["new"], "paid", tasks=[sk.Outbound("charge", "pay-out", b"{}")]),
        sk.Transition("finish", ["paid"], "done"),
    ],
)
KEYSPACES = (
    Keyspace.REQUESTS,
    Keyspace.REQUEST_EXPIRY,
    Keyspace.TASKS,
    Keyspace.TASKS_BY_NODE,
    Keyspace.TASKS_FINISHED,
    Keyspace.OUTBOUND_QUEUE,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def disk_mb(data: Path) -> tuple[float, float]:
    """(SST and other files, WAL) in MB."""
    wal = other = 0
    for f in data.iterdir():
        if f.is_file():
            if f.suffix == ".log" and f.name[0].isdigit():
                wal += f.stat().st_size
            else:
                other += f.stat().st_size
    return other / 2**20, wal / 2**20


def snapshot(proc: ServerProcess) -> dict[str, float]:
    assert proc.proc is not None
    sst, wal = disk_mb(proc.data_dir)
    return {
        "rss_mb": round(rss_mb(proc.proc.pid), 1),
        "disk_mb": round(sst + wal, 1),
        "sst_mb": round(sst, 1),
        "wal_mb": round(wal, 1),
    }


async def transitions(address: str, n: int, roots: int, round_: int) -> None:
    async with await sk.Client.connect(address) as c:
        sem = asyncio.Semaphore(64)
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            async with sem:
                await c.transition(f"g{i % roots}", "touch", request_id=f"burst-{round_}-{i}")
                done += 1

        await asyncio.gather(*(one(i) for i in range(n)))


async def tasks(address: str, n: int, round_: int) -> None:
    async with await sk.Client.connect(address) as c:
        for start in range(0, n, 500):
            batch = sk.Batch()
            for i in range(start, min(n, start + 500)):
                batch.create_root("gitem", f"t{round_}-{i}")
                batch.transition(f"t{round_}-{i}", "pay")
            await c.execute(batch)
        worker = sk.Worker(c, concurrency=64)
        completed = 0
        finished = asyncio.Event()

        @worker.handler("pay-out")
        async def handle(task: sk.LeasedTask) -> str:
            nonlocal completed
            completed += 1
            if completed >= n:
                finished.set()
            return "finish"

        running = asyncio.ensure_future(worker.run())
        await finished.wait()
        await worker.stop()
        await running


async def probe_stalls(address: str, seconds: float) -> float:
    """The longest time a cheap call took while the server swept (an event-loop stall shows)."""
    worst = 0.0
    async with await sk.Client.connect(address) as c:
        await c.list_machine_types()  # connected (not counted)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            await c.list_machine_types()
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.005)
    return worst


async def sweep_stall(n: int) -> tuple[int, float, float]:
    """The request-id sweep alone, in this process over a RocksDB store of n expired records,
    with a ticker measuring how long the event loop is held at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        store = RocksStore(tmp)
        try:
            expired = int(time.time() * 1000) - 1_000
            for first in range(0, n, 10_000):
                batch = store.new_batch()
                for i in range(first, min(n, first + 10_000)):
                    rid = f"burst-{i}"
                    batch.put(
                        Keyspace.REQUESTS,
                        rid.encode(),
                        codec.encode_request(b"f" * 32, b"r" * 64, expired, i),
                    )
                    batch.put(Keyspace.REQUEST_EXPIRY, keys.expiry_key(expired, rid), b"")
                store.write(batch, sync=False)

            async def publish(mutations: object) -> None:
                store.sync_wal()

            log = RequestLog(store, PendingOverlay(), 1_000, publish)
            worst = 0.0
            running = True

            async def ticker() -> None:
                nonlocal worst
                while running:
                    t = time.perf_counter()
                    await asyncio.sleep(0)
                    worst = max(worst, time.perf_counter() - t)

            tick = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            t0 = time.perf_counter()
            swept = await log.sweep()
            elapsed = time.perf_counter() - t0
            running = False
            await tick
            await log.close()
            return swept, elapsed, worst
        finally:
            store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transitions", type=int, default=100_000)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--lifetime-s", type=int, default=20, help="request TTL and task retention (s)")
    ap.add_argument("--rounds", type=int, default=2, help="bursts, one after the other")
    ap.add_argument("--tolerance", type=float, default=1.5, help="allowed end/start ratio of the disk")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(
            Path(tmp) / "data",
            "--request-ttl-s",
            str(args.lifetime_s),
            "--task-retention-s",
            str(args.lifetime_s),
            "--event-retention-revisions",
            "1000",
            "--event-compaction-interval-s",
            "2",
        ).start()
        try:
            with sk.SyncClient.connect(proc.address) as c:
                c.register_machine_type(ITEM)
                roots = 1000
                batch = sk.Batch()
                for i in range(roots):
                    batch.create_root("gitem", f"g{i}")
                c.execute(batch)
            time.sleep(1)
            start = snapshot(proc)
            rounds = []
            for _ in range(args.rounds):
                t0 = time.monotonic()
                asyncio.run(transitions(proc.address, args.transitions, roots, len(rounds)))
                t1 = time.monotonic()
                asyncio.run(tasks(proc.address, args.tasks, len(rounds)))
                t2 = time.monotonic()
                peak = snapshot(proc)
                peak_keys = count_keys(proc.data_dir, *KEYSPACES)
                print(
                    f"round {len(rounds) + 1}: {args.transitions} transitions in {t1 - t0:.1f} s, "
                    f"{args.tasks} tasks in {t2 - t1:.1f} s"
                )
                # Wait out the lifetime, probing the loop while the sweeps run.
                wait = max(0.0, args.lifetime_s - (time.monotonic() - t2)) + args.lifetime_s * 0.2 + 5
                stall = asyncio.run(probe_stalls(proc.address, wait))
                end_keys = count_keys(proc.data_dir, *KEYSPACES)
                idle = asyncio.run(probe_stalls(proc.address, 5.0))  # the same with nothing to sweep
                rounds.append(
                    {
                        "peak": peak,
                        "end": snapshot(proc),
                        "peak_keys": peak_keys,
                        "end_keys": end_keys,
                        "stall": stall,
                        "idle_stall": idle,
                    }
                )
        finally:
            proc.terminate()

    print(f"{'':22} {'RSS MB':>8} {'disk MB':>8} {'SST MB':>8} {'WAL MB':>8}")
    rows = [("start", start)]
    for i, r in enumerate(rounds, 1):
        rows += [(f"round {i}: peak", r["peak"]), (f"round {i}: after expiry", r["end"])]
    for name, snap in rows:
        print(
            f"{name:22} {snap['rss_mb']:8.1f} {snap['disk_mb']:8.1f} {snap['sst_mb']:8.1f} {snap['wal_mb']:8.1f}"
        )
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: records at the peak:", {k.value: v for k, v in r["peak_keys"].items()})
        print(f"round {i}: records after expiry:", {k.value: v for k, v in r["end_keys"].items()})
        print(
            f"round {i}: slowest probe call while sweeping: {r['stall'] * 1000:.1f} ms "
            f"(idle afterwards: {r['idle_stall'] * 1000:.1f} ms)"
        )
    swept, sweep_s, stall_s = asyncio.run(sweep_stall(args.transitions))
    print(
        f"sweeping {swept} expired request ids on the event loop: {sweep_s * 1000:.0f} ms in all, "
        f"longest event-loop stall {stall_s * 1000:.1f} ms"
    )
    if args.json:
        out = {
            "start": start,
            "rounds": rounds,
            "sweep": {
                "records": swept,
                "total_ms": round(sweep_s * 1000),
                "stall_ms": round(stall_s * 1000, 1),
            },
        }
        for r in rounds:
            r["peak_keys"] = {k.value: v for k, v in r["peak_keys"].items()}
            r["end_keys"] = {k.value: v for k, v in r["end_keys"].items()}
            r["stall_ms"] = round(r.pop("stall") * 1000, 1)
            r["idle_stall_ms"] = round(r.pop("idle_stall") * 1000, 1)
        args.json.write_text(json.dumps(out, indent=2))
    last = rounds[-1]["end"]
    ok = all(v == 0 for r in rounds for v in dict(r["end_keys"]).values())
    ok &= last["disk_mb"] <= max(start["disk_mb"] * args.tolerance, start["disk_mb"] + 4)
    # Resident memory: what a burst leaves (the event hub's bounded window of recent events,
    # allocator slack) must not grow with more bursts.
    ok &= len(rounds) < 2 or last["rss_mb"] <= rounds[0]["end"]["rss_mb"] * 1.1
    print("OK" if ok else "GROWTH LEFT BEHIND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
