"""Savepoints through the SDK against a real server: runs, scheduled savepoints with Runbox's
semantics, the entity envelope, keep-N, upgrades on load, integrity, tree snapshots, backups."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import statekeeper as sk
from statekeeper._cli import main as cli
from statekeeper_server.domain.model import EventKind
from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.rocksdb import RocksStore
from tests.conftest import ITEM, ORDER, PART
from tests.support import ServerProcess

MIN = 60_000  # the schedule most tests use


def states(sp: sk.Savepoint) -> dict[str, bytes]:
    return dict(sp.states)


# -- schedule and saving -----------------------------------------------------------------------


def test_schedule_examples(client: sk.SyncClient, uid: str) -> None:
    run = client.create_run(uid, {"e": b"s0"}, start_ms=0, schedule_ms=MIN)
    assert run.next_savepoint_ms == 60_000 and run.latest_savepoint_ms is None
    # next savepoint after 0 is 60000, after 10000 is 60000: nothing reached yet
    r = client.save_entity_state(uid, "e", 0, b"s")
    assert not r.saved and r.next_savepoint_ms == 60_000
    r = client.save_entity_state(uid, "e", 10_000, b"s")
    assert not r.saved and r.next_savepoint_ms == 60_000
    assert client.list_savepoints(uid) == []
    # at 60000 it is reached; the next one after 60000 is 120000
    r = client.save_entity_state(uid, "e", 60_000, b"s60")
    assert (r.filled_count, r.first_filled_ms, r.last_filled_ms, r.next_savepoint_ms) == (
        1,
        60_000,
        60_000,
        120_000,
    )
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [60_000]
    # a run that starts at 10000 has its first savepoint at 60000; one starting at 60000 at 120000
    assert (
        client.create_run(uid + "-b", {"e": b""}, start_ms=10_000, schedule_ms=MIN).next_savepoint_ms
        == 60_000
    )
    assert (
        client.create_run(uid + "-c", {"e": b""}, start_ms=60_000, schedule_ms=MIN).next_savepoint_ms
        == 120_000
    )
    r = client.save_entity_state(uid + "-c", "e", 119_999, b"x")
    assert not r.saved and r.next_savepoint_ms == 120_000
    # no schedule: never a savepoint
    none = client.create_run(uid + "-d", {"e": b""}, start_ms=0, schedule_ms=0)
    assert none.next_savepoint_ms is None
    r = client.save_entity_state(uid + "-d", "e", 10**12, b"x")
    assert not r.saved and r.next_savepoint_ms == 0
    assert client.list_savepoints(uid + "-d") == []


def test_one_save_fills_60000_120000_and_180000(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b"a0", "b": b"b0"}, start_ms=10_000, schedule_ms=MIN)
    r = client.save_entity_state(uid, "a", 190_000, b"a@190000")
    assert (r.filled_count, r.first_filled_ms, r.last_filled_ms) == (3, 60_000, 180_000)
    assert client.list_savepoints(uid) == []  # b has not saved: nothing is complete
    # b saves at 70000 (fills 60000) and at 185000 (fills 120000 and 180000), in one call
    out = client.save_entity_states(
        [sk.EntitySave(uid, "b", 70_000, b"b@70000"), sk.EntitySave(uid, "b", 185_000, b"b@185000")]
    )
    assert out.revision > 0
    assert out.completed == ((uid, 60_000), (uid, 120_000), (uid, 180_000))
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [60_000, 120_000, 180_000]
    assert states(client.load_savepoint(uid, 60_000)) == {"a": b"a@190000", "b": b"b@70000"}
    assert states(client.load_savepoint(uid, 120_000)) == {"a": b"a@190000", "b": b"b@185000"}
    latest = client.load_latest_savepoint(uid)
    assert latest.timestamp_ms == 180_000 and states(latest) == {"a": b"a@190000", "b": b"b@185000"}
    assert not latest.fell_back and latest.damaged_timestamps == ()


def test_a_savepoint_is_not_loadable_until_every_entity_saved(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b"", "b": b"", "c": b""}, start_ms=0, schedule_ms=MIN)
    client.save_entity_states([sk.EntitySave(uid, "a", 60_000, b"A"), sk.EntitySave(uid, "b", 61_000, b"B")])
    with pytest.raises(sk.NotFoundError) as e:
        client.load_latest_savepoint(uid)
    assert e.value.reason == "NO_SAVEPOINT"
    with pytest.raises(sk.NotFoundError) as e:
        client.load_savepoint(uid, 60_000)
    assert e.value.reason == "SAVEPOINT_NOT_FOUND"
    assert client.latest_savepoint_timestamp(uid) is None
    out = client.save_entity_state(uid, "c", 60_000, b"C")
    assert out.saved
    sp = client.load_latest_savepoint(uid)
    assert (sp.timestamp_ms, states(sp)) == (60_000, {"a": b"A", "b": b"B", "c": b"C"})
    assert client.latest_savepoint_timestamp(uid) == 60_000


def test_ack_below_the_next_savepoint_saves_nothing_and_at_or_beyond_it_once(
    client: sk.SyncClient, uid: str
) -> None:
    client.create_run(uid, {"e": b"initial"}, start_ms=0, schedule_ms=MIN, keep=5)
    client.update_entity_state(uid, "e", b"s1")
    below = client.ack_processed_times([sk.EntityAck(uid, "e", 59_999)])
    assert below.revision == 0 and not below.results[0].saved and below.results[0].next_savepoint_ms == 60_000
    assert client.list_savepoints(uid) == []
    at = client.ack_processed_times([sk.EntityAck(uid, "e", 60_000)])
    assert at.revision > 0 and at.results[0].filled_count == 1 and at.completed == ((uid, 60_000),)
    assert states(client.load_latest_savepoint(uid)) == {"e": b"s1"}
    # the same time again, or anything below the next savepoint (120000): nothing more is saved
    client.update_entity_state(uid, "e", b"s2")
    for t in (60_000, 119_999):
        again = client.ack_processed_times([sk.EntityAck(uid, "e", t)])
        assert again.revision == 0 and not again.results[0].saved
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [60_000]
    assert states(client.load_savepoint(uid, 60_000)) == {"e": b"s1"}
    # beyond: one save, into every savepoint reached (120000, 180000, 240000)
    r = client.ack_processed_time(uid, "e", 250_000)
    assert (r.filled_count, r.first_filled_ms, r.last_filled_ms, r.next_savepoint_ms) == (
        3,
        120_000,
        240_000,
        300_000,
    )
    assert not client.ack_processed_time(uid, "e", 250_000).saved
    infos = client.list_savepoints(uid)
    assert [s.timestamp_ms for s in infos] == [60_000, 120_000, 180_000, 240_000]
    assert len({s.revision for s in infos[1:]}) == 1  # all three in one commit
    for t in (120_000, 180_000, 240_000):
        assert states(client.load_savepoint(uid, t)) == {"e": b"s2"}


def test_an_ack_without_an_update_saves_the_last_saved_state(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b"a-initial", "b": b"b-initial"}, start_ms=0, schedule_ms=MIN)
    client.ack_processed_times([sk.EntityAck(uid, "a", 60_000), sk.EntityAck(uid, "b", 60_000)])
    assert states(client.load_latest_savepoint(uid)) == {"a": b"a-initial", "b": b"b-initial"}
    client.save_entity_state(uid, "a", 120_000, b"a-saved")
    client.ack_processed_time(uid, "a", 180_000)  # a's latest saved state, from its pending segment
    client.update_entity_state(uid, "b", b"b-current")
    client.ack_processed_time(uid, "b", 180_000)
    assert states(client.load_savepoint(uid, 120_000)) == {"a": b"a-saved", "b": b"b-current"}
    assert states(client.load_savepoint(uid, 180_000)) == {"a": b"a-saved", "b": b"b-current"}


def test_saves_for_many_runs_travel_in_one_call_and_retries_apply_once(
    client: sk.SyncClient, uid: str
) -> None:
    r1, r2 = uid + "-1", uid + "-2"
    for r in (r1, r2):
        client.create_run(r, {"x": b"", "y": b""}, start_ms=0, schedule_ms=1_000)
    saves = [sk.EntitySave(r, e, 1_500, f"{r}/{e}") for r in (r1, r2) for e in ("x", "y")]
    first = client.save_entity_states(saves, request_id=uid)
    assert set(first.completed) == {(r1, 1_000), (r2, 1_000)}
    again = client.save_entity_states(saves, request_id=uid)
    assert again == first
    assert len(client.list_savepoints(r1)) == 1
    assert states(client.load_latest_savepoint(r2)) == {"x": f"{r2}/x".encode(), "y": f"{r2}/y".encode()}
    with pytest.raises(sk.InvalidArgumentError) as e:
        client.save_entity_states(saves[:1], request_id=uid)
    assert e.value.reason == "REQUEST_ID_REUSED"


# -- retention and deletion ----------------------------------------------------------------------


def test_keep_n_deletes_older_savepoints_in_the_completing_commit(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"e": b""}, start_ms=0, schedule_ms=MIN, keep=2)
    assert client.get_run(uid).keep_count == 2
    for t in (60_000, 120_000):
        client.save_entity_state(uid, "e", t, str(t))
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [60_000, 120_000]
    out = client.save_entity_states([sk.EntitySave(uid, "e", 180_000, "180000")])
    assert out.completed == ((uid, 180_000),)
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [120_000, 180_000]
    with pytest.raises(sk.NotFoundError) as e:
        client.load_savepoint(uid, 60_000)
    assert e.value.reason == "SAVEPOINT_NOT_FOUND"
    # a jump over many savepoints persists only the newest keep of them
    client.save_entity_state(uid, "e", 600_000, "600000")
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [540_000, 600_000]
    assert states(client.load_savepoint(uid, 540_000)) == {"e": b"600000"}
    # the server default (3) applies when the run does not choose
    other = uid + "-default"
    assert client.create_run(other, {"e": b""}, start_ms=0, schedule_ms=MIN).keep_count == 3
    for t in range(1, 6):
        client.save_entity_state(other, "e", t * MIN, b"")
    assert [s.timestamp_ms for s in client.list_savepoints(other)] == [180_000, 240_000, 300_000]


def test_delete_run(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b"a0", "b": b"b0"}, start_ms=0, schedule_ms=MIN)
    client.save_entity_states([sk.EntitySave(uid, e, 125_000, e) for e in ("a", "b")])
    client.save_entity_state(uid, "a", 200_000, b"pending")  # a contribution to an incomplete one
    assert client.delete_run(uid) == 2
    assert not client.is_run_initialized(uid)
    with pytest.raises(sk.NotFoundError) as e:
        client.load_latest_savepoint(uid)
    assert e.value.reason == "RUN_NOT_FOUND"
    with pytest.raises(sk.NotFoundError):
        client.delete_run(uid)
    # the id can be used again, and nothing of the old run shows through
    client.create_run(uid, {"a": b"new-a"}, start_ms=0, schedule_ms=MIN)
    assert client.list_savepoints(uid) == []
    r = client.ack_processed_time(uid, "a", 60_000)
    assert r.saved and states(client.load_latest_savepoint(uid)) == {"a": b"new-a"}


# -- upgrades ------------------------------------------------------------------------------------


def _v1_to_v2(s: dict[str, bytes]) -> dict[str, bytes]:
    return {k: json.dumps({**json.loads(v), "unit": "ms"}).encode() for k, v in s.items()}


def _v2_to_v3(s: dict[str, bytes]) -> dict[str, bytes]:
    out = {}
    for k, v in s.items():
        d = json.loads(v)
        out[k] = json.dumps({"total": d["count"], "unit": d["unit"]}).encode()
    return out


def test_upgrade_chain_on_load_and_write_back(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b'{"count": 0}', "b": b'{"count": 0}'}, start_ms=0, schedule_ms=MIN)
    client.save_entity_states(
        [sk.EntitySave(uid, e, 60_000, json.dumps({"count": n})) for n, e in enumerate("ab")]
    )
    plain = client.load_latest_savepoint(uid)
    assert plain.schema_version == 1 and plain.upgraded_from is None
    up = client.load_latest_savepoint(uid, upgrades={1: _v1_to_v2, 2: _v2_to_v3})
    assert up.schema_version == 3 and up.upgraded_from == 1 and not up.written_back
    assert {k: json.loads(v) for k, v in up.states.items()} == {
        "a": {"total": 0, "unit": "ms"},
        "b": {"total": 1, "unit": "ms"},
    }
    # without write_back the stored savepoint is untouched; a chain that does not start at the
    # stored version does nothing
    assert client.load_latest_savepoint(uid) == plain
    assert client.load_latest_savepoint(uid, upgrades={2: _v2_to_v3}) == plain
    # a contribution to the next savepoint, in the old schema: dropped by the write-back
    client.save_entity_state(uid, "a", 130_000, b'{"count": 7}')
    stored = client.load_latest_savepoint(uid, upgrades={1: _v1_to_v2, 2: _v2_to_v3}, write_back=True)
    assert stored.written_back and stored.states == up.states
    run = client.get_run(uid)
    assert run.schema_version == 3 and run.next_savepoint_ms == 120_000
    again = client.load_latest_savepoint(uid, upgrades={1: _v1_to_v2})  # already at 3
    assert again.schema_version == 3 and again.upgraded_from is None and again.states == up.states
    # the run resumes from 60000: both entities must save 120000 again, now in schema 3
    r = client.save_entity_state(uid, "a", 130_000, b'{"total": 7, "unit": "ms"}')
    assert r.first_filled_ms == 120_000
    client.ack_processed_time(uid, "b", 120_000)  # b's current state: its upgraded one
    sp = client.load_latest_savepoint(uid)
    assert sp.timestamp_ms == 120_000 and sp.schema_version == 3
    assert sp.states == {"a": b'{"total": 7, "unit": "ms"}', "b": up.states["b"]}


def test_update_savepoint_can_change_the_entities(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b"1", "b": b"2"}, start_ms=0, schedule_ms=MIN, keep=3)
    for t in (60_000, 120_000):
        client.save_entity_states([sk.EntitySave(uid, e, t, f"{e}{t}") for e in ("a", "b")])
    run = client.update_savepoint(uid, 60_000, {"a": b"A", "c": b"C"}, schema_version=2)
    assert run.entity_count == 2 and run.latest_savepoint_ms == 60_000 and run.schema_version == 2
    assert [s.timestamp_ms for s in client.list_savepoints(uid)] == [60_000]
    assert states(client.load_latest_savepoint(uid)) == {"a": b"A", "c": b"C"}
    with pytest.raises(sk.InvalidArgumentError) as e:
        client.save_entity_state(uid, "b", 130_000, b"x")
    assert e.value.reason == "UNKNOWN_ENTITY"
    client.save_entity_states([sk.EntitySave(uid, e, 130_000, e) for e in ("a", "c")])
    assert states(client.load_latest_savepoint(uid)) == {"a": b"a", "c": b"c"}
    with pytest.raises(sk.NotFoundError) as e:
        client.update_savepoint(uid, 999, {"a": b""}, schema_version=2)
    assert e.value.reason == "SAVEPOINT_NOT_FOUND"


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_refused_and_writes_nothing(client: sk.SyncClient, uid: str) -> None:
    client.create_run(uid, {"a": b"", "b": b""}, start_ms=10_000, schedule_ms=MIN)
    good = sk.EntitySave(uid, "a", 60_000, b"good")
    cases: list[tuple[sk.EntitySave, type[sk.StatekeeperError], str, str]] = [
        (sk.EntitySave(uid + "-nope", "a", 60_000, b""), sk.NotFoundError, "RUN_NOT_FOUND", ""),
        (
            sk.EntitySave(uid, "zz", 60_000, b""),
            sk.InvalidArgumentError,
            "UNKNOWN_ENTITY",
            "saves[1].entity_id",
        ),
        (
            sk.EntitySave(uid, "b", 9_999, b""),
            sk.InvalidArgumentError,
            "TIMESTAMP_BEFORE_START",
            "saves[1].timestamp_ms",
        ),
        (
            sk.EntitySave(uid, "b", 60_000, b"x" * (1024 * 1024 + 1)),
            sk.InvalidArgumentError,
            "STATE_TOO_LARGE",
            "saves[1].state",
        ),
    ]
    for bad, cls, reason, field in cases:
        with pytest.raises(cls) as e:
            client.save_entity_states([good, bad])
        assert e.value.reason == reason and e.value.metadata["operation_index"] == "1"
        if field:
            assert e.value.metadata["field"] == field
    # the good save in front of each bad one was not applied
    r = client.save_entity_state(uid, "a", 60_000, b"good")
    assert r.saved and r.first_filled_ms == 60_000
    with pytest.raises(sk.NotFoundError):
        client.update_entity_state(uid + "-nope", "a", b"")
    with pytest.raises(sk.InvalidArgumentError):
        client.update_entity_states([sk.EntityUpdate(uid, "b", b"ok"), sk.EntityUpdate(uid, "zz", b"")])
    with pytest.raises(sk.InvalidArgumentError):
        client.ack_processed_time(uid, "b", 5)
    # bad run definitions
    for entities, kwargs, reason in [
        ({}, {}, "FIELD_REQUIRED"),
        ({"a": b""}, {"schedule_ms": -1}, "FIELD_INVALID"),
        ({"a\x00": b""}, {}, "FIELD_INVALID"),
        ({"a": b"x" * (1024 * 1024 + 1)}, {}, "STATE_TOO_LARGE"),
    ]:
        with pytest.raises(sk.InvalidArgumentError) as e:
            client.create_run(uid + "-bad", entities, **kwargs)  # type: ignore[arg-type]
        assert e.value.reason == reason
    assert not client.is_run_initialized(uid + "-bad")
    with pytest.raises(sk.AlreadyExistsError) as e:
        client.create_run(uid, {"a": b""})
    assert e.value.reason == "RUN_EXISTS"
    with pytest.raises(sk.NotFoundError):
        client.list_savepoints(uid + "-nope")
    with pytest.raises(sk.InvalidArgumentError):
        client.save_entity_states([])


# -- durability, integrity -----------------------------------------------------------------------


def test_initialised_before_and_after_init_and_after_a_restart(fresh_server: ServerProcess) -> None:
    with sk.SyncClient.connect(fresh_server.address) as c:
        assert not c.is_run_initialized("run")
        c.create_run("run", {"a": b"a0", "b": b"b0"}, start_ms=0, schedule_ms=MIN, keep=1)
        assert c.is_run_initialized("run")
        c.save_entity_states([sk.EntitySave("run", e, 60_000, e) for e in "ab"])
        c.save_entity_states([sk.EntitySave("run", e, 120_000, e * 3) for e in "ab"])
        c.create_run("gone", {"x": b"x0"}, start_ms=0, schedule_ms=MIN)
        c.save_entity_state("gone", "x", 130_000, b"x")
        c.delete_run("gone")
    fresh_server.kill()  # SIGKILL: acknowledged means durable
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        assert c.is_run_initialized("run") and not c.is_run_initialized("gone")
        assert states(c.load_latest_savepoint("run")) == {"a": b"aaa", "b": b"bbb"}
        with pytest.raises(sk.AlreadyExistsError):
            c.create_run("run", {"a": b""})
    fresh_server.terminate()
    store = RocksStore(fresh_server.data_dir)
    try:

        def stored(ks: Keyspace, run_id: str) -> list[bytes]:
            prefix = keys.run_key(run_id)
            return [k for k, _ in store.scan(ks, prefix, keys.prefix_end(prefix))]

        # nothing of the deleted run is left in any keyspace
        for ks in (Keyspace.RUNS, Keyspace.RUN_ENTITIES, Keyspace.SAVEPOINT_PARTS, Keyspace.SAVEPOINTS):
            assert stored(ks, "gone") == [], ks
        assert stored(Keyspace.SAVEPOINT_STATES, "gone") == []
        # keep=1 deleted the first savepoint's data; contributions to complete savepoints were
        # dropped at the entity's next save: the initial states and the latest ones remain
        assert stored(Keyspace.SAVEPOINTS, "run") == [keys.savepoint_key("run", 120_000)]
        assert stored(Keyspace.SAVEPOINT_STATES, "run") == [
            keys.savepoint_state_key("run", 120_000, e) for e in "ab"
        ]
        assert stored(Keyspace.SAVEPOINT_PARTS, "run") == [
            keys.savepoint_part_key("run", e, t) for e in "ab" for t in (0, 120_000)
        ]
    finally:
        store.close()


def test_entity_updates_survive_a_restart_and_the_ack_saves_exactly_the_last_one(
    fresh_server: ServerProcess,
) -> None:
    """Regression (issue 11, item 5): UpdateEntityStates was held in server memory only: after a
    restart AckProcessedTime saved the initial state into a complete savepoint and said OK.
    Updates are durable now (a commit each, an ENTITY_UPDATED event), and what is loaded is
    exactly the bytes the client last gave, empty ones included."""
    with sk.SyncClient.connect(fresh_server.address) as c:
        c.create_run(
            "run", {"e": b"initial", "f": b"f-initial", "g": b"g-initial"}, start_ms=0, schedule_ms=MIN
        )
        before = c.get_run("run")
        assert c.update_entity_states([sk.EntityUpdate("run", "e", b"first")]) == 1
        # in one call the last update of an entity wins; the bytes are kept as given
        assert (
            c.update_entity_states(
                [
                    sk.EntityUpdate("run", "e", b"second"),
                    sk.EntityUpdate("run", "f", b""),
                    sk.EntityUpdate("run", "e", b"\x00last\xff"),
                ]
            )
            == 3
        )
        assert c.get_run("run") == before  # an update fills no savepoint
        assert c.list_savepoints("run") == []
    fresh_server.kill()  # SIGKILL: acknowledged means durable
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        outcome = c.ack_processed_times([sk.EntityAck("run", x, 60_000) for x in "efg"])
        assert outcome.completed == (("run", 60_000),)
        assert states(c.load_latest_savepoint("run")) == {"e": b"\x00last\xff", "f": b"", "g": b"g-initial"}
        # the current state stays current: the next savepoint gets it again, until the next update
        c.update_entity_state("run", "g", b"g-2")
        c.ack_processed_times([sk.EntityAck("run", x, 120_000) for x in "efg"])
        assert states(c.load_latest_savepoint("run")) == {"e": b"\x00last\xff", "f": b"", "g": b"g-2"}
        watch = c.watch(start_revision=1, kinds=["entity_updated"], reconnect=False)
        events = [next(watch) for _ in range(3)]
        watch.close()
        assert [json.loads(e.detail) for e in events] == [
            {"run_id": "run", "updates": 1},
            {"run_id": "run", "updates": 3},
            {"run_id": "run", "updates": 1},
        ]


def test_updates_of_a_deleted_or_rewound_run_are_gone(client: sk.SyncClient, uid: str) -> None:
    """A run deleted and initialised again, or resumed from a rewritten savepoint, does not
    pick up current states given before."""
    client.create_run(uid, {"e": b"e0"}, start_ms=0, schedule_ms=MIN)
    client.update_entity_state(uid, "e", b"stale")
    client.delete_run(uid)
    client.create_run(uid, {"e": b"e0"}, start_ms=0, schedule_ms=MIN)
    client.ack_processed_time(uid, "e", 60_000)
    assert states(client.load_latest_savepoint(uid)) == {"e": b"e0"}
    client.update_entity_state(uid, "e", b"before-rewrite")
    client.ack_processed_time(uid, "e", 120_000)
    client.update_savepoint(uid, 60_000, {"e": b"rewritten"}, schema_version=2)
    client.ack_processed_time(uid, "e", 120_000)
    assert states(client.load_latest_savepoint(uid)) == {"e": b"rewritten"}


def _corrupt(data_dir: Path, run_id: str, t: int, entity_id: str) -> None:
    store = RocksStore(data_dir)
    try:
        key = keys.savepoint_state_key(run_id, t, entity_id)
        assert store.get(Keyspace.SAVEPOINT_STATES, key) is not None
        batch = store.new_batch()
        batch.put(Keyspace.SAVEPOINT_STATES, key, b"bit rot")
        store.write(batch, sync=True)
    finally:
        store.close()


def test_a_corrupted_savepoint_is_detected_and_the_previous_one_loaded(
    fresh_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    with sk.SyncClient.connect(fresh_server.address) as c:
        c.create_run("run", {"a": b"", "b": b""}, start_ms=0, schedule_ms=MIN, keep=3)
        for t in (60_000, 120_000, 180_000):
            c.save_entity_states([sk.EntitySave("run", e, t, f"{e}{t}") for e in "ab"])
    assert fresh_server.terminate() == 0
    _corrupt(fresh_server.data_dir, "run", 180_000, "b")
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c:
        sp = c.load_latest_savepoint("run")
        assert sp.fell_back and sp.damaged_timestamps == (180_000,)
        assert sp.timestamp_ms == 120_000 and states(sp) == {"a": b"a120000", "b": b"b120000"}
        with pytest.raises(sk.FailedPreconditionError) as e:
            c.load_savepoint("run", 180_000)
        assert e.value.reason == "SAVEPOINT_DAMAGED"
        assert c.load_savepoint("run", 60_000).states == {"a": b"a60000", "b": b"b60000"}
    assert cli(["savepoints", "latest", "run", "--server", fresh_server.address]) == 0
    assert "fell back: damaged savepoints 180000" in capsys.readouterr().out
    assert "savepoint 180000 of run 'run' is damaged" in fresh_server.log()
    # every one damaged: a clear NOT_FOUND naming them
    fresh_server.terminate()
    for t in (60_000, 120_000):
        _corrupt(fresh_server.data_dir, "run", t, "a")
    fresh_server.start()
    with sk.SyncClient.connect(fresh_server.address) as c, pytest.raises(sk.NotFoundError) as e:
        c.load_latest_savepoint("run")
    assert e.value.reason == "NO_INTACT_SAVEPOINT"
    assert e.value.metadata["damaged_timestamps"] == "180000,120000,60000"


# -- tree snapshots ------------------------------------------------------------------------------


def _events(data_dir: Path, revision: int) -> list[tuple[EventKind, str]]:
    store = RocksStore(data_dir)
    try:
        start = keys.seq_key(revision, 0)
        return [
            (e.kind, str(e.address))
            for k, raw in store.scan(Keyspace.EVENTS, start, keys.seq_key(revision + 1, 0))
            for e in [WIRE_EVENTS.decode(*keys.seq_key_parts(k), raw)]
        ]
    finally:
        store.close()


def test_tree_snapshot_restore_and_fork(fresh_server: ServerProcess) -> None:
    with sk.SyncClient.connect(fresh_server.address) as c:
        for mt in (ORDER, ITEM, PART):
            c.register_machine_type(mt)
        root = c.create_root("order", "o1", b"v1")
        c.add_child(root, "item", "i1")
        c.add_child(root, "item", "i2")
        paid = c.transition(root, "pay")  # emits the outbound task "charge"
        old_task = paid.tasks[0]
        snap = c.create_tree_snapshot("o1", "before")
        assert (snap.node_count, snap.task_count, snap.revision) == (3, 1, paid.revision)
        # the tree moves on
        c.transition(sk.Ref.parse("o1/item:i1"), "pack")
        c.add_child(root, "item", "i3")
        c.delete_node(sk.Ref.parse("o1/item:i2"))
        moved = c.transition(root, "touch", b"v2")
        assert moved.node.transition_count == 2
        restored = c.restore_tree_snapshot("o1", "before")
        assert (restored.node_count, restored.deleted_count, restored.task_count) == (3, 1, 1)
        tree = {str(n.ref): n for n in c.walk("o1")}
        assert sorted(tree) == ["o1", "o1/item:i1", "o1/item:i2"]
        assert tree["o1"].state == "paid" and tree["o1"].data == b"v1"
        assert tree["o1/item:i1"].state == "open" and tree["o1/item:i2"].state == "open"
        # transition counts moved forward past both the current and the snapshot's counts
        assert tree["o1"].transition_count == 3 == restored.root.transition_count
        assert tree["o1/item:i1"].transition_count == 2
        assert tree["o1/item:i2"].create_revision == restored.revision  # recreated
        # the snapshot's pending task exists anew, referring to the restored node; the old
        # task's reference no longer matches the node, so it is stale
        tasks = {t.id: t for t in c.list_tasks("o1", tree=True)}
        new = [t for t in tasks.values() if t.create_revision == restored.revision]
        assert len(new) == 1 and new[0].name == "charge" and new[0].id != old_task.id
        assert new[0].transition_count == tree["o1"].transition_count
        assert new[0].node_create_revision == tree["o1"].create_revision
        assert old_task.transition_count != tree["o1"].transition_count
        # fork: a new tree from the same snapshot
        fork = c.fork_tree_snapshot("o1", "before", "o1-copy")
        assert fork.root.ref == sk.Ref("o1-copy") and fork.node_count == 3 and fork.task_count == 1
        copy = c.walk("o1-copy")
        assert [(str(n.ref), n.state) for n in copy] == [
            ("o1-copy", "paid"),
            ("o1-copy/item:i1", "open"),
            ("o1-copy/item:i2", "open"),
        ]
        fork_tasks = c.list_tasks("o1-copy")
        assert len(fork_tasks) == 1 and fork_tasks[0].node_create_revision == fork.revision
        with pytest.raises(sk.AlreadyExistsError):
            c.fork_tree_snapshot("o1", "before", "o1-copy")
        # a deleted tree comes back from its snapshot
        c.delete_node("o1")
        back = c.restore_tree_snapshot("o1", "before")
        assert back.deleted_count == 0 and len(c.walk("o1")) == 3
        # listing, names, deletion
        assert [s.name for s in c.list_tree_snapshots("o1")] == ["before"]
        with pytest.raises(sk.AlreadyExistsError):
            c.create_tree_snapshot("o1", "before")
        with pytest.raises(sk.NotFoundError):
            c.create_tree_snapshot("nope", "x")
        c.delete_tree_snapshot("o1", "before")
        assert c.list_tree_snapshots("o1") == []
        with pytest.raises(sk.NotFoundError) as e:
            c.restore_tree_snapshot("o1", "before")
        assert e.value.reason == "SNAPSHOT_NOT_FOUND"
    fresh_server.terminate()
    events = _events(fresh_server.data_dir, restored.revision)
    assert (EventKind.NODE_DELETED, "o1/item:i3") in events
    assert (EventKind.NODE_TRANSITIONED, "o1") in events and (EventKind.NODE_DATA_CHANGED, "o1") in events
    assert (EventKind.NODE_TRANSITIONED, "o1/item:i1") in events
    assert (EventKind.NODE_CREATED, "o1/item:i2") in events
    assert (EventKind.TASK_CREATED, "o1") in events
    assert events[-1] == (EventKind.TREE_RESTORED, "o1")


# -- backups -------------------------------------------------------------------------------------


def test_backup_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backups = tmp_path / "backups"
    server = ServerProcess(tmp_path / "data", "--backup-dir", str(backups)).start()
    try:
        with sk.SyncClient.connect(server.address) as c:
            c.register_machine_type(ORDER)
            c.create_root("order", "o1")
            c.create_run("run", {"e": b""}, start_ms=0, schedule_ms=MIN)
            c.save_entity_state("run", "e", 60_000, b"in the backup")
            backup = c.create_backup("nightly")
            assert backup.name == "nightly" and Path(backup.path) == backups / "nightly"
            assert backup.revision == 4 and backup.size_bytes > 0
            with pytest.raises(sk.AlreadyExistsError):
                c.create_backup("nightly")
            with pytest.raises(sk.InvalidArgumentError):
                c.create_backup("../elsewhere")
            # written after the backup: not in it
            c.transition("o1", "pay")
            c.save_entity_state("run", "e", 120_000, b"after the backup")
        assert cli(["backup", "--server", server.address, "--json"]) == 0
        second = json.loads(capsys.readouterr().out)
        assert second["revision"] == 6 and Path(second["path"]).is_dir()
    finally:
        server.terminate()
    # restore: a server on a copy of the backup folder
    copy = tmp_path / "restored"
    shutil.copytree(backup.path, copy)
    restored = ServerProcess(copy).start()
    try:
        with sk.SyncClient.connect(restored.address) as c:
            assert c.get_node("o1").state == "new"
            sp = c.load_latest_savepoint("run")
            assert (sp.timestamp_ms, sp.states) == (60_000, {"e": b"in the backup"})
            # the restored store continues from the backup's revision
            assert c.transition("o1", "pay").revision == backup.revision + 1
    finally:
        restored.terminate()


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_savepoints(
    server: ServerProcess, client: sk.SyncClient, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client.create_run(uid, {"a": b"hello", "b": b"world"}, start_ms=0, schedule_ms=MIN)
    client.save_entity_states([sk.EntitySave(uid, e, 130_000, e + "!") for e in "ab"])
    assert cli(["savepoints", "list", uid, "--server", server.address]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"run {uid}: start 0, every 60000 ms") and out[1].split()[0] == "TIMESTAMP"
    assert [line.split()[0] for line in out[2:]] == ["60000", "120000"]
    assert cli(["savepoints", "list", uid, "--server", server.address, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["run"]["entity_count"] == 2 and [s["timestamp_ms"] for s in listed["savepoints"]] == [
        60_000,
        120_000,
    ]
    assert cli(["savepoints", "latest", uid, "--server", server.address, "--json"]) == 0
    latest = json.loads(capsys.readouterr().out)
    assert latest["timestamp_ms"] == 120_000 and latest["states"] == {"a": "a!", "b": "b!"}
    assert cli(["savepoints", "latest", uid + "-nope", "--server", server.address]) == 1
    assert "NOT_FOUND RUN_NOT_FOUND" in capsys.readouterr().err


def test_readme_savepoints_example_runs(server: ServerProcess, uid: str) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Savepoints, tree snapshots and backups", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    code = block.group(1).replace("127.0.0.1:50051", server.address).replace("job-7", uid)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["{'counter': b'42', 'window': b'[1,2]'}", "120000 2 b'{}'"]


def test_savepoint_changes_are_events(client: sk.SyncClient, uid: str) -> None:
    run = client.create_run(uid, {"e": b""}, start_ms=0, schedule_ms=MIN)
    client.save_entity_state(uid, "e", 60_000, b"x")
    client.delete_run(uid)
    kinds = ["run_initialised", "entity_saved", "savepoint_completed", "run_deleted"]
    seen = []
    for event in client.watch(start_revision=run.create_revision, kinds=kinds):
        assert json.loads(event.detail)["run_id"] == uid
        seen.append(event.kind)
        if len(seen) == 4:
            break
    assert seen == kinds


def test_a_savepoint_larger_than_a_message_chunk_loads_whole(client: sk.SyncClient, uid: str) -> None:
    big = {f"e{i}": bytes([i]) * 700_000 for i in range(4)}  # streamed in several messages
    client.create_run(uid, dict.fromkeys(big, b""), start_ms=0, schedule_ms=MIN)
    client.save_entity_states([sk.EntitySave(uid, e, 60_000, s) for e, s in big.items()])
    assert client.load_latest_savepoint(uid).states == big
    assert client.list_savepoints(uid)[0].size_bytes == 4 * 700_000


def test_list_runs_returns_every_run_across_pages(client: sk.SyncClient, uid: str) -> None:
    ids = [f"{uid}-{i}" for i in range(5)]
    for run_id in ids:
        client.create_run(run_id, {"e": b"0"}, schedule_ms=60_000)
    client.delete_run(ids[2])
    listed = [r for r in client.list_runs(page_size=2) if r.run_id.startswith(uid)]
    assert [r.run_id for r in listed] == [ids[0], ids[1], ids[3], ids[4]]
    assert all(r.entity_count == 1 and r.schedule_ms == 60_000 for r in listed)
