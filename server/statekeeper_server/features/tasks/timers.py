"""The timer executor: fires due timers through the normal commit path.

Pending timers are indexed by deadline in Keyspace.TIMERS, so the executor holds nothing per
timer: it reads the earliest deadline, sleeps until then, and fires every timer that is due in
batches, one commit per batch. A new timer that is earlier than the one it sleeps for wakes it
as soon as its commit is durable (a durable listener); after a restart, overdue timers fire at
once. A timer fires at or after its deadline, never before: the commit's own clock reading is
checked against the deadline.

Firing applies the timer's transition to its node through the commit's node transaction, so it
is validated exactly like a client's transition. A timer whose node moved on, was deleted, or
was deleted and recreated applies nothing and is recorded STALE. A timer whose transition is
refused (e.g. not allowed from the node's state) is dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass

from statekeeper_server.core.engine import Commit, Engine, now_ms
from statekeeper_server.domain.errors import DomainError
from statekeeper_server.domain.model import EventKind, TaskKind, TaskStatus
from statekeeper_server.domain.tasks import clip_error, stale_reason, with_status
from statekeeper_server.features.tasks.records import QUEUED, drop_stale, read_task, write_task
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import DurableView, Keyspace
from statekeeper_server.storage.indexes import task_key_of, timer_key

log = logging.getLogger("statekeeper.timers")


@dataclass
class TimerStats:
    fired: int = 0
    stale: int = 0
    dead_lettered: int = 0
    batches: int = 0


class TimerExecutor:
    def __init__(self, engine: Engine, batch_size: int = 500) -> None:
        self.engine = engine
        self.batch_size = max(1, batch_size)
        self.stats = TimerStats()
        self._wake = asyncio.Event()
        self._sleeping_until: int | None = None  # the deadline slept for; None: no timer at all
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="timer-executor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def timer_durable(self, deadline_ms: int) -> None:
        """A new pending timer became durable (called from the durable listener)."""
        if self._sleeping_until is None or deadline_ms < self._sleeping_until:
            self._sleeping_until = deadline_ms
            self._wake.set()

    def wake(self) -> None:
        """Look at the timers again now (e.g. this server took shards: their timers are due)."""
        self._sleeping_until = None
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = now_ms()
            shards = self.engine.shards
            owned = None if shards.count == 1 else sorted(shards.owned)
            view = self.engine.reads.view()
            try:
                # Durable state: a timer fires only once its creation is durable.
                due = [
                    k
                    for k, _ in await view.scan(
                        Keyspace.TIMERS, b"", keys.u64(now + 1), limit=self.batch_size, shards=owned
                    )
                ]
                later = await view.scan(Keyspace.TIMERS, keys.u64(now + 1), None, limit=1, shards=owned)
            except DomainError as e:  # the store is unavailable (cluster mode): try again soon
                log.warning("reading due timers failed: %s", e.message)
                await asyncio.sleep(1.0)
                continue
            next_deadline = keys.read_u64(later[0][0][:8]) if later else None
            if due:
                for shard, keys_ in (await self._by_shard(view, due)).items():
                    try:
                        await self.engine.commit(
                            functools.partial(self._fire, due=keys_), lambda r, rev: r, shard=shard
                        )
                    except asyncio.CancelledError:
                        raise
                    except DomainError as e:  # not applied (store trouble, shard moved): later
                        log.error("firing %d timers failed: %s; retrying", len(keys_), e.message)
                        await asyncio.sleep(0.5)
                    except Exception:
                        log.exception("firing %d timers failed; retrying", len(keys_))
                        await asyncio.sleep(0.5)
                continue
            self._sleeping_until = next_deadline
            timeout = None if next_deadline is None else max(0.0, (next_deadline - now_ms()) / 1000)
            if shards.count > 1:
                timeout = 1.0 if timeout is None else min(timeout, 1.0)  # other shards may arrive
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _by_shard(self, view: DurableView, due: list[bytes]) -> dict[int, list[bytes]]:
        """Due timer index keys grouped by the shard of their node (one commit per shard)."""
        shards = self.engine.shards
        if shards.count == 1:
            return {0: due}
        raws = await view.get_many(Keyspace.TASKS, [task_key_of(k) for k in due])
        out: dict[int, list[bytes]] = {}
        for key, raw in zip(due, raws, strict=True):
            if raw is None:
                continue
            out.setdefault(shards.of(codec.decode_task(raw).address.root_id), []).append(key)
        return out

    def _fire(self, c: Commit, due: list[bytes]) -> int:
        txn = c.transaction()
        orphans: list[bytes] = []
        fired = 0
        for index_key in due:
            if c.get(Keyspace.TIMERS, index_key) is None:
                continue  # handled by a commit that is not durable yet
            tkey = task_key_of(index_key)
            task = read_task(c, tkey)
            if (
                task is None
                or task.kind is not TaskKind.TIMER
                or task.status not in QUEUED
                or timer_key(task.deadline_ms, tkey) != index_key
            ):
                orphans.append(index_key)
                continue
            if c.now_ms < task.deadline_ms:
                continue  # never before the deadline (the clock stepped back)
            node = txn.get(task.address)
            reason = stale_reason(task, node)
            if reason:
                drop_stale(c, task, node, reason, attempted=True)
                self.stats.stale += 1
                continue
            assert node is not None
            try:
                # apply_transition checks everything before it changes anything, so a refusal
                # leaves the transaction as it was and the other timers of the batch go on.
                txn.apply_transition(task.address, task.timer_transition, None, "")
            except DomainError as e:
                message = clip_error(f"{e.reason}: {e.message}")
                new = with_status(
                    task, TaskStatus.DEAD_LETTER, attempts=task.attempts + 1, last_error=message
                )
                write_task(c, new, task)
                common = {"node_type": node.type, "task_id": task.task_id}
                c.event(EventKind.TASK_FAILED, task.address, detail=message, **common)
                c.event(EventKind.TASK_DEAD_LETTERED, task.address, detail=message, **common)
                self.stats.dead_lettered += 1
                continue
            new = with_status(task, TaskStatus.COMPLETED, attempts=task.attempts + 1)
            write_task(c, new, task)
            c.event(
                EventKind.TASK_FIRED,
                task.address,
                node_type=node.type,
                task_id=task.task_id,
                transition=task.timer_transition,
                detail=task.name,
            )
            fired += 1
        for key in orphans:
            # Index entries without a matching pending timer (cannot happen when every write
            # goes through task_index_mutations): dropped in this commit, not read again.
            c.delete(Keyspace.TIMERS, key)
        self.stats.fired += fired
        self.stats.batches += 1
        return fired
