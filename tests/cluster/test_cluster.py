"""Cluster mode end to end: several real server processes over one real PostgreSQL.

Every test checks the same invariants as the single-node crash test where it applies: every
acknowledged write is there exactly once (request ids retried on other servers never apply
twice), revisions are gap-free and events come in revision order, whichever server is asked.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import statekeeper as sk
from devtools.local_postgres import LocalPostgres
from statekeeper.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster.conftest import StartCluster
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess


def _clients(procs: list[ServerProcess], timeout: float = 10.0) -> list[sk.SyncClient]:
    return [sk.SyncClient.connect(p.address, timeout=timeout) for p in procs]


def _events_until(client: sk.SyncClient, top: int) -> list[sk.Event]:
    out = []
    for ev in client.watch(start_revision=1, progress=True):
        if ev.kind == "progress":
            if ev.revision >= top:
                return out
            continue
        out.append(ev)
    return out


def _retry(calls: list[Callable[[], object]], give_up_s: float = 30.0) -> object:
    """Call calls[0], calls[1], ... round robin until one succeeds (the same request_id each
    time); what a client of a cluster does when a server is down or failing over."""
    deadline = time.monotonic() + give_up_s
    i = 0
    while True:
        try:
            return calls[i % len(calls)]()
        except (sk.UnavailableError, sk.StatekeeperError) as e:
            if isinstance(e, sk.StatekeeperError) and e.code not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNKNOWN,
            ):
                raise
            if time.monotonic() > deadline:
                raise
            i += 1
            time.sleep(0.05)


def test_any_server_takes_any_call_with_one_gap_free_revision(start_cluster: StartCluster) -> None:
    procs = start_cluster(3)
    a, b, c = _clients(procs)
    try:
        a.register_machine_type(ORDER)
        b.register_machine_type(ITEM)
        for i in range(24):
            [a, b, c][i % 3].create_root("order", f"o-{i}", b"v0")
            [b, c, a][i % 3].add_child(f"o-{i}", "item", "x")
        results = {}
        for i in range(24):
            results[i] = [c, a, b][i % 3].transition(f"o-{i}", "pay", b"paid", request_id=f"pay-{i}")
        # A retry on another server returns the first outcome and applies nothing again.
        for i in range(24):
            assert [a, b, c][i % 3].transition(f"o-{i}", "pay", b"paid", request_id=f"pay-{i}") == results[i]
            assert b.get_node(f"o-{i}").transition_count == 1
        with pytest.raises(sk.InvalidArgumentError) as reused:
            a.transition("o-0", "cancel", request_id="pay-0")
        assert reused.value.reason == "REQUEST_ID_REUSED"
        top = max(r.revision for r in results.values())
        # One store-wide revision: gap-free, every event of every server, in order, on any server.
        for client in (a, b, c):
            events = _events_until(client, top)
            revisions = [e.revision for e in events]
            assert revisions == sorted(revisions)
            assert sorted(set(revisions)) == list(range(1, top + 1))
        # Each server reports the store-wide revision, not only that of its own commits.
        for proc in procs:
            with grpc.insecure_channel(proc.address) as channel:
                info = admin_pb2_grpc.AdminServiceStub(channel).GetServerInfo(
                    admin_pb2.GetServerInfoRequest()
                )
            assert info.revision >= top and info.durable_revision >= top, (proc.address, info)
        # The SDK's view of the same: every shard owned by exactly one live server.
        facts = a.server_info()
        owned = sorted(s for m in facts.cluster_members for s in m.owned_shards)
        assert facts.store == "postgresql" and owned == list(range(facts.shard_count)), facts
        assert sum(m.is_self for m in facts.cluster_members) == 1
        assert {n.ref.root_id for n in c.list_nodes("order")} == {f"o-{i}" for i in range(24)}
        # The shards are spread over the three servers.
        owners = {p.address: p.log().count("took shard") for p in procs}
        assert all(owners.values()), owners
    finally:
        for client in (a, b, c):
            client.close()


def test_a_batch_across_shards_and_a_backup_are_refused_clearly(start_cluster: StartCluster) -> None:
    (proc,) = start_cluster(1)
    with sk.SyncClient.connect(proc.address) as c:
        c.register_machine_type(ORDER)
        roots = [f"r{i}" for i in range(10)]
        with pytest.raises(sk.FailedPreconditionError) as e:
            batch = sk.Batch()
            for r in roots:
                batch.create_root("order", r)
            c.execute(batch)
        assert e.value.reason == "CROSS_SHARD_REQUEST"
        assert "one call writes one shard" in e.value.message
        with pytest.raises(sk.FailedPreconditionError) as backup:
            c.create_backup("nightly")
        assert backup.value.reason == "BACKUP_NOT_SUPPORTED"
        assert "pg_dump" in backup.value.message


def test_a_newer_store_format_is_refused_with_a_clear_message(
    start_cluster: StartCluster, postgres: LocalPostgres, dsn: str, tmp_path: Path
) -> None:
    (proc,) = start_cluster(1)
    proc.terminate()
    import asyncio

    import asyncpg

    async def bump() -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute("UPDATE statekeeper_meta SET value = 99 WHERE name = 'format_version'")
        await conn.close()

    asyncio.run(bump())
    with pytest.raises(RuntimeError) as e:
        ServerProcess(tmp_path / "again", "--store", dsn).start()
    assert "format version 99, newer than this server's" in str(e.value)


def _load(
    procs: list[ServerProcess], roots: list[str], stop: threading.Event, acked: dict[str, list[str]]
) -> list[threading.Thread]:
    """Writers: each transitions its roots with fresh request ids, retrying every request id on
    every server until it is acknowledged; acked[root] lists the request ids acknowledged."""
    lock = threading.Lock()

    def writer(k: int) -> None:
        clients = [sk.SyncClient.connect(p.address, timeout=5.0, wait_ready=None) for p in procs]
        n = 0
        try:
            while not stop.is_set():
                root = roots[(k + n) % len(roots)]
                rid = f"w{k}-{n}"
                calls = [
                    (
                        lambda cl=cl, root=root, rid=rid: cl.transition(
                            root, "touch", rid.encode(), request_id=rid
                        )
                    )
                    for cl in clients[k % len(clients) :] + clients[: k % len(clients)]
                ]
                _retry(calls, give_up_s=60.0)
                with lock:
                    acked.setdefault(root, []).append(rid)
                n += 1
        finally:
            for cl in clients:
                cl.close()

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    return threads


def _check_exactly_once(client: sk.SyncClient, acked: dict[str, list[str]], start_count: int) -> int:
    """Every acknowledged request id applied exactly once; returns the top revision."""
    top = 0
    for root, rids in acked.items():
        node = client.get_node(root)
        assert node.transition_count == start_count + len(rids), (root, node.transition_count, len(rids))
        top = max(top, node.update_revision)
    return top


def _prepare(client: sk.SyncClient, n: int) -> list[str]:
    client.register_machine_type(ORDER)
    roots = [f"load-{i}" for i in range(n)]
    for r in roots:
        client.create_root("order", r)
        client.transition(r, "pay")  # touch is allowed from paid
    return roots


def test_kill_9_of_a_server_under_load_moves_its_shards_and_applies_nothing_twice(
    start_cluster: StartCluster,
) -> None:
    procs = start_cluster(3)
    with sk.SyncClient.connect(procs[1].address) as setup:
        roots = _prepare(setup, 16)
    stop = threading.Event()
    acked: dict[str, list[str]] = {}
    threads = _load(procs, roots, stop, acked)
    time.sleep(2.0)
    procs[0].kill()  # SIGKILL under load
    before = sum(len(v) for v in acked.values())
    time.sleep(6.0)  # past the lease: its shards are taken over
    stop.set()
    for t in threads:
        t.join(90)
    after = sum(len(v) for v in acked.values())
    assert after > before, "writes went on after the kill"
    with sk.SyncClient.connect(procs[2].address) as check:
        top = _check_exactly_once(check, acked, start_count=1)
        revisions = sorted({e.revision for e in _events_until(check, top)})
        assert revisions == list(range(1, top + 1))
    assert "took shard" in procs[1].log() + procs[2].log()


def test_a_server_paused_past_its_lease_can_never_commit_again_and_steps_down(
    start_cluster: StartCluster,
) -> None:
    procs = start_cluster(2)
    a, b = procs
    with sk.SyncClient.connect(b.address) as cb:
        cb.register_machine_type(ORDER)
        # A root whose shard the paused server (a) owns.
        root = next(f"p-{i}" for i in range(1000) if _owner_of(cb, f"p-{i}", a, b) == a.address)
        cb.create_root("order", root)
        cb.transition(root, "pay")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # While a is paused, a write sent straight to it waits in its socket.
        results: list[object] = []

        def to_paused() -> None:
            with sk.SyncClient.connect(a.address, timeout=30.0, wait_ready=None) as ca:
                try:
                    results.append(ca.transition(root, "touch", b"from-paused", request_id="paused-1"))
                except sk.StatekeeperError as e:
                    results.append(e)

        sender = threading.Thread(target=to_paused, daemon=True)
        sender.start()
        time.sleep(6.0)  # well past the 2.5 s lease: b takes the shard
        with sk.SyncClient.connect(b.address, timeout=10.0) as cb:
            moved = _retry([lambda: cb.transition(root, "touch", b"from-b", request_id="b-1")])
            assert isinstance(moved, sk.TransitionResult)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    sender.join(30)
    assert results, "the paused server answered"
    outcome = results[0]
    with sk.SyncClient.connect(b.address) as cb:
        # The paused server never committed with its stale state: it either tried and was
        # fenced (NOT_SHARD_OWNER), or saw it lost the shard first and forwarded the call to
        # the new owner, which applied it after b's write.
        if isinstance(outcome, sk.TransitionResult):
            assert outcome.revision > moved.revision and outcome.node.transition_count == 3
        else:
            assert isinstance(outcome, sk.UnavailableError), outcome
            assert outcome.reason in ("NOT_SHARD_OWNER", "SHARD_UNAVAILABLE"), outcome
            assert cb.get_node(root).data == b"from-b"
        # Retrying the paused server's request applies it once, at the new owner.
        retried = _retry([lambda: cb.transition(root, "touch", b"from-paused", request_id="paused-1")])
        assert isinstance(retried, sk.TransitionResult)
        assert cb.get_node(root).transition_count == 3
    deadline = time.monotonic() + 10
    while "gave up shard" not in a.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "gave up shard" in a.log()


def _owner_of(client: sk.SyncClient, root: str, a: ServerProcess, b: ServerProcess) -> str:
    """The address of the server that owns root's shard (from the server logs' shard lists)."""
    import zlib

    shard = zlib.crc32(root.encode()) % 8
    for proc in (a, b):
        held: set[int] = set()
        for line in proc.log().splitlines():
            for verb, sign in (("took shard(s) ", 1), ("gave up shard(s) ", -1)):
                if verb in line:
                    spec = line.split(verb, 1)[1].split(" ", 1)[0].rstrip(":")
                    for part in spec.split(","):
                        lo, _, hi = part.partition("-")
                        rng = set(range(int(lo), int(hi or lo) + 1))
                        held = held | rng if sign > 0 else held - rng
        if shard in held:
            return proc.address
    return ""


def test_postgres_restarted_under_load_loses_nothing_and_applies_nothing_twice(
    start_cluster: StartCluster, postgres: LocalPostgres
) -> None:
    procs = start_cluster(2)
    with sk.SyncClient.connect(procs[0].address) as setup:
        roots = _prepare(setup, 12)
    stop = threading.Event()
    acked: dict[str, list[str]] = {}
    refused: list[str] = []
    threads = _load(procs, roots, stop, acked)
    time.sleep(1.5)
    postgres.stop("fast")
    try:
        time.sleep(3.5)  # past the lease: the servers cannot renew, they hold no shard now
        with sk.SyncClient.connect(procs[1].address, timeout=10.0) as probe:
            started = time.monotonic()
            try:
                probe.transition(roots[0], "touch", request_id="while-down")
            except sk.StatekeeperError as e:
                refused.append(e.code.name)
            waited = time.monotonic() - started
    finally:
        postgres.start()
    assert waited < 2.0, f"refused only after {waited:.1f} s"
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(90)
    assert refused == ["UNAVAILABLE"], refused
    with sk.SyncClient.connect(procs[1].address) as check:
        # The probe's outcome is settled by retrying its request id: applied exactly once.
        _retry([lambda: check.transition(roots[0], "touch", request_id="while-down")])
        acked.setdefault(roots[0], []).append("while-down")
        top = _check_exactly_once(check, acked, start_count=1)
        revisions = sorted({e.revision for e in _events_until(check, top)})
        assert revisions == list(range(1, top + 1))
