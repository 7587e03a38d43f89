"""Tasks through real server processes: timers, outbound tasks leased to workers, stale tasks,
retries and dead letters, the circuit breaker, inspection and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

import statekeeper as sk
from statekeeper._cli import main as cli_main
from statekeeper.v1 import task_pb2, task_pb2_grpc
from tests.support import ServerProcess

T = TypeVar("T")

# The shared server of this module retries fast, so the tests stay short.
SERVER_ARGS = (
    "--task-max-attempts",
    "3",
    "--task-backoff-base-s",
    "0.05",
    "--task-backoff-max-s",
    "0.2",
    "--task-breaker-threshold",
    "3",
    "--task-breaker-cooldown-s",
    "0.4",
    "--task-max-in-flight",
    "3",
)


def job_type(name: str, destination: str, delay_ms: int = 300) -> sk.MachineType:
    return sk.MachineType(
        name=name,
        version=1,
        states=["new", "running", "done", "timeout"],
        initial_state="new",
        terminal_states=["done", "timeout"],
        transitions=[
            sk.Transition(
                "start", ["new"], "running", tasks=[sk.Timer("deadline", "expire", delay_ms=delay_ms)]
            ),
            sk.Transition("dispatch", ["new"], "running", tasks=[sk.Outbound("work", destination, b"job")]),
            sk.Transition("expire", ["running"], "timeout"),
            sk.Transition("finish", ["running"], "done"),
            sk.Transition("touch", ["running"], "running"),
            sk.Transition("redo", ["running"], "running", tasks=[sk.Outbound("work", destination, b"again")]),
        ],
    )


@pytest.fixture(scope="module")
def task_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("tasks")) / "data", *SERVER_ARGS).start()
    yield proc
    proc.terminate()


@pytest.fixture
def c(task_server: ServerProcess) -> Iterator[sk.SyncClient]:
    with sk.SyncClient.connect(task_server.address) as client:
        yield client


@pytest.fixture
def job(c: sk.SyncClient, uid: str) -> str:
    """A machine type of the test's own, whose outbound tasks go to destination "d-<type>"."""
    name = f"job{uid.replace('-', '_')}"
    c.register_machine_type(job_type(name, f"d-{name}"))
    return name


def dest(job: str) -> str:
    return f"d-{job}"


