"""Worker: runs async handlers for outbound tasks, with leases, heartbeats and outcomes handled.

    worker = sk.Worker(client, concurrency=8)

    @worker.handler("payments")
    async def charge(task: sk.LeasedTask) -> str | None:
        await payments.charge(task.payload)
        return "ship"                       # complete, applying transition "ship" to the node

    await worker.run()                      # until `await worker.stop()`

A handler completes its task by returning: None (no transition), a transition name, a
(transition, data) tuple, or a Completion. An exception fails the attempt with its message (the
server retries with backoff, then dead-letters); PermanentTaskError dead-letters at once. While
a handler runs, its lease is extended by heartbeats; when the lease is lost the handler is
cancelled. stop() lets running handlers finish within a grace period and releases the leases of
those that do not, so their tasks go to another worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from statekeeper._async.client import Client
from statekeeper._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    StatekeeperError,
    UnauthenticatedError,
)
from statekeeper._types import Completion, LeasedTask

log = logging.getLogger("statekeeper.worker")

Handler = Callable[[LeasedTask], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


class PermanentTaskError(Exception):
    """Raise from a handler to dead-letter the task at once instead of retrying it."""


@dataclass
class WorkerStats:
    leased: int = 0
    completed: int = 0
    failed: int = 0
    stale: int = 0
    released: int = 0
    lost: int = 0  # leases lost (expired) while the handler ran


def _completion(result: Any) -> Completion:
    if result is None:
        return Completion()
    if isinstance(result, Completion):
        return result
    if isinstance(result, str):
        return Completion(result)
    if isinstance(result, tuple) and 1 <= len(result) <= 3:
        return Completion(*result)
    raise TypeError(
        f"a handler returns None, a transition name, (transition, data) or a Completion; got {type(result).__name__}"
    )


class Worker:
    def __init__(
        self,
        client: Client,
        *,
        concurrency: int = 8,
        lease_s: float = 30.0,
        heartbeat_s: float | None = None,
        worker_id: str = "",
        reconnect_s: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.client = client
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else lease_s / 3
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.reconnect_s = reconnect_s
        self.stats = WorkerStats()
        self._handlers: dict[str, Handler] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._stream: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._started = False

    # -- registration ------------------------------------------------------------------------

    def register(self, destination: str, handler: Handler) -> None:
        if not destination:
            raise ValueError("destination must not be empty")
        if destination in self._handlers:
            raise ValueError(f"destination {destination!r} already has a handler")
        self._handlers[destination] = handler

    def handler(self, destination: str) -> Callable[[H], H]:
        """Decorator: @worker.handler("payments") registers an async handler for a destination."""

        def decorate(fn: H) -> H:
            self.register(destination, fn)
            return fn

        return decorate

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Take and handle tasks until stop(); reconnects when the server goes away."""
        if not self._handlers:
            raise ValueError("register at least one handler first")
        if self._started:
            raise RuntimeError("a Worker runs once")
        self._started = True
        delay = self.reconnect_s
        try:
            while not self._stopping:
                self._stream = asyncio.get_running_loop().create_task(self._consume())
                try:
                    await self._stream
                    delay = self.reconnect_s  # the server ended the stream (shutting down)
                except asyncio.CancelledError:
                    if not self._stopping:
                        raise
                except (InvalidArgumentError, PermissionDeniedError, UnauthenticatedError):
                    raise  # retrying cannot help
                except StatekeeperError as e:
                    log.warning("lease stream ended: %s; reconnecting in %.1fs", e, delay)
                    delay = min(delay * 2, 30.0)
                if not self._stopping:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stopped.wait(), delay)
        finally:
            if not self._stopping:  # run() itself was cancelled
                await self.stop(grace_s=0)
            elif self._running:
                await asyncio.gather(*self._running, return_exceptions=True)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Take no more tasks; let running handlers finish within grace_s seconds, then cancel
        the rest and release their leases (their tasks are available again at once)."""
        self._stopping = True
        self._stopped.set()
        if self._stream is not None:
            self._stream.cancel()
        running = set(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s) if grace_s > 0 else (set(), running)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _consume(self) -> None:
        tasks = self.client.lease_tasks(
            list(self._handlers),
            max_in_flight=self.concurrency,
            lease_s=self.lease_s,
            worker_id=self.worker_id,
        )
        async for leased in tasks:
            self.stats.leased += 1
            task = asyncio.get_running_loop().create_task(self._handle(leased))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _handle(self, leased: LeasedTask) -> None:
        handler = self._handlers.get(leased.destination)
        me = asyncio.current_task()
        assert me is not None
        lost = asyncio.Event()
        beat = _Heartbeat(self, leased, me, lost)
        try:
            if handler is None:
                raise PermanentTaskError(f"this worker has no handler for {leased.destination!r}")
            result = await handler(leased)
        except asyncio.CancelledError:
            beat.cancel()
            if lost.is_set():
                self.stats.lost += 1
                log.warning("task %s: lease lost while the handler ran; abandoned", leased.id)
                return
            if self._stopping:
                await self._settle(self.client.release_task(leased), leased, "release")
                self.stats.released += 1
                return
            raise
        except PermanentTaskError as e:
            beat.cancel()
            await self._settle(self.client.fail_task(leased, str(e), permanent=True), leased, "fail")
            self.stats.failed += 1
            return
        except Exception as e:
            beat.cancel()
            await self._settle(self.client.fail_task(leased, f"{type(e).__name__}: {e}"), leased, "fail")
            self.stats.failed += 1
            return
        beat.cancel()
        try:
            done = _completion(result)
        except TypeError as e:
            await self._settle(self.client.fail_task(leased, str(e)), leased, "fail")
            self.stats.failed += 1
            return
        try:
            await self.client.complete_task(
                leased,
                done.transition,
                done.data,
                content_type=done.content_type,
                task_inputs=list(done.task_inputs),
            )
            self.stats.completed += 1
        except FailedPreconditionError as e:
            if e.reason == "STALE_REFERENCE":
                self.stats.stale += 1
                log.info("task %s: stale, dropped by the server: %s", leased.id, e.message)
            elif e.reason in ("LEASE_NOT_HELD", "LEASE_SETTLED"):
                self.stats.lost += 1
                log.warning("task %s: completion refused: %s", leased.id, e.message)
            else:  # e.g. the transition is not allowed from the node's state
                await self._settle(
                    self.client.fail_task(leased, f"completion refused: {e.reason}: {e.message}"),
                    leased,
                    "fail",
                )
                self.stats.failed += 1
        except StatekeeperError as e:
            await self._settle(
                self.client.fail_task(leased, f"completion refused: {e.reason}: {e.message}"), leased, "fail"
            )
            self.stats.failed += 1

    async def _settle(self, call: Awaitable[Any], leased: LeasedTask, what: str) -> None:
        try:
            await asyncio.shield(call)
        except StatekeeperError as e:
            log.warning("task %s: %s refused: %s", leased.id, what, e)


class _Heartbeat:
    """Extends a lease every heartbeat_s while its handler runs. A timer, not a task, so a
    handler that finishes quickly costs no heartbeat at all."""

    def __init__(
        self, worker: Worker, leased: LeasedTask, handler: asyncio.Task[None], lost: asyncio.Event
    ) -> None:
        self.worker = worker
        self.leased = leased
        self.handler = handler
        self.lost = lost
        self.call: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(worker.heartbeat_s, self._due)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def _due(self) -> None:
        self.call = self.loop.create_task(self._beat())

    async def _beat(self) -> None:
        leased = self.leased
        try:
            result = await self.worker.client.heartbeat_task(leased, lease_s=self.worker.lease_s)
        except FailedPreconditionError:
            self.lost.set()
            self.handler.cancel()
            return
        except StatekeeperError as e:  # the server is away: keep trying while the lease may hold
            log.warning("task %s: heartbeat failed: %s", leased.id, e)
        else:
            if result.stale:
                log.info("task %s: its node moved on; the completion will be refused", leased.id)
        if self.call is not None:  # not cancelled meanwhile
            self.timer = self.loop.call_later(self.worker.heartbeat_s, self._due)
