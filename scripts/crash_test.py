#!/usr/bin/env python3
"""Crash test: drive a real server under load and SIGKILL it at random moments, many times.

    .venv/bin/python scripts/crash_test.py                 # full run: 20 kill cycles
    .venv/bin/python scripts/crash_test.py --cycles 3 --seconds 0.4   # the short form (tests)

Load, all concurrent: transitions with request ids (one root per worker, so the expected count
is known), atomic batches (a root with children, all transitioned), a durable consumer that
acknowledges what it processed, and timers (a transition whose timer applies another one).
After every restart it verifies:
  - every acknowledged transition is present exactly once (retrying the one in flight at the
    kill with its request_id applies it at most once);
  - no batch is half applied (its root and all its children exist, transitioned, or none does);
  - revisions are gap-free (every revision up to the top has its events);
  - the durable consumer resumes without losing an event;
  - timers that were due fire after the restart.
It prints the counts it checked and exits non-zero on the first violation.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekeeper as sk
from tests.support import ServerProcess

COUNTER = sk.MachineType(
    "counter", 1, ["on"], "on", [sk.Transition("bump", ["on"], "on")], description="crash-test counter"
)
GROUP = sk.MachineType("group", 1, ["new", "done"], "new", [sk.Transition("finish", ["new"], "done")])
ALARM = sk.MachineType(
    "alarm",
    1,
    ["idle", "armed", "rang"],
    "idle",
    [
        sk.Transition("arm", ["idle"], "armed", tasks=[sk.Timer("ring", "ring", delay_ms=150)]),
        sk.Transition("ring", ["armed"], "rang"),
    ],
)
CHILDREN = 5


class Violation(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


class Load:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.acked = {f"c{w}": 0 for w in range(workers)}  # root -> last acknowledged count
        self.batches_acked: set[str] = set()
        self.batches_tried: set[str] = set()
        self.batches_checked: set[str] = set()  # distinct batches verified present and whole
        self.alarms_armed: set[str] = set()  # acknowledged arm transitions
        self.consumed: set[tuple[int, int]] = set()
        self.batch_seq = 0
        self.alarm_seq = 0

    async def transitions(self, c: sk.Client, w: int, stop: asyncio.Event) -> None:
        root = f"c{w}"
        while not stop.is_set():
            n = self.acked[root] + 1
            await c.transition(root, "bump", str(n), request_id=f"{root}-{n}")
            self.acked[root] = n

    async def batches(self, c: sk.Client, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.batch_seq += 1
            root = f"g{self.batch_seq}"
            batch = sk.Batch().create_root("group", root)
            for i in range(CHILDREN):
                batch.add_child(root, "group", f"k{i}").transition(
                    sk.Ref(root).child("group", f"k{i}"), "finish"
                )
            batch.transition(root, "finish")
            self.batches_tried.add(root)
            await c.execute(batch, request_id=f"batch-{root}")
            self.batches_acked.add(root)

    async def alarms(self, c: sk.Client, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.alarm_seq += 1
            root = f"a{self.alarm_seq}"
            await c.create_root("alarm", root, request_id=f"create-{root}")
            await c.transition(root, "arm", request_id=f"arm-{root}")
            self.alarms_armed.add(root)
            await asyncio.sleep(0.02)

    async def consume(self, c: sk.Client, stop: asyncio.Event) -> None:
        async for d in c.subscribe("crash", reconnect=False):
            self.consumed.add((d.event.revision, d.event.index))
            await c.ack("crash", d)
            if stop.is_set():
                return


async def drive(address: str, load: Load, seconds: float, server: ServerProcess) -> None:
    """Run the load until the server is killed at a random moment within `seconds`."""
    stop = asyncio.Event()
    async with await sk.Client.connect(address, timeout=5) as c:
        jobs = [asyncio.ensure_future(load.transitions(c, w, stop)) for w in range(load.workers)]
        jobs += [asyncio.ensure_future(load.batches(c, stop)), asyncio.ensure_future(load.alarms(c, stop))]
        jobs.append(asyncio.ensure_future(load.consume(c, stop)))
        await asyncio.sleep(random.uniform(seconds * 0.3, seconds))
        server.kill()  # SIGKILL, mid-load
        stop.set()
        results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(
            r, (sk.StatekeeperError, ConnectionError, OSError)
        ):
            raise r


async def verify(address: str, load: Load, counts: dict[str, int]) -> None:
    async with await sk.Client.connect(address, timeout=10) as c:
        # 1. acknowledged transitions: present, exactly once
        for root, n in load.acked.items():
            node = await c.get_node(root)
            check(
                n <= node.transition_count <= n + 1,
                f"{root}: acknowledged {n}, found {node.transition_count}",
            )
            # resolve the one in flight at the kill: retrying applies it at most once
            again = await c.transition(root, "bump", str(n + 1), request_id=f"{root}-{n + 1}")
            check(
                again.node.transition_count == n + 1,
                f"{root}: retry of #{n + 1} gave {again.node.transition_count}",
            )
            check((await c.get_node(root)).data == str(n + 1).encode(), f"{root}: data mismatch")
            load.acked[root] = n + 1
            counts["transitions"] += n + 1 - counts.get(f"seen-{root}", 0)
            counts[f"seen-{root}"] = n + 1
        # 2. batches: all or nothing
        for root in sorted(load.batches_tried):
            try:
                nodes = await c.walk(root)
            except sk.NotFoundError:
                check(root not in load.batches_acked, f"acknowledged batch {root} is missing")
                continue
            check(len(nodes) == 1 + CHILDREN, f"batch {root} half applied: {len(nodes)} nodes")
            check(all(n.state == "done" for n in nodes), f"batch {root} half applied: states differ")
            counts["batches"] += 1
        load.batches_tried = set(load.batches_acked) | {
            r for r in load.batches_tried if r in load.batches_acked
        }
        # 3. revisions gap-free
        top = 0
        revisions: set[int] = set()
        async for e in c.watch(start_revision=1, progress=True, reconnect=False):
            if e.kind == "progress":
                if e.revision and e.revision >= max(revisions, default=0):
                    top = e.revision  # everything up to the durable top was delivered
                    break
                continue
            revisions.add(e.revision)
        check(top > 0 and revisions == set(range(1, top + 1)), f"revisions have gaps below {top}")
        counts["revisions"] = top
        # 4. the durable consumer lost nothing: everything up to its acked position was received
        info = await c.get_consumer("crash")
        lost = [r for r in range(1, info.acked_revision + 1) if not any(p[0] == r for p in load.consumed)]
        check(not lost, f"consumer acknowledged past revisions it never received: {lost[:5]}")
        counts["consumed"] = len(load.consumed)
        # 5. due timers fire after the restart
        deadline = time.monotonic() + 10
        pending = set(load.alarms_armed)
        while pending and time.monotonic() < deadline:
            for root in list(pending):
                if (await c.get_node(root)).state == "rang":
                    pending.discard(root)
            await asyncio.sleep(0.1)
        check(not pending, f"timers did not fire after restart: {sorted(pending)[:5]}")
        counts["timers"] += len(load.alarms_armed)
        load.alarms_armed.clear()


async def setup(address: str, workers: int) -> None:
    async with await sk.Client.connect(address) as c:
        for mt in (COUNTER, GROUP, ALARM):
            await c.register_machine_type(mt)
        batch = sk.Batch()
        for w in range(workers):
            batch.create_root("counter", f"c{w}")
        await c.execute(batch)
        await c.create_consumer("crash", start="earliest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=20, help="kill/restart cycles (default 20)")
    parser.add_argument("--seconds", type=float, default=1.5, help="longest load phase per cycle")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="keep the store here (default: a temp folder)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(data).start()
        counts = {"kills": 0, "transitions": 0, "batches": 0, "revisions": 0, "consumed": 0, "timers": 0}
        load = Load(args.workers)
        started = time.monotonic()
        try:
            asyncio.run(setup(server.address, args.workers))
            for _ in range(args.cycles):
                asyncio.run(drive(server.address, load, args.seconds, server))
                counts["kills"] += 1
                server.start()
                asyncio.run(verify(server.address, load, counts))
        except Violation as v:
            print(f"VIOLATION (seed {seed}): {v}", file=sys.stderr)
            print(server.log()[-2000:], file=sys.stderr)
            return 1
        finally:
            server.kill()
        shown = {k: v for k, v in counts.items() if not k.startswith("seen-")}
        print(
            f"crash test passed in {time.monotonic() - started:.1f}s (seed {seed}): "
            + ", ".join(f"{k}={v}" for k, v in shown.items())
        )
        print(
            f"checked: {shown['kills']} SIGKILLs; {shown['transitions']} acknowledged transitions present exactly once; "
            f"{shown['batches']} batches all-or-nothing; revisions 1..{shown['revisions']} gap-free; "
            f"{shown['consumed']} events consumed without loss; {shown['timers']} timers fired after restarts"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