def run(address: str, body: Callable[[sk.Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await sk.Client.connect(address) as client:
            return await asyncio.wait_for(body(client), 20)

    return asyncio.run(main())


def wait_for(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


class Leases:
    """A lease stream read by a background task, so a test can wait for the next task with a
    timeout and go on reading after it (cancelling the iterator itself would end the stream)."""

    def __init__(self, client: sk.Client, destination: str, **options: Any) -> None:
        self.queue: asyncio.Queue[sk.LeasedTask] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._read(client.lease_tasks([destination], **options)))

    async def _read(self, stream: AsyncIterator[sk.LeasedTask]) -> None:
        async for leased in stream:
            self.queue.put_nowait(leased)

    async def next(self, timeout: float = 5.0) -> sk.LeasedTask:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


async def state_is(client: sk.Client, ref: str, state: str) -> bool:
    return (await client.get_node(ref)).state == state


async def status_is(client: sk.Client, task_id: str, status: str) -> bool:
    return (await client.get_task(task_id)).status == status


# -- timers -------------------------------------------------------------------------------------


def test_timer_fires_after_its_deadline_never_before(c: sk.SyncClient, job: str, uid: str) -> None:
    c.create_root(job, uid)
    result = c.transition(uid, "start")
    timer = result.tasks[0]
    assert timer.kind == "timer" and timer.status == "pending" and timer.timer_transition == "expire"
    observed: list[tuple[float, str]] = []
    while True:
        state = c.get_node(uid).state
        observed.append((time.time() * 1000, state))
        if state != "running" or len(observed) > 10_000:
            break
        time.sleep(0.005)
    # Every answer received before the deadline still shows the old state: never fired early.
    assert all(s == "running" for t, s in observed if t < timer.deadline_ms)
    assert observed[-1][1] == "timeout" and observed[-1][0] >= timer.deadline_ms
    assert observed[-1][0] < timer.deadline_ms + 2000
    node = c.get_node(uid)
    assert node.transition_count == 2
    fired = c.get_task(timer.id)
    assert fired.status == "completed" and fired.attempts == 1


def test_stale_timers_apply_nothing(c: sk.SyncClient, job: str, uid: str) -> None:
    moved, deleted, recreated = f"{uid}-m", f"{uid}-d", f"{uid}-r"
    timers = {}
    for root in (moved, deleted, recreated):
        c.create_root(job, root)
        timers[root] = c.transition(root, "start").tasks[0]
    c.transition(moved, "touch")  # a later transition: the node moved on
    c.delete_node(deleted)
    c.delete_node(recreated)
    c.create_root(job, recreated)  # same key, a new incarnation
    for root, timer in timers.items():
        assert wait_for(lambda t=timer: c.get_task(t.id).status == "stale", timeout=3), root
    node = c.get_node(moved)
    assert (node.state, node.transition_count) == ("running", 2)
    again = c.get_node(recreated)
    assert (again.state, again.transition_count) == ("new", 0)
    with pytest.raises(sk.NotFoundError):
        c.get_node(deleted)


def test_timer_due_during_a_restart_fires_after_it(fresh_server: ServerProcess, uid: str) -> None:
    with sk.SyncClient.connect(fresh_server.address) as c:
        c.register_machine_type(job_type("job", "d", delay_ms=200))
        c.create_root("job", uid)
        timer = c.transition(uid, "start").tasks[0]
    fresh_server.kill()  # SIGKILL while the timer is pending
    time.sleep(0.3)  # it falls due while the server is down
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        wait_for(lambda: c.get_node(uid).state == "timeout", timeout=3)
        assert c.get_task(timer.id).status == "completed"
        assert c.get_node(uid).transition_count == 2


# -- outbound -------------------------------------------------------------------------------------


def test_outbound_task_leased_completed_and_its_transition_applied(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]
    assert task.kind == "outbound" and task.destination == dest(job) and task.payload == b"job"
    seen: list[sk.LeasedTask] = []

    async def body(client: sk.Client) -> sk.WorkerStats:
        worker = sk.Worker(client, concurrency=2, lease_s=5, worker_id="w-1")

        @worker.handler(dest(job))
        async def handle(leased: sk.LeasedTask) -> tuple[str, bytes]:
            seen.append(leased)
            assert (await client.get_task(leased.id)).status == "leased"
            return "finish", b'{"ok": true}'

        running = asyncio.ensure_future(worker.run())
        await until(lambda: state_is(client, uid, "done"))
        await worker.stop()
        await running
        return worker.stats

    stats = run(task_server.address, body)
    assert [t.id for t in seen] == [task.id] and seen[0].payload == b"job" and seen[0].ref == sk.Ref(uid)
    assert stats.completed == 1 and stats.failed == 0
    node = c.get_node(uid)
    assert (node.state, node.data, node.transition_count) == ("done", b'{"ok": true}', 2)
    done = c.get_task(task.id)
    assert done.status == "completed" and done.attempts == 1
    assert c.list_tasks(destination=dest(job)) == []


def test_completing_twice_with_the_same_token_returns_the_first_outcome(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    c.transition(uid, "dispatch")

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5, worker_id="twice")
        leased = await leases.next()
        await leases.close()
        lease = await client.get_task(leased.id)
        assert lease.status == "leased" and lease.lease_worker_id == "twice" and lease.lease_expires_ms > 0
        first = await client.complete_task(leased, "finish")
        second = await client.complete_task(leased, "finish")
        assert second == first and first.node_state == "done" and first.node_transition_count == 2
        with pytest.raises(sk.FailedPreconditionError) as e:
            await client.fail_task(leased, "too late")
        assert e.value.reason == "LEASE_SETTLED"
        with pytest.raises(sk.FailedPreconditionError) as e2:
            await client.heartbeat_task(leased)
        assert e2.value.reason == "LEASE_NOT_HELD"

    run(task_server.address, body)
    assert c.get_node(uid).transition_count == 2  # applied once


def test_failures_back_off_then_dead_letter_then_operator_retry(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]
    calls: list[float] = []

    async def failing(client: sk.Client) -> None:
        worker = sk.Worker(client, concurrency=1, lease_s=5)

        @worker.handler(dest(job))
        async def handle(leased: sk.LeasedTask) -> str:
            calls.append(time.monotonic())
            if len(calls) <= 3:
                raise RuntimeError(f"boom {len(calls)}")
            return "finish"

        running = asyncio.ensure_future(worker.run())
        await until(lambda: status_is(client, task.id, "dead_letter"))
        dead = await client.list_dead_letters(dest(job))
        assert [t.id for t in dead] == [task.id]
        assert dead[0].attempts == 3 and dead[0].last_error == "RuntimeError: boom 3"
        assert task.id in {t.id for t in await client.list_dead_letters()}
        assert len(calls) == 3
        # The operator retries it: pending again with no attempts, and this time it works.
        retried = await client.retry_dead_letter(task.id)
        assert retried.status == "pending" and retried.attempts == 0
        await until(lambda: state_is(client, uid, "done"))
        await worker.stop()
        await running

    run(task_server.address, failing)
    # Backoff 50 ms doubling, jitter in [d/2, d]: gaps of at least 25 ms, then 50 ms.
    assert calls[1] - calls[0] >= 0.025 and calls[2] - calls[1] >= 0.05, calls
    done = c.get_task(task.id)
    assert done.status == "completed" and done.attempts == 1 and done.last_error == "RuntimeError: boom 3"
    assert c.list_dead_letters(dest(job)) == []


def test_fail_permanent_dead_letters_at_once_and_discard(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]
    with pytest.raises(sk.FailedPreconditionError) as e:
        c.discard_dead_letter(task.id)  # pending, not dead-lettered
    assert e.value.reason == "NOT_DEAD_LETTER" and e.value.metadata["status"] == "PENDING"

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5)
        leased = await leases.next()
        await leases.close()
        result = await client.fail_task(leased, "no such customer", permanent=True)
        assert result.task.status == "dead_letter" and result.next_attempt_ms == 0
        assert result.task.attempts == 1 and result.task.last_error == "no such customer"

    run(task_server.address, body)
    discarded = c.discard_dead_letter(task.id)
    assert discarded.status == "discarded"
    assert c.get_task(task.id).status == "discarded" and c.list_dead_letters(dest(job)) == []
    with pytest.raises(sk.FailedPreconditionError):
        c.retry_dead_letter(task.id)


def test_expired_lease_is_redelivered(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=0.3, max_in_flight=1)
        first = await leases.next()
        started = time.monotonic()
        second = await leases.next()  # nobody settled the first lease: it expires
        assert time.monotonic() - started >= 0.25
        await leases.close()
        assert second.id == first.id == task.id and second.token != first.token
        assert second.attempts == 1
        with pytest.raises(sk.FailedPreconditionError) as e:
            await client.complete_task(first, "finish")
        assert e.value.reason == "LEASE_NOT_HELD"
        got = await client.get_task(task.id)
        assert got.attempts == 1 and "lease expired" in got.last_error
        assert (await client.complete_task(second, "finish")).node_state == "done"

    run(task_server.address, body)


def test_heartbeats_keep_a_lease(task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str) -> None:
    c.create_root(job, uid)
    c.transition(uid, "dispatch")
    lease_s = 1.0

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=lease_s)
        leased = await leases.next()
        await leases.close()
        # Beat for 2.5 leases: without the beats the lease would have expired twice over. A beat
        # every fifth of the lease tolerates a call 0.8 s slow on a loaded machine (a 0.3 s
        # lease beaten every 0.1 s expired whenever one call took 0.2 s).
        until = time.monotonic() + 2.5 * lease_s
        beats = 0
        while time.monotonic() < until:
            await asyncio.sleep(lease_s / 5)
            beat = await client.heartbeat_task(leased)
            assert not beat.stale and beat.lease_expires_ms > time.time() * 1000
            beats += 1
        assert beats >= 5
        result = await client.complete_task(leased)
        # attempts 1: the lease never expired (an expiry counts as a failed attempt).
        assert result.task.status == "completed" and result.task.attempts == 1 and result.node_state == ""

    run(task_server.address, body)
    assert c.get_node(uid).state == "running"  # completed without a transition


def test_completion_for_a_stale_reference_is_refused(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5)
        leased = await leases.next()
        await leases.close()
        await client.transition(uid, "touch")  # the node moves on while the worker works
        assert (await client.heartbeat_task(leased)).stale
        for _ in range(2):  # refused, and refused the same way when repeated
            with pytest.raises(sk.FailedPreconditionError) as e:
                await client.complete_task(leased, "finish", b"x")
            assert e.value.reason == "STALE_REFERENCE"
            assert e.value.metadata["task_id"] == task.id and e.value.metadata["transition_count"] == "1"

    run(task_server.address, body)
    node = c.get_node(uid)
    assert (node.state, node.transition_count, node.data) == ("running", 2, b"")
    assert c.get_task(task.id).status == "stale"


def test_stale_outbound_task_is_dropped_not_handed_out(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    stale = c.transition(uid, "dispatch").tasks[0]
    fresh = c.transition(uid, "redo").tasks[0]  # moves the node on: the first task is stale

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5, max_in_flight=5)
        leased = await leases.next()
        assert leased.id == fresh.id and leased.payload == b"again"
        with pytest.raises(asyncio.TimeoutError):
            await leases.next(timeout=0.3)
        await leases.close()
        await client.complete_task(leased)

    run(task_server.address, body)
    assert c.get_task(stale.id).status == "stale"


def test_in_flight_limit_per_destination_and_release(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    for i in range(5):
        c.create_root(job, f"{uid}-{i}")
        c.transition(f"{uid}-{i}", "dispatch")

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5, max_in_flight=10)
        got = [await leases.next() for _ in range(3)]  # the server allows 3 per destination
        with pytest.raises(asyncio.TimeoutError):
            await leases.next(timeout=0.3)
        other = Leases(client, dest(job), lease_s=5, max_in_flight=10)
        with pytest.raises(asyncio.TimeoutError):
            await other.next(timeout=0.2)  # the limit is per destination, not per stream
        await leases.close()  # its leases stay held until settled or expired
        await client.release_task(got[0])  # back at once, without counting an attempt
        again = await other.next()
        assert again.id == got[0].id and again.attempts == 0
        await other.close()
        for leased in [*got[1:], again]:
            await client.complete_task(leased)

    run(task_server.address, body)
    assert len(c.list_tasks(destination=dest(job))) == 2


def test_circuit_breaker_stops_a_failing_destination_then_probes(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    for i in range(3):
        c.create_root(job, f"{uid}-{i}")
        c.transition(f"{uid}-{i}", "dispatch")

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5, max_in_flight=10)
        first = [await leases.next() for _ in range(3)]
        for leased in first:  # three consecutive failures open the breaker
            await client.fail_task(leased, "down")
        opened = time.monotonic()
        # The retries are due after 25-100 ms, but the open breaker holds them back until its
        # 0.4 s cool-down is over; then a single probe goes out.
        probe = await leases.next(timeout=3)
        assert time.monotonic() - opened >= 0.3 and probe.attempts == 1
        with pytest.raises(asyncio.TimeoutError):
            await leases.next(timeout=0.3)  # half-open: nothing but the probe
        await client.complete_task(probe)  # the probe succeeds: closed again
        rest = [await leases.next() for _ in range(2)]
        await leases.close()
        for leased in rest:
            await client.complete_task(leased)

    run(task_server.address, body)
    assert c.list_tasks(destination=dest(job)) == []


def test_worker_stop_releases_unfinished_tasks(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str
) -> None:
    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]

    async def body(client: sk.Client) -> None:
        worker = sk.Worker(client, lease_s=30)
        started = asyncio.Event()

        @worker.handler(dest(job))
        async def forever(leased: sk.LeasedTask) -> None:
            started.set()
            await asyncio.Event().wait()

        running = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(started.wait(), 5)
        await worker.stop(grace_s=0.1)
        await running
        assert worker.stats.released == 1
        got = await client.get_task(task.id)
        assert got.status == "pending" and got.attempts == 0  # available again at once
        leases = Leases(client, dest(job), lease_s=5)
        leased = await leases.next(timeout=1)
        await leases.close()
        await client.complete_task(leased, "finish")

    run(task_server.address, body)
    assert c.get_node(uid).state == "done"


