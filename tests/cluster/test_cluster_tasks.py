"""Tasks in cluster mode: a timer fires once cluster-wide (on its shard's owner), and an
outbound task is leased to one worker cluster-wide, whichever server the worker is connected
to (its stream gathers every server's tasks), also across a kill -9 of a server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import statekeeper as sk
from tests.cluster.conftest import StartCluster
from tests.server.test_tasks import job_type


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_timer_fires_once_cluster_wide(start_cluster: StartCluster) -> None:
    procs = start_cluster(3)
    clients = [sk.SyncClient.connect(p.address) for p in procs]
    try:
        clients[0].register_machine_type(job_type("job", "jobs", delay_ms=500))
        roots = [f"j-{i}" for i in range(30)]
        for i, root in enumerate(roots):
            clients[i % 3].create_root("job", root)
            clients[(i + 1) % 3].transition(root, "start")
        _wait(lambda: all(clients[2].get_node(r).state == "timeout" for r in roots))
        for root in roots:
            node = clients[1].get_node(root)
            assert node.transition_count == 2  # start, then the timer's expire: once
            (task,) = clients[0].list_tasks(node=root)
            assert task.status == "completed" and task.attempts == 1
    finally:
        for c in clients:
            c.close()


def test_an_outbound_task_is_leased_to_one_worker_whatever_server_it_uses(
    start_cluster: StartCluster,
) -> None:
    procs = start_cluster(3)
    with sk.SyncClient.connect(procs[0].address) as c:
        c.register_machine_type(job_type("job", "jobs"))
        roots = [f"o-{i}" for i in range(40)]
        for root in roots:
            c.create_root("job", root)
        for root in roots:
            c.transition(root, "dispatch")
    seen: Counter[str] = Counter()

    async def work(address: str, name: str) -> None:
        async with await sk.Client.connect(address) as client:
            worker = sk.Worker(client, concurrency=4, lease_s=10, worker_id=name)

            @worker.handler("jobs")
            async def handle(leased: sk.LeasedTask) -> tuple[str, bytes]:
                seen[leased.ref.root_id] += 1
                return "finish", b"done"

            running = asyncio.ensure_future(worker.run())
            deadline = time.monotonic() + 60
            while sum(seen.values()) < len(roots) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            await worker.stop()
            await running

    async def main() -> None:
        # Two workers, each connected to one server only; the third server's tasks reach them too.
        await asyncio.gather(work(procs[1].address, "w1"), work(procs[2].address, "w2"))

    asyncio.run(main())
    assert set(seen) == set(roots) and max(seen.values()) == 1, seen
    with sk.SyncClient.connect(procs[0].address) as c:
        for root in roots:
            assert c.get_node(root).state == "done"
            (task,) = c.list_tasks(node=root)
            assert task.status == "completed" and task.attempts == 1
