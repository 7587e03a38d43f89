"""The committer's ordering rules, on a store stand-in whose sync is slow and which records what
happens (a real store's sync window is too short to hit reliably through a server; end to end,
the server tests and the crash test cover the same guarantees):

- a group is written only once the previous group's sync returned and the durable view was
  published, so a reader of the durable view never sees an unsynced write (guarantee 2);
- heavy writes are built while the previous group syncs (the builds see the written group);
- every intent is answered only after its group is durable, refusals included;
- a listener that raises neither stops the committer nor fails a durable commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

from statekeeper_server.core.committer import Committer, Intent, PendingCommit
from statekeeper_server.domain.errors import NotFound
from statekeeper_server.storage.base import GroupWrite, Keyspace


class _Batch:
    def __init__(self) -> None:
        self.n = 0

    def set_shard(self, shard: int) -> None:
        pass

    def put(self, *args: object) -> None:
        self.n += 1

    def delete(self, *args: object) -> None:
        self.n += 1

    def write_all(self, mutations: list[object]) -> None:
        self.n += len(mutations)

    def __len__(self) -> int:
        return self.n


class _RecordingStore:
    """Writes like the RocksDB store: unsynced on the loop, then a slow sync on a thread."""

    pipelined = True
    fail_stop = True
    build_shard = 0

    def __init__(self) -> None:
        self.log: list[str] = []
        self._thread = concurrent.futures.ThreadPoolExecutor(1)

    def new_batch(self) -> _Batch:
        return _Batch()

    def write_group(self, group: GroupWrite, done: Callable[[BaseException | None], None]) -> None:
        self.log.append("write")
        loop = asyncio.get_running_loop()

        def sync() -> None:
            group.before_sync()
            time.sleep(0.003)
            self.log.append("synced")
            loop.call_soon_threadsafe(done, None)

        self._thread.submit(sync)

    def publish_durable(self) -> None:
        self.log.append("published")


def _intent(revisions: list[int], log: list[str], fail: bool = False) -> Intent:
    def build(revision: int) -> tuple[PendingCommit | None, Any]:
        log.append("build")
        if fail:
            raise NotFound("NODE_NOT_FOUND", "no such node", built_at=len(log))
        revisions.append(revision)
        return PendingCommit(revision, [(Keyspace.NODES, b"k%d" % revision, b"v")], [], []), revision

    return Intent(build, versioned=True, weight=64)  # heavy enough to be built during a sync


def test_groups_are_written_only_after_the_previous_sync_and_publish() -> None:
    async def main() -> tuple[list[str], list[int], list[Any]]:
        store = _RecordingStore()
        durable: list[int] = []

        def on_durable(group: list[PendingCommit]) -> None:
            durable.extend(c.revision for c in group)
            raise RuntimeError("a listener that fails")

        committer = Committer(
            store,  # type: ignore[arg-type]
            fsync=True,
            durable_revision=0,
            on_durable=on_durable,
            on_fatal=lambda error: None,
            linger_turns=0,
        )
        committer.start()
        revisions: list[int] = []
        answers: list[Any] = []

        async def wait(intent: Intent) -> None:
            try:
                answer = await intent.future
            except NotFound as e:
                # Refused only once every group written before its build is durable.
                built_at = int(e.metadata["built_at"])
                assert store.log.count("published") >= store.log[:built_at].count("write")
                answers.append("refused")
                return
            assert answer in durable  # answered only once durable
            answers.append(answer)

        # Intents keep arriving while groups sync (one every ~0.5 ms, a sync takes 3 ms).
        waiting = []
        for j in range(160):
            intent = _intent(revisions, store.log, fail=(j % 40 == 0))
            committer.enqueue(intent)
            waiting.append(asyncio.ensure_future(wait(intent)))
            await asyncio.sleep(0.0005)
        await asyncio.gather(*waiting)
        await committer.stop()
        return store.log, revisions, answers

    log, revisions, answers = asyncio.run(main())
    assert revisions == list(range(1, len(revisions) + 1))  # gap-free, in order
    assert answers.count("refused") == 4 and len(answers) == 160
    # After each write: its sync, then the publish, before the next write.
    events = [e for e in log if e != "build"]
    for i, e in enumerate(events):
        if e == "write":
            assert events[i + 1 : i + 3] == ["synced", "published"], events[i : i + 4]
    # Some group was built while the previous one was syncing.
    overlapped = any(
        log[i] == "write" and "build" in log[i + 1 : log.index("synced", i)] for i in range(len(log))
    )
    assert overlapped, log


def test_a_defect_in_the_committer_stops_the_store_instead_of_hanging_every_call(tmp_path: Any) -> None:
    """Regression: an exception the committer did not expect (here a build that puts a str where
    bytes belong, which RocksDB's batch refuses while the group is assembled) ended the
    committer's task silently: that write and every later one waited forever. Now the committer
    fails stop: the callers are told (their outcome is unknown), later calls are refused, and
    the server is told to exit."""
    from statekeeper_server.core.engine import Commit, Engine
    from statekeeper_server.domain.errors import Unavailable
    from statekeeper_server.domain.limits import Limits
    from statekeeper_server.domain.model import EventKind
    from statekeeper_server.storage.rocksdb import RocksStore

    fatal: list[BaseException] = []

    async def main() -> tuple[BaseException, BaseException]:
        store = RocksStore(tmp_path / "store")
        engine = Engine(store, Limits(), on_fatal=fatal.append)
        await engine.start(sweep=False)
        try:

            def broken(c: Commit) -> None:
                c.put(Keyspace.META, b"defect", "not bytes")  # type: ignore[arg-type]
                c.event(EventKind.MACHINE_TYPE_REGISTERED)

            with_defect = asyncio.ensure_future(engine.commit(broken, lambda r, rev: rev))
            behind = asyncio.ensure_future(engine.commit(broken, lambda r, rev: rev))
            first = await asyncio.wait_for(asyncio.gather(with_defect, behind, return_exceptions=True), 5)
            try:
                await asyncio.wait_for(engine.commit(broken, lambda r, rev: rev), 5)
            except Unavailable as e:
                later: BaseException = e
            return first[0], later
        finally:
            await asyncio.wait_for(engine.close(), 5)
            store.close()

    first, later = asyncio.run(main())
    assert isinstance(first, Unavailable) and first.reason == "COMMIT_OUTCOME_UNKNOWN", first
    assert isinstance(later, Unavailable) and later.reason == "STORE_FAILED", later
    assert len(fatal) == 1  # the defect itself (rocksdict refuses the str)
