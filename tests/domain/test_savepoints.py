"""The savepoint rules (domain/savepoints.py) without a server: schedule math, which savepoints a
save fills, completeness, keep-N, checksums, validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekeeper_server.domain.errors import InvalidArgument, ResourceExhausted
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.savepoints import (
    EntityProgress,
    RunHeader,
    apply_completion,
    check_run,
    check_state,
    check_timestamp,
    checksum,
    completion,
    entity_next_savepoint,
    fill,
    next_savepoint,
    savepoints_in,
)


def run(start: int = 0, schedule: int = 60_000, entities: int = 2, keep: int = 0) -> RunHeader:
    return RunHeader("r", start, schedule, 1, keep, entities, 1, 0, 0, {0: entities}, [])


def test_next_savepoint_is_the_smallest_multiple_strictly_after() -> None:
    assert next_savepoint(0, 60_000) == 60_000
    assert next_savepoint(10_000, 60_000) == 60_000
    assert next_savepoint(60_000, 60_000) == 120_000
    assert next_savepoint(59_999, 60_000) == 60_000
    assert next_savepoint(5, 0) is None


def test_savepoints_of_a_run_starting_at_10000() -> None:
    r = run(start=10_000)
    assert r.first_savepoint == 60_000
    assert list(savepoints_in(10_000, 200_000, 60_000)) == [60_000, 120_000, 180_000]
    assert list(savepoints_in(60_000, 119_999, 60_000)) == []
    assert run(schedule=0).first_savepoint is None


def test_one_save_fills_every_savepoint_up_to_its_timestamp() -> None:
    r = run(start=10_000)
    a = EntityProgress()
    f = fill(r, a, 190_000)
    assert f is not None and (f.first, f.last, f.count) == (60_000, 180_000, 3)
    assert a.filled_through == 180_000 and a.segments == [180_000]
    assert r.filled == {0: 1, 180_000: 1}
    # already holds them: a second save up to the same savepoint fills nothing
    assert fill(r, a, 200_000) is None
    assert entity_next_savepoint(r, a) == 240_000
    f = fill(r, a, 240_000)
    assert f is not None and (f.first, f.last, f.count) == (240_000, 240_000, 1)


def test_save_before_the_first_savepoint_fills_nothing_and_no_schedule_never_fills() -> None:
    r = run(start=10_000)
    a = EntityProgress()
    assert fill(r, a, 59_999) is None and a.filled_through == 0
    r0 = run(schedule=0)
    assert fill(r0, EntityProgress(), 10**12) is None
    assert completion(r0, 3) is None


def test_a_savepoint_completes_only_when_every_entity_holds_it() -> None:
    r = run()
    a, b = EntityProgress(), EntityProgress()
    fill(r, a, 130_000)  # a holds 60000 and 120000
    assert completion(r, 3) is None
    fill(r, b, 60_000)  # b holds 60000: 60000 is complete, 120000 not yet
    done = completion(r, 3)
    assert done is not None and done.persist == (60_000,) and done.frontier == 60_000
    apply_completion(r, done)
    assert r.savepoints == [60_000] and completion(r, 3) is None
    # b's 60000 contribution is not needed any more; a's (covering 120000) still is
    assert b.prune(r.frontier) == [60_000] and a.prune(r.frontier) == []
    assert a.segment_for(120_000) == 120_000


def test_segments_map_each_savepoint_to_the_first_save_at_or_after_it() -> None:
    r = run(entities=1)
    a = EntityProgress()
    fill(r, a, 70_000)  # (0, 60000]
    fill(r, a, 250_000)  # (60000, 240000]
    assert a.segments == [60_000, 240_000]
    assert a.segment_for(60_000) == 60_000
    assert a.segment_for(120_000) == 240_000 and a.segment_for(240_000) == 240_000
    with pytest.raises(LookupError):
        a.segment_for(300_000)


def test_keep_n_persists_only_the_newest_and_drops_older_ones() -> None:
    r = run(entities=1, keep=2)
    a = EntityProgress()
    fill(r, a, 60_000)
    done = completion(r, 3)
    assert done is not None and done.persist == (60_000,) and not done.drop
    apply_completion(r, done)
    fill(r, a, 300_000)  # completes 120000..300000 at once: only the newest 2 are persisted
    done = completion(r, 3)
    assert done is not None
    assert done.persist == (240_000, 300_000) and done.skipped == 2 and done.drop == (60_000,)
    apply_completion(r, done)
    assert r.savepoints == [240_000, 300_000] and r.latest == 300_000
    # the server default applies when the run does not set keep
    r2 = run(entities=1)
    fill(r2, EntityProgress(), 600_000)
    d2 = completion(r2, 4)
    assert d2 is not None and len(d2.persist) == 4


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 500_000),
    schedule=st.integers(1, 100_000),
    saves=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1_000_000)), max_size=30),
)
def test_complete_savepoints_are_exactly_those_every_entity_reached(
    start: int, schedule: int, saves: list[tuple[int, int]]
) -> None:
    """Against a brute-force model: savepoint T (a multiple of the schedule after the start)
    is complete iff every entity has saved at a timestamp >= T; the state of entity e in T is
    the one of its first save (in call order) that reached T."""
    n = 3
    r = run(start=start, schedule=schedule, entities=n, keep=10**9)
    progress = [EntityProgress() for _ in range(n)]
    state_of: dict[tuple[int, int], int] = {}  # (savepoint, entity) -> index of the save
    segment_save: list[dict[int, int]] = [{} for _ in range(n)]  # segment -> index of the save
    persisted: set[int] = set()
    for i, (e, offset) in enumerate(saves):
        ts = start + offset
        for t in savepoints_in(start, ts, schedule):
            state_of.setdefault((t, e), i)
        f = fill(r, progress[e], ts)
        if f is not None:
            assert f.last == ts // schedule * schedule
            segment_save[e][f.last] = i
        done = completion(r, 3)
        if done is not None:
            persisted.update(done.persist)
            apply_completion(r, done)
    reached = [max((start + o for e2, o in saves if e2 == e), default=-1) for e in range(n)]
    expected = set(savepoints_in(start, min(reached), schedule)) if min(reached) >= 0 else set()
    assert persisted == expected
    for t in expected:
        for e in range(n):
            assert segment_save[e][progress[e].segment_for(t)] == state_of[(t, e)]


def test_checksum_depends_on_every_byte_and_the_grouping() -> None:
    base = checksum(60_000, 1, [("a", b"xy"), ("b", b"z")])
    assert base == checksum(60_000, 1, [("a", b"xy"), ("b", b"z")])
    assert base != checksum(60_000, 1, [("a", b"x"), ("b", b"yz")])
    assert base != checksum(60_000, 2, [("a", b"xy"), ("b", b"z")])
    assert base != checksum(120_000, 1, [("a", b"xy"), ("b", b"z")])
    assert base != checksum(60_000, 1, [("a", b"xy"), ("b", b"Z")])


def test_validation_names_the_field() -> None:
    limits = Limits(max_state_bytes=4, max_run_entities=2)
    with pytest.raises(InvalidArgument) as e:
        check_run("r", 0, 60_000, [], 1, 0, limits)
    assert e.value.metadata["field"] == "entities"
    with pytest.raises(InvalidArgument) as e:
        check_run("r", 0, 60_000, [("a", b""), ("a", b"")], 1, 0, limits)
    assert e.value.reason == "DUPLICATE_ENTITY"
    with pytest.raises(ResourceExhausted):
        check_run("r", 0, 60_000, [("a", b""), ("b", b""), ("c", b"")], 1, 0, limits)
    with pytest.raises(InvalidArgument) as e:
        check_run("r", 0, -1, [("a", b"")], 1, 0, limits)
    assert e.value.metadata["field"] == "schedule_ms"
    with pytest.raises(InvalidArgument) as e:
        check_state(b"12345", "saves[0].state", limits)
    assert e.value.reason == "STATE_TOO_LARGE" and e.value.metadata["limit"] == "max_state_bytes"
    check_state(b"1234", "x", limits)
    with pytest.raises(InvalidArgument) as e:
        check_timestamp(run(start=10_000), 9_999, "saves[0].timestamp_ms")
    assert e.value.reason == "TIMESTAMP_BEFORE_START"
    check_timestamp(run(start=10_000), 10_000, "x")