# -- inspection ---------------------------------------------------------------------------------


def test_list_tasks_by_node_tree_and_destination(c: sk.SyncClient, job: str, uid: str) -> None:
    root = c.create_root(job, uid)
    child = c.add_child(root, job, "c1")
    own = [c.transition(root, "dispatch").tasks[0].id, c.transition(root, "redo").tasks[0].id]
    below = c.transition(child, "start").tasks[0].id
    assert [t.id for t in c.list_tasks(root)] == own
    assert [t.id for t in c.list_tasks(child.ref)] == [below]
    for page_size in (1, 2, 100):
        assert [t.id for t in c.list_tasks(root, tree=True, page_size=page_size)] == [*own, below]
    wait_for(lambda: c.get_task(below).status == "completed")  # the child's timer fired
    assert [t.id for t in c.list_tasks(root, tree=True, statuses=["pending"])] == own
    assert [t.id for t in c.list_tasks(root, tree=True, statuses=["stale", "completed"])] == [below]
    assert [t.id for t in c.list_tasks(root, statuses=["completed"])] == []
    queued = c.list_tasks(destination=dest(job), page_size=1)
    assert [t.id for t in queued] == own  # both still queued; the first is stale but not yet dropped
    with pytest.raises(ValueError):
        c.list_tasks(root, statuses=["bogus"])


