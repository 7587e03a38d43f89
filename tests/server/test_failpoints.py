"""Failpoints in the commit path (`--failpoints`, docs/operations.md "Failpoints"): what the client
sees and what survives when a commit fails before the write, when its fsync fails (fail-stop),
and when the server dies after the write but before the reply.

Each test first writes acknowledged state with a normal server, stops it cleanly, then starts a
server on the same data with one failpoint switched on, and afterwards (where the process
ended) a normal one again to check what the store holds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

import statekeeper as sk
from tests.conftest import ITEM, ORDER
from tests.support import ServerProcess


def _prepare(data: Path) -> tuple[sk.Node, int]:
    """Types, a root "a" transitioned once and a root "b"; all acknowledged, server stopped
    cleanly. Returns node a as acknowledged and the last acknowledged revision."""
    proc = ServerProcess(data).start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.register_machine_type(ORDER)
            c.register_machine_type(ITEM)
            c.create_root("order", "a", b"v0")
            c.create_root("order", "b")
            c.transition("a", "touch", b"v1")
            a = c.get_node("a")
    finally:
        assert proc.terminate() == 0
    return a, a.update_revision


def _exited(proc: ServerProcess, timeout: float = 15.0) -> int:
    assert proc.proc is not None
    return proc.proc.wait(timeout)


def _log_records(proc: ServerProcess) -> list[dict[str, object]]:
    out = []
    for line in proc.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_before_write_error_answers_unavailable_writes_nothing_and_keeps_serving(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, top = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.before_write=error").start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            attempts = [
                lambda: c.transition("a", "touch", b"lost", request_id="rid-1"),
                lambda: c.create_root("order", "c"),
                lambda: c.add_child("a", "item", "i"),
                lambda: c.delete_node("b"),
                lambda: c.execute(sk.Batch().transition("a", "touch").add_child("b", "item", "j")),
                lambda: c.register_machine_type(sk.MachineType("newtype", 1, ["s"], "s")),
            ]
            for attempt in attempts:
                with pytest.raises(sk.UnavailableError) as e:
                    attempt()
                assert e.value.reason == "COMMIT_FAILED", e.value
            # Nothing was applied, reads still work, and the server is still serving.
            assert c.get_node("a") == a
            assert c.get_node("b").child_counts == {}
            with pytest.raises(sk.NotFoundError):
                c.get_node("c")
            with pytest.raises(sk.NotFoundError):
                c.get_machine_type("newtype")
        assert proc.health() == 1  # SERVING
        assert proc.proc is not None and proc.proc.poll() is None
        assert "commit failed before the write" in proc.log()
    finally:
        assert proc.terminate() == 0
    # Without the failpoint: still nothing of the failed calls, and no revision was used up.
    proc = ServerProcess(data).start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            assert c.get_node("a") == a
            with pytest.raises(sk.NotFoundError):
                c.get_node("c")
            # The failed attempt with rid-1 left no outcome behind: the retry applies now.
            retried = c.transition("a", "touch", b"lost", request_id="rid-1")
            assert (retried.revision, retried.node.transition_count) == (top + 1, a.transition_count + 1)
    finally:
        proc.terminate()


def test_before_write_error_once_then_the_same_server_recovers(tmp_path: Path) -> None:
    """`error*1`: the first commit group fails, later ones succeed, in the same process."""
    data = tmp_path / "data"
    a, top = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.before_write=error*1").start()
    try:
        # retries=0: the SDK would retry this write itself (it has a request_id); see it fail
        with sk.SyncClient.connect(proc.address, retries=0) as c:
            with pytest.raises(sk.UnavailableError) as e:
                c.transition("a", "touch", b"v2", request_id="rid-1")
            assert e.value.reason == "COMMIT_FAILED"
            assert c.get_node("a") == a
            # The failpoint is spent: the retry with the same request_id applies, once.
            first = c.transition("a", "touch", b"v2", request_id="rid-1")
            assert first.revision == top + 1 and first.node.transition_count == a.transition_count + 1
            assert c.transition("a", "touch", b"v2", request_id="rid-1") == first
            assert c.get_node("a").transition_count == a.transition_count + 1
            assert c.create_root("order", "c").create_revision == top + 2
        assert proc.health() == 1
    finally:
        assert proc.terminate() == 0


def test_before_write_error_under_concurrency_each_call_all_or_nothing(tmp_path: Path) -> None:
    """Concurrent calls while one commit group fails: each call either succeeded (and is in the
    store) or got UNAVAILABLE (and is not); the revisions of the successes stay gap-free."""
    data = tmp_path / "data"
    _, top = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.before_write=error*1").start()
    n = 16

    async def main() -> tuple[dict[int, int], set[int]]:
        async with await sk.Client.connect(proc.address) as c:

            async def create(i: int) -> tuple[int, int | None]:
                try:
                    return i, (await c.create_root("order", f"r{i}")).create_revision
                except sk.UnavailableError as e:
                    assert e.reason == "COMMIT_FAILED"
                    return i, None

            outcomes = await asyncio.gather(*(create(i) for i in range(n)))
            ok = {i: rev for i, rev in outcomes if rev is not None}
            failed = {i for i, rev in outcomes if rev is None}
            for i in range(n):
                if i in ok:
                    assert (await c.get_node(f"r{i}")).create_revision == ok[i]
                else:
                    with pytest.raises(sk.NotFoundError):
                        await c.get_node(f"r{i}")
            # The failed ones succeed when retried.
            for i in sorted(failed):
                ok[i] = (await c.create_root("order", f"r{i}")).create_revision
            return ok, failed

    try:
        ok, failed = asyncio.run(main())
        assert failed, "the failpoint fired once, so at least one call failed"
        assert sorted(ok.values()) == list(range(top + 1, top + 1 + n))
    finally:
        assert proc.terminate() == 0


def test_fsync_failure_stops_the_server_and_a_retry_settles_the_unknown_outcome(tmp_path: Path) -> None:
    """The failpoint fires after the group was written unsynced, as a real failing fsync would:
    the write sits in the memtable and the WAL and may be there after a restart. The caller is
    told the outcome is unknown; the retry with its request_id settles it: applied exactly once."""
    data = tmp_path / "data"
    a, top = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.fsync=error").start()
    with sk.SyncClient.connect(proc.address) as c:
        assert c.get_node("a") == a  # reads are served until a write fails
        with pytest.raises(sk.UnavailableError) as e:
            c.transition("a", "touch", b"lost", request_id="rid-1")
        assert e.value.reason == "COMMIT_OUTCOME_UNKNOWN", e.value
        assert "retry with the same request_id" in e.value.message
    # Fail-stop: the process ends by itself, non-zero, saying why.
    code = _exited(proc)
    assert code != 0
    fatal = [r for r in _log_records(proc) if "fail-stop" in str(r.get("msg", ""))]
    assert fatal, proc.log()
    assert str(fatal[0]["level"]).upper() == "CRITICAL" and "syncing" in str(fatal[0]["msg"])
    assert "Traceback" not in proc.log()
    proc = ServerProcess(data).start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            retried = c.transition("a", "touch", b"lost", request_id="rid-1")
            assert retried.revision == top + 1
            assert retried.node.transition_count == a.transition_count + 1
            node = c.get_node("a")
            assert (node.transition_count, node.data) == (a.transition_count + 1, b"lost")
            assert c.get_node("b").transition_count == 0
            assert c.transition("a", "touch").revision == top + 2
        assert proc.health() == 1
    finally:
        assert proc.terminate() == 0


def test_after_a_failed_fsync_nothing_is_served_not_even_the_unsynced_write(tmp_path: Path) -> None:
    """Regression (issue 11, item 2): after the sync failed, the unsynced group was readable and
    a retry of the failed request answered OK. Now every call is refused until the process is
    gone: no read returns the unsynced data, no retry answers OK."""
    data = tmp_path / "data"
    _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.fsync=error").start()
    seen: list[str] = []

    async def main() -> None:
        async with await sk.Client.connect(proc.address, timeout=5.0) as c:
            failing = asyncio.ensure_future(c.transition("a", "touch", b"lost", request_id="rid-1"))

            async def probe() -> None:
                while not failing.done() or len(seen) < 200:
                    try:
                        node = await c.get_node("a")
                        seen.append(f"read {node.data!r}")
                    except sk.StatekeeperError as e:
                        seen.append(f"read refused {e.reason or e.code.name}")
                        if failing.done():
                            break
                    try:
                        r = await c.transition("a", "touch", b"lost", request_id="rid-1")
                        seen.append(f"retry OK {r.revision}")
                    except sk.StatekeeperError as e:
                        seen.append(f"retry refused {e.reason or e.code.name}")
                        if failing.done():
                            break

            await asyncio.gather(probe(), return_exceptions=True)
            with pytest.raises(sk.UnavailableError) as e:
                await failing
            assert e.value.reason == "COMMIT_OUTCOME_UNKNOWN"

    asyncio.run(main())
    assert _exited(proc) != 0
    assert not [s for s in seen if "lost" in s or s.startswith("retry OK")], seen


def test_fsync_failure_fails_every_queued_call_and_refuses_new_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, top = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.fsync=error").start()

    async def main() -> list[BaseException | sk.TransitionResult]:
        async with await sk.Client.connect(proc.address) as c:
            return await asyncio.gather(
                *(c.transition("a", "touch", request_id=f"rid-{i}") for i in range(8)),
                return_exceptions=True,
            )

    outcomes = asyncio.run(main())
    for o in outcomes:
        # The group whose sync failed: outcome unknown; built or queued behind it: not
        # applied; reaching the server after the failure: refused. None is cut off (CANCELLED).
        assert isinstance(o, sk.UnavailableError), o
        assert o.reason in ("COMMIT_OUTCOME_UNKNOWN", "COMMIT_FAILED", "STORE_FAILED"), o
    assert any(o.reason == "COMMIT_OUTCOME_UNKNOWN" for o in outcomes if isinstance(o, sk.UnavailableError))
    assert _exited(proc) != 0
    proc = ServerProcess(data).start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            # Whatever reappeared, retrying every request_id applies each exactly once.
            revisions = {c.transition("a", "touch", request_id=f"rid-{i}").revision for i in range(8)}
            assert len(revisions) == 8
            assert c.get_node("a").transition_count == a.transition_count + 8
            assert c.create_root("order", "c").create_revision == top + 9
    finally:
        assert proc.terminate() == 0


def test_crash_after_write_keeps_the_durable_write_and_a_retry_replays_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, top = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.after_write=crash").start()
    with sk.SyncClient.connect(proc.address) as c:
        with pytest.raises(sk.UnavailableError) as e:
            c.transition("a", "touch", b"v2", request_id="rid-1", expected_transition_count=1)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert _exited(proc) != 0  # died after the write, before any reply
    assert "failpoint commit.after_write" in proc.log()
    proc = ServerProcess(data).start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            # The write was durable before the crash: it is there, once.
            node = c.get_node("a")
            assert (node.transition_count, node.data, node.update_revision) == (2, b"v2", top + 1)
            # Retrying with the same request_id returns that outcome and applies nothing again.
            replay = c.transition("a", "touch", b"v2", request_id="rid-1", expected_transition_count=1)
            assert replay.revision == top + 1 and replay.node == node and replay.from_state == "paid"
            assert c.get_node("a") == node
            with pytest.raises(sk.InvalidArgumentError) as reused:
                c.transition("a", "cancel", request_id="rid-1")
            assert reused.value.reason == "REQUEST_ID_REUSED"
            # Its event is in the log exactly once, and revisions go on after it.
            events = []
            for ev in c.watch(start_revision=top + 1, root_id="a", progress=True):
                if ev.kind == "progress":
                    if ev.revision > top:
                        break
                    continue
                events.append(ev)
            assert [(e.kind, e.revision, e.transition_count) for e in events] == [
                ("node_transitioned", top + 1, 2),
                ("node_data_changed", top + 1, 0),
            ]
            assert c.transition("a", "touch").revision == top + 2
    finally:
        assert proc.terminate() == 0


def test_a_bad_failpoint_count_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="count after"):
        ServerProcess(tmp_path / "data", "--failpoints", "commit.before_write=error*x").start()


def test_a_retry_after_the_first_attempt_timed_out_while_queued_applies_once(tmp_path: Path) -> None:
    """Regression (issue 11, item 1): when the first attempt's call was cancelled (its deadline
    passed) while its commit was still queued behind a slow sync, the retry with the same
    request_id built and committed the transition again (transition count +2). The first
    attempt's commit stays queued whatever happens to its caller; the retry returns its outcome."""
    data = tmp_path / "data"
    a, _ = _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.sync_delay=0.4").start()
    try:

        async def main() -> None:
            async with (
                await sk.Client.connect(proc.address, timeout=10.0) as c,
                await sk.Client.connect(proc.address, timeout=0.05) as hasty,
            ):
                # A write whose sync holds the committer for 0.4 s ...
                blocker = asyncio.ensure_future(c.create_root("order", "blocker"))
                await asyncio.sleep(0.1)
                # ... so this one is still queued when its 50 ms deadline passes.
                with pytest.raises(sk.StatekeeperError) as e:
                    await hasty.transition("a", "touch", b"once", request_id="rid-cancel")
                assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
                retried = await c.transition("a", "touch", b"once", request_id="rid-cancel")
                await blocker
                assert retried.node.transition_count == a.transition_count + 1
                assert (await c.get_node("a")).transition_count == a.transition_count + 1
                again = await c.transition("a", "touch", b"once", request_id="rid-cancel")
                assert again == retried

        asyncio.run(main())
    finally:
        assert proc.terminate() == 0


