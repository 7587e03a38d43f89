"""Housekeeping in cluster mode, with the embedded store's flags: expired request ids and finished
tasks are deleted by the owner of their shard, in transactions fenced by the shard's generation;
events are compacted by the holder of shard 0 (fenced by its generation), within what every
durable consumer (whichever server holds it) still needs, and every server then refuses a Watch
from a compacted revision as one server does; a kill -9 of the compacting server hands the
compaction over with shard 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest

import statekeeper as sk
from statekeeper.v1 import admin_pb2, admin_pb2_grpc, event_pb2, event_pb2_grpc
from statekeeper_server.cluster.compaction import ClusterCompactor
from statekeeper_server.cluster.housekeeping import ShardSweeps
from statekeeper_server.core.shards import ShardMap
from statekeeper_server.domain.errors import OutOfRange
from statekeeper_server.domain.model import Event, EventKind, NodeAddress
from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS
from statekeeper_server.features.events.consumers import ConsumerManager
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.features.events.retention import RetentionPolicy
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.postgres import PgStore, ShardTable
from statekeeper_server.storage.postgres.schema import KEYSPACE_IDS
from tests.cluster.conftest import SHARDS, StartCluster
from tests.conftest import ORDER
from tests.server.test_tasks import job_type
from tests.support import ServerProcess

KS = KEYSPACE_IDS
COMPACTION = ("--event-retention-revisions", "5", "--event-compaction-interval-s", "0.25")


def _shard(key: str) -> int:
    return zlib.crc32(key.encode()) % int(SHARDS)


def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    return asyncio.run(run())


def _rows_by_shard(dsn: str, keyspace: Keyspace) -> dict[int, int]:
    rows = _sql(dsn, "SELECT shard, count(*) FROM statekeeper_kv WHERE ks = $1 GROUP BY shard", KS[keyspace])
    return {int(r[0]): int(r[1]) for r in rows}


def _info(address: str) -> admin_pb2.GetServerInfoResponse:
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=10)


def _owned(address: str) -> dict[str, set[int]]:
    """address -> the shards it owns, as the server at `address` sees it."""
    return {m.address: set(m.owned_shards) for m in _info(address).cluster_members}


def _wait(predicate: Callable[[], bool], what: str | Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.1)


def _balanced(procs: list[ServerProcess]) -> dict[str, set[int]]:
    """Wait until every live server owns a share of the shards (and all agree); the owners."""

    def settled() -> bool:
        views = [_owned(p.address) for p in procs]
        owned = views[0]
        shares = [owned.get(p.address, set()) for p in procs]
        return (
            all(v == owned for v in views)
            and all(shares)
            and sorted(s for share in shares for s in share) == list(range(int(SHARDS)))
        )

    _wait(settled, "the shards to be spread over the servers")
    return _owned(procs[0].address)


def _retry(call: Callable[[], Any]) -> Any:
    """A write that may meet a shard moving (after a kill): retried, as a client would."""
    for _ in range(200):
        try:
            return call()
        except sk.UnavailableError:
            time.sleep(0.1)
    raise AssertionError("still unavailable")


def _logged(proc: ServerProcess, prefix: str) -> list[str]:
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            msg = json.loads(line).get("msg", "")
            if msg.startswith(prefix):
                out.append(msg)
    return out


# -- request ids and finished tasks ------------------------------------------------------------


def test_expired_request_ids_and_finished_tasks_are_deleted_in_every_shard_by_its_owner(
    start_cluster: StartCluster, dsn: str
) -> None:
    procs = start_cluster(3, "--request-ttl-s", "5", "--task-retention-s", "2", "--log-level", "DEBUG")
    _balanced(procs)
    roots = [f"r-{i}" for i in range(32)]
    every = set(range(int(SHARDS)))
    assert {_shard(r) for r in roots} == every
    with sk.SyncClient.connect(procs[0].address) as c:
        c.register_machine_type(job_type("job", "jobs", delay_ms=200))

    async def write() -> None:
        clients = [await sk.Client.connect(p.address) for p in procs]
        try:
            await asyncio.gather(
                *(clients[i % 3].create_root("job", r, request_id=f"create-{r}") for i, r in enumerate(roots))
            )
            await asyncio.gather(
                *(
                    clients[(i + 1) % 3].transition(r, "start", request_id=f"start-{r}")
                    for i, r in enumerate(roots)
                )
            )
        finally:
            for client in clients:
                await client.close()

    asyncio.run(write())
    assert set(_rows_by_shard(dsn, Keyspace.REQUESTS)) == every
    assert set(_rows_by_shard(dsn, Keyspace.REQUEST_EXPIRY)) == every
    clients = [sk.SyncClient.connect(p.address) for p in procs]
    try:
        # The timers fire (their tasks complete: finished), then go after the retention.
        _wait(lambda: all(clients[2].get_node(r).state == "timeout" for r in roots), "the timers")
        task_ids = [t.id for r in roots for t in clients[1].list_tasks(node=r)]
        assert len(task_ids) == len(roots)
        assert set(_rows_by_shard(dsn, Keyspace.TASKS_FINISHED)) == every

        def gone(keyspace: Keyspace) -> Callable[[], bool]:
            return lambda: not _rows_by_shard(dsn, keyspace)

        for keyspace in (
            Keyspace.REQUESTS,
            Keyspace.REQUEST_EXPIRY,
            Keyspace.TASKS,
            Keyspace.TASKS_BY_NODE,
            Keyspace.TASKS_FINISHED,
        ):
            _wait(gone(keyspace), f"{keyspace.value} rows to be deleted")
        for i, task_id in enumerate(task_ids):
            with pytest.raises(sk.NotFoundError):
                clients[i % 3].get_task(task_id)
        # The record is gone, not merely expired: the same request id runs anew (and is
        # refused: the root exists), sent to its owner or through another server.
        for i, root in enumerate(roots[:6]):
            with pytest.raises(sk.AlreadyExistsError):
                clients[i % 3].create_root("job", root, request_id=f"create-{root}")
    finally:
        for c in clients:
            c.close()
    # Each server deleted only in shards it had taken; together, in every shard.
    swept: set[int] = set()
    for proc in procs:
        taken = _taken(proc)
        for msg in _logged(proc, "deleted "):
            if " in shard(s) " not in msg:
                continue
            shards = set(json.loads(msg.rpartition(" in shard(s) ")[2]))
            assert shards <= taken, (proc.address, msg, taken)
            swept |= shards
    assert swept == every


def _taken(proc: ServerProcess) -> set[int]:
    """Every shard the server took (its log: "took shard(s) 0-2,5 (now ...)")."""
    out: set[int] = set()
    for msg in _logged(proc, "took shard(s) "):
        for part in msg.split()[2].split(","):
            lo, _, hi = part.partition("-")
            out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def test_a_server_that_lost_a_shard_deletes_nothing_in_it(dsn: str) -> None:
    """Fencing at the store, as in test_fencing.py: two stores stand for two servers, the first
    still believing it holds shard 0 after the second took it."""

    async def main() -> None:
        a = await PgStore.open(dsn, 4)
        b = await PgStore.open(dsn, 4)
        conn = await asyncpg.connect(dsn)
        try:
            a.server_id, b.server_id = "a", "b"
            ta = ShardTable(a.pool, "a", "a:1", lease_s=60.0)
            tb = ShardTable(b.pool, "b", "b:1", lease_s=60.0)
            gen_a = await ta.acquire(0)
            assert gen_a is not None
            a.owned[0] = gen_a
            # An expired request id and two revisions of events, in shard 0.
            expired = keys.expiry_key(1_000, "rid")
            record = codec.encode_request(b"fp", b"resp", 1_000, 1)
            await conn.executemany(
                "INSERT INTO statekeeper_kv (ks, shard, key, value) VALUES ($1, 0, $2, $3)",
                [
                    (KS[Keyspace.REQUEST_EXPIRY], expired, b""),
                    (KS[Keyspace.REQUESTS], b"rid", record),
                    (KS[Keyspace.EVENTS], keys.seq_key(1, 0), b"e1"),
                    (KS[Keyspace.EVENTS], keys.seq_key(2, 0), b"e2"),
                ],
            )
            await conn.execute("UPDATE statekeeper_shards SET lease_until = now() - interval '1 second'")
            gen_b = await tb.acquire(0)
            assert gen_b == gen_a + 1
            b.owned[0] = gen_b
            stale = ShardSweeps(a, _held(a.owned), task_retention_ms=1)
            assert await stale.sweep() == (0, 0)
            with pytest.raises(Exception, match="no longer owns shard"):
                await a.compact_events(2)
            assert _count(await conn.fetch("SELECT ks FROM statekeeper_kv WHERE shard = 0")) == {
                KS[Keyspace.REQUEST_EXPIRY]: 1,
                KS[Keyspace.REQUESTS]: 1,
                KS[Keyspace.EVENTS]: 2,
            }
            # The shard's holder deletes them; the other store's next read of events learns it.
            assert await ShardSweeps(b, _held(b.owned), task_retention_ms=1).sweep() == (1, 0)
            assert await b.compact_events(2) == 1
            left = _count(await conn.fetch("SELECT ks FROM statekeeper_kv WHERE shard = 0"))
            assert left == {KS[Keyspace.EVENTS]: 1, KS[Keyspace.META]: 1}
            with pytest.raises(OutOfRange) as refused:
                await a.durable().scan(Keyspace.EVENTS, keys.seq_key(1, 0), None, limit=10)
            assert refused.value.reason == "REVISION_COMPACTED"
            assert refused.value.metadata["oldest_revision"] == "2"
            assert a.events_compacted == 1
            rows = await a.durable().scan(Keyspace.EVENTS, keys.seq_key(2, 0), None, limit=10)
            assert rows == [(keys.seq_key(2, 0), b"e2")]
        finally:
            await conn.close()
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def test_the_age_rule_keeps_what_is_younger_than_the_age_in_cluster_mode(dsn: str) -> None:
    """--event-retention-age-s on a cluster store: the cut-off is found among the stored events
    (in the form the servers store them), and what is younger stays."""

    async def main() -> None:
        store = await PgStore.open(dsn, 4)
        conn = await asyncpg.connect(dsn)
        try:
            store.server_id = "a"
            generation = await ShardTable(store.pool, "a", "a:1", lease_s=60.0).acquire(0)
            assert generation is not None
            store.owned[0] = generation
            now = int(time.time() * 1000)
            minute = 60_000
            # Revisions 1..10, one a minute, the newest now.
            await conn.executemany(
                "INSERT INTO statekeeper_kv (ks, shard, key, value) VALUES ($1, 0, $2, $3)",
                [
                    (
                        KS[Keyspace.EVENTS],
                        keys.seq_key(r, 0),
                        WIRE_EVENTS.encode(_event(r, now - (10 - r) * minute)),
                    )
                    for r in range(1, 11)
                ],
            )
            hub = EventHub(store, 10, event_codec=WIRE_EVENTS)
            consumers = ConsumerManager(store, hub, lambda m, s: asyncio.Future(), load=False)
            policy = RetentionPolicy(keep_revisions=1, keep_age_s=4.5 * 60, interval_s=60.0)

            async def tails() -> list[int]:
                return [10]

            compactor = ClusterCompactor(store, hub, consumers, policy, _held(store.owned), tails)
            # Younger than 4.5 minutes: revisions 6..10 (6 is 4 minutes old).
            assert await compactor.target() == 6
            assert await compactor.run_once() == 5
            assert (hub.oldest_revision, store.events_compacted) == (6, 5)
            first = await conn.fetchval(
                "SELECT key FROM statekeeper_kv WHERE ks = $1 ORDER BY key LIMIT 1", KS[Keyspace.EVENTS]
            )
            assert keys.seq_key_parts(bytes(first)) == (6, 0)
        finally:
            await conn.close()
            await store.aclose()

    asyncio.run(main())


def _event(revision: int, time_ms: int) -> Event:
    return Event(revision, 0, EventKind.NODE_CREATED, time_ms, NodeAddress(f"r{revision}"), node_type="order")


def _held(owned: dict[int, int]) -> ShardMap:
    shards = ShardMap(4)
    shards.owned = dict(owned)
    return shards


def _count(rows: list[asyncpg.Record]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in rows:
        out[int(r[0])] = out.get(int(r[0]), 0) + 1
    return out


# -- events --------------------------------------------------------------------------------


def _oldest(procs: list[ServerProcess]) -> list[int]:
    return [_info(p.address).oldest_event_revision for p in procs]


def _revision(dsn: str) -> int:
    """The store-wide revision (a server's GetServerInfo has its own commits' view)."""
    return int(_sql(dsn, "SELECT revision FROM statekeeper_revision WHERE id = 1")[0][0])


def _stored_events(dsn: str) -> tuple[int, int]:
    """(the oldest revision with an event in the store, the compaction mark)."""
    first = _sql(
        dsn, "SELECT key FROM statekeeper_kv WHERE ks = $1 ORDER BY key LIMIT 1", KS[Keyspace.EVENTS]
    )[0][0]
    mark = _sql(
        dsn,
        "SELECT value FROM statekeeper_kv WHERE ks = $1 AND key = $2",
        KS[Keyspace.META],
        b"events_compacted_revision",
    )
    return keys.seq_key_parts(bytes(first))[0], keys.read_u64(bytes(mark[0][0])) if mark else 0


def _watch_refused(address: str, revision: int) -> sk.StatekeeperError:
    with sk.SyncClient.connect(address) as c, pytest.raises(sk.StatekeeperError) as refused:
        next(iter(c.watch(start_revision=revision, reconnect=False)))
    return refused.value


def _write(procs: list[ServerProcess], prefix: str, n: int) -> None:
    clients = [sk.SyncClient.connect(p.address) for p in procs]
    try:
        for i in range(n):
            client = clients[i % len(clients)]
            _retry(
                lambda client=client, i=i: client.create_root(
                    "order", f"{prefix}-{i}", request_id=f"{prefix}-{i}"
                )
            )
    finally:
        for c in clients:
            c.close()


def _name_not_on(owners: dict[str, set[int]], avoid: str) -> tuple[str, str]:
    """A consumer name whose shard another server than `avoid` owns, and that server."""
    for i in range(1000):
        name = f"holder-{i}"
        owner = next(a for a, shards in owners.items() if _shard(name) in shards)
        if owner != avoid:
            return name, owner
    raise AssertionError("no such name")


def test_events_are_compacted_once_for_the_store_and_every_server_refuses_a_compacted_watch(
    start_cluster: StartCluster, dsn: str
) -> None:
    procs = start_cluster(3, *COMPACTION, "--event-retention-max-revisions", "20")
    owners = _balanced(procs)
    compactor = next(a for a, shards in owners.items() if 0 in shards)
    laggard, _ = _name_not_on(owners, compactor)  # its position is read from the store
    with sk.SyncClient.connect(procs[0].address) as c:
        c.register_machine_type(ORDER)
        # A consumer that never acknowledges: it holds events back up to the cap only.
        c.create_consumer(laggard, start="earliest")
    _write(procs, "a", 12)
    top = _revision(dsn)
    assert top - 4 > 1  # the count rule alone would compact
    # Below the cap the consumer holds everything (sampled over several compaction runs).
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert _oldest(procs) == [1, 1, 1]
        time.sleep(0.1)
    _write(procs, "b", 40)
    top = _revision(dsn)
    # Past the cap the consumer is cut off; the count rule keeps the newest 5 revisions.
    _wait(lambda: _oldest(procs) == [top - 4] * 3, "compaction on every server")
    assert _stored_events(dsn) == (top - 4, top - 5)
    for proc in procs:
        refused = _watch_refused(proc.address, 1)
        assert isinstance(refused, sk.OutOfRangeError), refused
        assert refused.reason == "REVISION_COMPACTED"
        assert refused.metadata["oldest_revision"] == str(top - 4)
        with sk.SyncClient.connect(proc.address) as c:
            first = next(iter(c.watch(start_revision=top - 4)))
            assert first.revision == top - 4
            with pytest.raises(sk.OutOfRangeError) as behind:
                next(iter(c.subscribe(laggard, reconnect=False)))
            assert behind.value.reason == "CONSUMER_BEHIND_RETENTION"
    # One server compacted (the holder of shard 0), the others deleted nothing.
    runs = {p.address: _logged(p, "compacted events below revision") for p in procs}
    assert runs[compactor] and not any(runs[a] for a in runs if a != compactor), runs


def test_an_unacked_consumer_on_another_server_holds_compaction_back_and_a_kill_hands_it_over(
    start_cluster: StartCluster, dsn: str
) -> None:
    procs = start_cluster(3, *COMPACTION)
    owners = _balanced(procs)
    compactor = next(a for a, shards in owners.items() if 0 in shards)
    name, _ = _name_not_on(owners, compactor)
    with sk.SyncClient.connect(procs[0].address) as c:
        c.register_machine_type(ORDER)
    _write(procs, "a", 20)
    first = _revision(dsn)
    _wait(
        lambda: _oldest(procs) == [first - 4] * 3, lambda: f"the first compaction: {_oldest(procs)}, {first}"
    )
    with sk.SyncClient.connect(procs[2].address) as c:
        c.create_consumer(name, start="latest")  # held by `holder`, not by the compactor
    _write(procs, "b", 30)
    top = _revision(dsn)
    with sk.SyncClient.connect(procs[1].address) as c:
        acked = first + 5
        assert c.ack(name, up_to_revision=acked) == acked
    # It holds compaction at its position, well before where the count rule would go (top - 4).
    _wait(lambda: _oldest(procs) == [acked + 1] * 3, "compaction up to the consumer")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # several compaction runs
        assert _oldest(procs) == [acked + 1] * 3
        time.sleep(0.1)
    assert _stored_events(dsn) == (acked + 1, acked)
    # kill -9 of the compacting server: another takes shard 0, and compaction with it.
    victim = next(p for p in procs if p.address == compactor)
    victim.kill()
    survivors = [p for p in procs if p is not victim]
    _write(survivors, "c", 10)
    top = _revision(dsn)
    with sk.SyncClient.connect(survivors[0].address) as c:
        _retry(lambda: c.ack(name, up_to_revision=top))
    _wait(lambda: _oldest(survivors) == [top - 4] * 2, "compaction after the kill", timeout=90)
    assert _stored_events(dsn) == (top - 4, top - 5)
    for proc in survivors:
        refused = _watch_refused(proc.address, acked + 1)
        assert isinstance(refused, sk.OutOfRangeError) and refused.reason == "REVISION_COMPACTED"
        assert refused.metadata["oldest_revision"] == str(top - 4)
    took_over = [p for p in survivors if _logged(p, "compacted events below revision")]
    assert took_over and all(0 in _taken(p) for p in took_over), "no survivor took compaction over"


def test_a_paused_server_holds_compaction_back_while_alive_and_then_refuses_what_it_missed(
    start_cluster: StartCluster, dsn: str
) -> None:
    # A longer lease than the other tests: the paused server counts as alive for 5 s.
    procs = start_cluster(2, *COMPACTION, "--lease-s", "5")
    owners = _balanced(procs)
    live, paused = sorted(procs, key=lambda p: 0 if 0 in owners[p.address] else 1)  # live compacts
    roots = (f"p-{i}" for i in range(10_000) if _shard(f"p-{i}") in owners[live.address])
    with sk.SyncClient.connect(live.address) as c:
        c.register_machine_type(ORDER)
        for _ in range(10):
            c.create_root("order", next(roots))
    top = _revision(dsn)
    _wait(lambda: _oldest(procs) == [top - 4] * 2, "the first compaction")

    def reported() -> tuple[bool, int, int]:
        """(the paused server counts as alive, how far it reported reading, the mark)."""
        row = _sql(
            dsn,
            "SELECT heartbeat > now() - interval '5 seconds', tail_revision, (SELECT value FROM "
            "statekeeper_kv WHERE ks = $1 AND shard = 0 AND key = $2) FROM statekeeper_servers WHERE address = $3",
            KS[Keyspace.META],
            b"events_compacted_revision",
            paused.address,
        )[0]
        return bool(row[0]), int(row[1]), keys.read_u64(bytes(row[2]))

    _wait(lambda: reported()[1] == top, "the paused server to report it read everything")
    # A Watch on it, caught up: after the pause it must go on without a gap, or be refused.
    channel = grpc.insecure_channel(paused.address)
    stream = event_pb2_grpc.EventServiceStub(channel).Watch(event_pb2.WatchRequest(start_revision=top + 1))
    assert next(stream).progress_revision == top
    received: list[tuple[int, object]] = []

    def read() -> None:
        try:
            for message in stream:
                received.extend((e.revision, e) for e in message.events)
        except grpc.RpcError as e:
            received.append((-1, e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert paused.proc is not None
    os.kill(paused.proc.pid, signal.SIGSTOP)
    try:
        # While its heartbeat is within the lease, nothing it has not read is deleted, although
        # the count rule alone would delete up to the newest revision - 5.
        held_back = 0

        def check() -> bool:
            nonlocal held_back
            alive, _, mark = reported()
            if alive:
                assert mark <= top, (mark, top)
                held_back += _revision(dsn) - 5 > top
            return alive

        with sk.SyncClient.connect(live.address) as c:
            for _ in range(20):
                c.create_root("order", next(roots))
                check()
        newest = _revision(dsn)
        while check():
            time.sleep(0.1)
        assert held_back, "the paused server's lease ran out too soon (too slow a machine)"
        _wait(lambda: reported()[2] == newest - 5, "compaction past the paused server")
    finally:
        os.kill(paused.proc.pid, signal.SIGCONT)
    # It missed revisions top + 1 .. newest - 5: its Watch is refused, not handed a gap.
    reader.join(60)
    channel.close()
    assert received and received[-1][0] == -1, received
    error = received[-1][1]
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.OUT_OF_RANGE, error
    assert all(revision == -1 for revision, _ in received), "it received events after a gap"
    _wait(lambda: _oldest([paused]) == [newest - 4], "the paused server's oldest revision")
    refused = _watch_refused(paused.address, top + 1)
    assert refused.reason == "REVISION_COMPACTED" and refused.metadata["oldest_revision"] == str(newest - 4)
    assert "before this server read them" in paused.log()