def test_bad_input_is_refused(task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str) -> None:
    def refused(
        call: Callable[[], Any], error: type[sk.StatekeeperError], reason: str, field: str = ""
    ) -> None:
        with pytest.raises(error) as e:
            call()
        assert e.value.reason == reason, e.value
        if field:
            assert e.value.metadata.get("field") == field, e.value.metadata

    refused(lambda: c.get_task("nope"), sk.InvalidArgumentError, "FIELD_INVALID", "task_id")
    refused(lambda: c.get_task(""), sk.InvalidArgumentError, "FIELD_REQUIRED", "task_id")
    refused(lambda: c.get_task("999999-0"), sk.NotFoundError, "TASK_NOT_FOUND")
    refused(lambda: c.list_tasks(), sk.InvalidArgumentError, "FIELD_REQUIRED")
    refused(lambda: c.list_tasks(uid, destination="x"), sk.InvalidArgumentError, "FIELD_REQUIRED")
    refused(
        lambda: c.list_tasks(destination="bad name"), sk.InvalidArgumentError, "FIELD_INVALID", "destination"
    )
    refused(lambda: c.retry_dead_letter("999999-0"), sk.NotFoundError, "TASK_NOT_FOUND")
    fake = sk.LeasedTask(sk.Task("999999-0", "t", "outbound", "leased", sk.Ref("r"), 1, 1, "go", 1), "tok", 0)
    refused(lambda: c.complete_task(fake), sk.FailedPreconditionError, "LEASE_NOT_HELD")
    refused(lambda: c.heartbeat_task(fake), sk.FailedPreconditionError, "LEASE_NOT_HELD")
    no_token = sk.LeasedTask(fake.task, "", 0)
    refused(lambda: c.fail_task(no_token, "x"), sk.InvalidArgumentError, "FIELD_REQUIRED", "lease_token")
    refused(lambda: c.heartbeat_task(fake, lease_s=-1), sk.InvalidArgumentError, "FIELD_INVALID")
    refused(
        lambda: c.complete_task(fake, "", b"data"), sk.InvalidArgumentError, "FIELD_REQUIRED", "transition"
    )
    with grpc.insecure_channel(task_server.address) as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        for request, field in [
            (task_pb2.LeaseTasksRequest(), "destinations"),
            (task_pb2.LeaseTasksRequest(destinations=["ok", ""]), "destinations[1]"),
            (task_pb2.LeaseTasksRequest(destinations=["a b"]), "destinations[0]"),
            (task_pb2.LeaseTasksRequest(destinations=["ok"], max_in_flight=-1), "max_in_flight"),
            (task_pb2.LeaseTasksRequest(destinations=["ok"], lease_duration_ms=-5), "lease_duration_ms"),
            (task_pb2.LeaseTasksRequest(destinations=["ok"], lease_duration_ms=10**10), "lease_duration_ms"),
            (task_pb2.LeaseTasksRequest(destinations=["ok"], worker_id="a\nb"), "worker_id"),
        ]:
            with pytest.raises(grpc.RpcError) as rpc:
                list(stub.LeaseTasks(request, timeout=5))
            assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, rpc.value)
            assert field in (rpc.value.details() or ""), (field, rpc.value.details())
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ListTasks(task_pb2.ListTasksRequest(destination="x", statuses=[42]), timeout=5)  # type: ignore[list-item]
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ListTasks(task_pb2.ListTasksRequest(destination="x", page_token="!!"), timeout=5)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A completion whose transition input is bad writes nothing and keeps the lease.
    c.create_root(job, uid)
    c.transition(uid, "dispatch")

    async def body(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5)
        leased = await leases.next()
        await leases.close()
        with pytest.raises(sk.InvalidArgumentError) as e:
            await client.complete_task(leased, "finish", task_inputs=[sk.TaskInput("nope")])
        assert e.value.reason == "UNKNOWN_TASK"
        with pytest.raises(sk.InvalidArgumentError) as e2:
            await client.complete_task(leased, "finish", b"x" * (1024 * 1024 + 1))
        assert e2.value.reason == "DATA_TOO_LARGE"
        with pytest.raises(sk.FailedPreconditionError) as e3:
            await client.complete_task(leased, "dispatch")  # not allowed from "running"
        assert e3.value.reason == "INVALID_TRANSITION"
        assert (await client.get_task(leased.id)).status == "leased"
        assert (await client.complete_task(leased, "finish")).node_state == "done"

    run(task_server.address, body)