def test_listings_during_a_slow_sync_do_not_show_the_write_being_synced(tmp_path: Path) -> None:
    """Regression: a write is in the store before its fsync ends, and the scans behind the
    listings read the live store (rocksdict's snapshot iterators ignore the snapshot), so
    list_children, walk and list_nodes showed a child whose creation was not yet durable nor
    answered. They read the durable view as get_node does."""
    data = tmp_path / "data"
    _prepare(data)
    proc = ServerProcess(data, "--failpoints", "commit.sync_delay=1.0").start()
    try:

        async def main() -> None:
            async with await sk.Client.connect(proc.address, timeout=10.0) as c:
                syncing = asyncio.ensure_future(c.add_child("a", "item", "i1"))
                await asyncio.sleep(0.4)  # the group is written; its sync takes 1 s
                assert not syncing.done()
                assert await c.list_children("a", "item") == []
                assert [n.ref for n in await c.walk("a")] == [sk.Ref.parse("a")]
                assert await c.list_nodes("item") == []
                with pytest.raises(sk.NotFoundError):
                    await c.get_node("a/item:i1")
                child = await syncing
                assert await c.list_children("a", "item") == [child]
                assert [n.ref for n in await c.walk("a")] == [sk.Ref.parse("a"), child.ref]

        asyncio.run(main())
    finally:
        assert proc.terminate() == 0
