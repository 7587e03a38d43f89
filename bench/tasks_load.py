"""Task throughput end to end, through the SDK, against a running server (its own process):

    python -m bench.tasks_load --address HOST:PORT --timers N --outbound N --concurrency C

timers:   N nodes each get a timer with the same deadline (a transition with deadline_from_request,
          applied in ExecuteBatch calls); from the deadline until the last timer has fired and
          applied its transition: timers fired per second.
outbound: N nodes each get an outbound task; an SDK Worker (concurrency C) takes them over a
          lease stream and completes each, applying a transition to its node: outbound tasks
          completed per second, from the worker's start until the last completion.

Prints one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid

import statekeeper as sk

BATCH = 1000


def machine_type(name: str, destination: str) -> sk.MachineType:
    return sk.MachineType(
        name=name,
        version=1,
        states=["new", "waiting", "working", "done"],
        initial_state="new",
        terminal_states=["done"],
        transitions=[
            sk.Transition(
                "wait", ["new"], "waiting", tasks=[sk.Timer("due", "fire", deadline_from_request=True)]
            ),
            sk.Transition("fire", ["waiting"], "done"),
            sk.Transition("dispatch", ["new"], "working", tasks=[sk.Outbound("work", destination, b"x")]),
            sk.Transition("finish", ["working"], "done"),
        ],
    )


async def _create(client: sk.Client, type_name: str, prefix: str, n: int) -> None:
    for start in range(0, n, BATCH):
        batch = sk.Batch()
        for i in range(start, min(n, start + BATCH)):
            batch.create_root(type_name, f"{prefix}{i}")
        await client.execute(batch)


async def _apply(
    client: sk.Client, prefix: str, n: int, transition: str, inputs: list[sk.TaskInput] | None = None
) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, BATCH):
        batch = sk.Batch()
        for i in range(start, min(n, start + BATCH)):
            batch.transition(f"{prefix}{i}", transition, task_inputs=inputs)
        result = await client.execute(batch)
        for r in result.results:
            assert isinstance(r, sk.TransitionResult)
            ids.append(r.tasks[0].id)
    return ids


async def timers(client: sk.Client, type_name: str, n: int) -> dict[str, float]:
    prefix = f"tm-{uuid.uuid4().hex[:8]}-"
    prefix2 = prefix + "b"
    probe = min(n, BATCH)
    await _create(client, type_name, prefix, probe)
    await _create(client, type_name, prefix2, n)
    # Time one batch (its timers are an hour away and not counted), then give every timer the
    # same deadline, after the last batch will have been applied.
    started = time.time()
    far = int((started + 3600) * 1000)
    await _apply(client, prefix, probe, "wait", [sk.TaskInput("due", deadline_ms=far)])
    per_batch = time.time() - started
    deadline_ms = int((time.time() + per_batch * (n / BATCH) * 3 + 1.5) * 1000)
    ids = await _apply(client, prefix2, n, "wait", [sk.TaskInput("due", deadline_ms=deadline_ms)])
    applied_ms = time.time() * 1000
    if applied_ms > deadline_ms:
        raise RuntimeError("creating the timers took longer than planned; the figure would be wrong")
    last = ids[-1]
    for _ in itertools.count():  # the last timer fires last (same deadline, then task id order)
        if (await client.get_task(last)).status != "pending":
            break
        await asyncio.sleep(0.002)
    done_ms = time.time() * 1000
    pending = [t for t in ids[:: max(1, n // 50)] if (await client.get_task(t)).status != "completed"]
    if pending:
        raise RuntimeError(f"{len(pending)} sampled timers did not fire")
    seconds = (done_ms - deadline_ms) / 1000
    return {"timers": n, "timers_seconds": seconds, "timers_per_s": n / seconds}


async def outbound(
    client: sk.Client, type_name: str, destination: str, n: int, concurrency: int
) -> dict[str, float]:
    prefix = f"ob-{uuid.uuid4().hex[:8]}-"
    await _create(client, type_name, prefix, n)
    await _apply(client, prefix, n, "dispatch")
    worker = sk.Worker(client, concurrency=concurrency, lease_s=60)

    @worker.handler(destination)
    async def handle(task: sk.LeasedTask) -> str:
        return "finish"

    started = time.perf_counter()
    running = asyncio.ensure_future(worker.run())
    for _ in itertools.count():
        if worker.stats.completed >= n:
            break
        await asyncio.sleep(0.002)
    seconds = time.perf_counter() - started
    await worker.stop()
    await running
    return {"outbound": n, "outbound_seconds": seconds, "outbound_per_s": n / seconds}


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    async with await sk.Client.connect(args.address, timeout=120) as client:
        suffix = uuid.uuid4().hex[:8]
        type_name, destination = f"benchjob{suffix}", f"bench-{suffix}"
        await client.register_machine_type(machine_type(type_name, destination))
        out: dict[str, float] = {}
        if args.timers:
            out.update(await timers(client, type_name, args.timers))
        if args.outbound:
            out.update(await outbound(client, type_name, destination, args.outbound, args.concurrency))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", required=True)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--outbound", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    print(json.dumps(asyncio.run(main_async(parser.parse_args()))))


if __name__ == "__main__":
    main()