def test_bad_task_inputs_at_call_time_write_nothing(c: sk.SyncClient, uid: str) -> None:
    name = f"sched{uid.replace('-', '_')}"
    c.register_machine_type(
        sk.MachineType(
            name=name,
            version=1,
            states=["idle", "armed"],
            initial_state="idle",
            transitions=[
                sk.Transition(
                    "arm",
                    ["idle"],
                    "armed",
                    tasks=[
                        sk.Timer("at", "disarm", deadline_from_request=True),
                        sk.Outbound("tell", f"d-{name}", b"default"),
                    ],
                ),
                sk.Transition("disarm", ["armed"], "idle"),
            ],
        )
    )
    c.create_root(name, uid)
    later = int(time.time() * 1000) + 60_000
    for inputs, reason, field in [
        ([], "FIELD_REQUIRED", "task_inputs"),  # the timer's deadline must come from the request
        ([sk.TaskInput("at", deadline_ms=-1)], "FIELD_INVALID", "task_inputs[0].deadline_ms"),
        ([sk.TaskInput("at", later), sk.TaskInput("nope")], "UNKNOWN_TASK", "task_inputs[1].task"),
        ([sk.TaskInput("at", later), sk.TaskInput("at", later)], "DUPLICATE_NAME", "task_inputs[1]"),
        (
            [sk.TaskInput("at", later), sk.TaskInput("tell", payload=b"x" * (256 * 1024 + 1))],
            "DATA_TOO_LARGE",
            "task_inputs[1].payload",
        ),
    ]:
        with pytest.raises(sk.InvalidArgumentError) as e:
            c.transition(uid, "arm", task_inputs=inputs)
        assert (e.value.reason, e.value.metadata.get("field")) == (reason, field)
    assert c.get_node(uid).transition_count == 0 and c.list_tasks(uid) == []
    result = c.transition(
        uid, "arm", task_inputs=[sk.TaskInput("at", later), sk.TaskInput("tell", payload=b"p")]
    )
    timer, out = result.tasks
    assert timer.deadline_ms == later and out.payload == b"p"


