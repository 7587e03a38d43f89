"""Task rules without a server: backoff, the circuit breaker, stale references, task indexes."""

from __future__ import annotations

import random

import pytest

from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.model import NodeAddress, NodeRecord, TaskKind, TaskRecord, TaskStatus
from statekeeper_server.domain.tasks import (
    BreakerState,
    CircuitBreaker,
    TaskSettings,
    backoff_ms,
    check_destinations,
    check_lease_ms,
    check_task_id,
    clip_error,
    stale_reason,
    with_status,
)
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.indexes import (
    dead_letter_key,
    finished_key,
    outbound_key,
    task_index_mutations,
    timer_key,
)


def _task(kind: TaskKind = TaskKind.OUTBOUND, **changes: object) -> TaskRecord:
    task = TaskRecord(
        task_id="7-1",
        name="t",
        kind=kind,
        address=NodeAddress("r", (("item", "i"),)),
        node_create_revision=3,
        transition_count=2,
        emitted_by="go",
        create_revision=7,
        deadline_ms=5_000 if kind is TaskKind.TIMER else 0,
        timer_transition="expire" if kind is TaskKind.TIMER else "",
        destination="" if kind is TaskKind.TIMER else "mail",
    )
    return with_status(task, task.status, **changes)


def _node(create_revision: int = 3, transition_count: int = 2) -> NodeRecord:
    return NodeRecord("item", 1, "s", b"", "", transition_count, create_revision, 7, False, {})


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(1)
    for attempt, (low, high) in enumerate([(50, 100), (100, 200), (200, 400), (400, 800), (500, 1000)], 1):
        values = [backoff_ms(attempt, 100, 1000, rng) for _ in range(200)]
        assert all(low <= v <= high for v in values), (attempt, min(values), max(values))
        assert len(set(values)) > 20  # jittered, not one fixed delay
    assert backoff_ms(80, 100, 1000, rng) <= 1000  # no overflow for large attempt numbers
    assert backoff_ms(1, 0, 1000, rng) == 0


def test_breaker_opens_after_threshold_and_probes_after_cooldown() -> None:
    b = CircuitBreaker(threshold=3, cooldown_ms=1000)
    assert b.allows(0) == -1
    for i in range(2):
        b.failed(f"t{i}", 10)
    assert b.state is BreakerState.CLOSED and b.allows(10) == -1
    b.succeeded("t9")  # a success resets the consecutive count
    for i in range(3):
        b.failed(f"t{i}", 100)
    assert b.state is BreakerState.OPEN
    assert b.allows(500) == 0 and b.reopens_at() == 1100
    assert b.allows(1100) == 1 and b.state is BreakerState.HALF_OPEN
    b.leased("probe")
    assert b.allows(1200) == 0  # one probe at a time
    b.failed("probe", 1300)  # the probe failed: open again for a full cool-down
    assert b.state is BreakerState.OPEN and b.allows(2000) == 0 and b.allows(2300) == 1
    b.leased("probe2")
    b.released("probe2")  # given back without an outcome: another probe may go
    assert b.allows(2300) == 1
    b.leased("probe3")
    b.succeeded("probe3")
    assert b.state is BreakerState.CLOSED and b.allows(2400) == -1


def test_breaker_threshold_zero_never_opens() -> None:
    b = CircuitBreaker(threshold=0, cooldown_ms=1000)
    for i in range(100):
        b.failed(f"t{i}", i)
    assert b.allows(100) == -1


def test_stale_reason() -> None:
    task = _task()
    assert stale_reason(task, _node()) == ""
    assert "deleted" in stale_reason(task, None)
    assert "recreated" in stale_reason(task, _node(create_revision=9))
    assert "moved on" in stale_reason(task, _node(transition_count=3))


def test_call_time_checks() -> None:
    limits = Limits()
    settings = TaskSettings(lease_ms=1000, max_lease_ms=5000)
    for bad in ["", "x", "1-", "-1", "1-2-3", "²-1", "1-99999999999", "1" * 30 + "-1"]:
        with pytest.raises(InvalidArgument):
            check_task_id(bad)
    check_task_id("12-0")
    with pytest.raises(InvalidArgument):
        check_destinations([], limits)
    with pytest.raises(InvalidArgument) as e:
        check_destinations(["ok", "bad name"], limits)
    assert e.value.metadata["field"] == "destinations[1]"
    assert check_destinations(["a", "b", "a"], limits) == ["a", "b"]
    assert check_lease_ms(0, "f", settings) == 1000
    for bad_ms in (-1, 5001):
        with pytest.raises(InvalidArgument):
            check_lease_ms(bad_ms, "f", settings)
    assert len(clip_error("x" * 10_000)) == 4096


def test_index_entries_follow_the_status() -> None:
    tkey = keys.task_key("7-1")
    assert tkey is not None
    node_entry = (Keyspace.TASKS_BY_NODE, keys.node_key(NodeAddress("r", (("item", "i"),))) + tkey, b"")

    timer = _task(TaskKind.TIMER)
    assert task_index_mutations(timer) == [node_entry, (Keyspace.TIMERS, timer_key(5_000, tkey), b"")]
    fired = with_status(timer, TaskStatus.COMPLETED)
    # a finished task enters the retention index under the commit's time
    assert task_index_mutations(fired, timer, now_ms=7_000) == [
        (Keyspace.TASKS_FINISHED, finished_key(7_000, tkey), b""),
        (Keyspace.TIMERS, timer_key(5_000, tkey), None),
    ]

    out = _task()
    queued = (Keyspace.OUTBOUND_QUEUE, outbound_key("mail", 0, tkey))
    assert task_index_mutations(out) == [node_entry, (*queued, b"")]
    retry = with_status(out, TaskStatus.PENDING, attempts=1, available_ms=900)
    assert task_index_mutations(retry, out) == [
        (*queued, None),
        (Keyspace.OUTBOUND_QUEUE, outbound_key("mail", 900, tkey), b""),
    ]
    dead = with_status(retry, TaskStatus.DEAD_LETTER, attempts=2)
    assert task_index_mutations(dead, retry) == [
        (Keyspace.OUTBOUND_QUEUE, outbound_key("mail", 900, tkey), None),
        (Keyspace.DEAD_LETTERS, dead_letter_key("mail", tkey), b""),
    ]
    again = with_status(dead, TaskStatus.PENDING, attempts=0, available_ms=0)
    assert task_index_mutations(again, dead) == [
        (Keyspace.DEAD_LETTERS, dead_letter_key("mail", tkey), None),
        (*queued, b""),
    ]
    # same entries: nothing to write
    assert task_index_mutations(with_status(out, TaskStatus.PENDING, last_error="x"), out) == []
    # queue order: by availability, then task id
    assert outbound_key("mail", 0, tkey) < outbound_key("mail", 1, keys.seq_key(1, 0))


def test_task_record_round_trips_with_available_ms() -> None:
    task = _task(available_ms=1234, attempts=2, last_error="boom")
    assert codec.decode_task(codec.encode_task(task)) == task
