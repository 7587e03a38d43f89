#!/usr/bin/env python3
"""Disk, memory and file-descriptor figures for sizing a statekeeper machine (docs/operations.md,
"Sizing"). Starts a real server (its own process, fsync on) in a temporary folder, then in steps:
N roots of 10 nodes each, then N transitions with a request_id each, then N without; after each
step it reports the data folder's size (after a clean restart, so the WAL is flushed into SST
files), the server's resident memory and its open file descriptors.

    .venv/bin/python deploy/measure_sizing.py [--trees 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekeeper as sk
from tests.support import ServerProcess

TYPE = sk.MachineType(
    name="box",
    version=1,
    states=["a", "b"],
    initial_state="a",
    transitions=[sk.Transition("to_a", ["a", "b"], "a"), sk.Transition("to_b", ["a", "b"], "b")],
)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def process_figures(pid: int) -> tuple[int, int]:
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def fill(address: str, trees: int) -> None:
    async with await sk.Client.connect(address) as c:
        await c.register_machine_type(TYPE)
        for start in range(0, trees, 100):
            batch = sk.Batch()
            for t in range(start, min(trees, start + 100)):
                batch.create_root("box", f"t{t}", b'{"n": 0}', content_type="application/json")
                for i in range(9):
                    batch.add_child(f"t{t}", "box", f"c{i}", b'{"n": 0}')
            await c.execute(batch)


async def transitions(address: str, trees: int, request_ids: bool) -> None:
    async with await sk.Client.connect(address) as c:
        sem = asyncio.Semaphore(64)

        async def one(t: int) -> None:
            async with sem:
                rid = f"r-{t}-{os.urandom(4).hex()}" if request_ids else ""
                await c.transition(f"t{t}", "to_b", b'{"n": 1}', request_id=rid)

        await asyncio.gather(*(one(t) for t in range(trees)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", type=int, default=2000)
    args = parser.parse_args()
    n = args.trees
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data", "--event-compaction-interval-s", "3600").start()
        rows = []

        def measure(step: str, count: int, unit: str) -> None:
            rss, fds = process_figures(proc.proc.pid)  # type: ignore[union-attr]
            proc.terminate()
            size = folder_bytes(proc.data_dir)
            proc.start()
            rows.append((step, size, count, unit, rss, fds))

        measure("empty store", 0, "")
        asyncio.run(fill(proc.address, n))
        measure(f"+ {n} trees of 10 nodes (created by batches)", n * 10, "node")
        asyncio.run(transitions(proc.address, n, request_ids=True))
        measure(f"+ {n} transitions with a request_id", n, "transition")
        asyncio.run(transitions(proc.address, n, request_ids=False))
        measure(f"+ {n} transitions without", n, "transition")
        proc.terminate()
    print(f"{'step':48} {'data folder':>12} {'per item':>12} {'resident':>10} {'fds':>5}")
    previous = rows[0][1]
    for step, size, count, unit, rss, fds in rows:
        per = f"{(size - previous) / count:,.0f} B/{unit}" if count else ""
        print(f"{step:48} {size / 1e6:>10.1f} MB {per:>12} {rss / 1e6:>8.0f} MB {fds:>5}")
        previous = size


if __name__ == "__main__":
    main()