def test_cli_tasks(
    task_server: ServerProcess, c: sk.SyncClient, job: str, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli(*args: str) -> tuple[int, str]:
        code = cli_main(["tasks", args[0], "--server", task_server.address, *args[1:]])
        out, err = capsys.readouterr()
        return code, out + err

    c.create_root(job, uid)
    task = c.transition(uid, "dispatch").tasks[0]
    code, out = cli("list", "--node", uid)
    assert code == 0 and task.id in out and "pending" in out and dest(job) in out
    code, out = cli("list", "--destination", dest(job), "--json")
    assert [t["id"] for t in json.loads(out)] == [task.id]
    code, out = cli("get", task.id, "--json")
    assert json.loads(out)["status"] == "pending"

    async def fail(client: sk.Client) -> None:
        leases = Leases(client, dest(job), lease_s=5)
        leased = await leases.next()
        await leases.close()
        await client.fail_task(leased, "bad payload", permanent=True)

    run(task_server.address, fail)
    code, out = cli("dead-letters", "--destination", dest(job))
    assert code == 0 and task.id in out and "bad payload" in out
    code, out = cli("retry", task.id)
    assert code == 0 and "pending" in out
    run(task_server.address, fail)
    code, out = cli("discard", task.id, "--json")
    assert code == 0 and json.loads(out)["status"] == "discarded"
    code, out = cli("get", "123-0")
    assert code == 1 and "TASK_NOT_FOUND" in out
