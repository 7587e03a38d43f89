"""The stream lane: the CPU work of every event stream (reading history from storage, decoding
and encoding events) runs one slice at a time, across all streams together, and while calls
are in flight it gets only a share of the event loop.

Why (issue 11): asyncio runs every ready callback once per loop iteration. 200 streams catching
up on history each did a slice of work per iteration, so an iteration took hundreds of
milliseconds, and grpc.aio needs a few iterations per call (it accepts calls one at a time, and
every step of a call comes back through the loop): unary calls waited 20-30 s and refusals never
got out. A lock would not help, since a slice never awaits. The lane instead grants one turn
at a time, each in a later loop iteration than the last; while calls are in flight
(`contended`), the next turn waits CONTENDED_PAUSE times as long as the last one took, so
streams get at most a quarter of the loop and calls the rest. Alone, streams take turns back
to back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

SLICE_EVENTS = 64
"""Events read, decoded or encoded in one turn (well under a millisecond of work)."""

STORED_SLICE_EVENTS = 256
"""Events passed on as stored (read and framed, neither decoded nor encoded) in one turn: about
a microsecond each. Fewer, larger turns matter most to a replay from the store, where each turn
seeks RocksDB's iterator again."""

CONTENDED_PAUSE = 3.0
"""While calls are in flight, streams get 1 / (1 + this) of the loop."""


class StreamLane:
    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._taken = False
        # Whether calls are waiting to be served (set by the server: calls in flight).
        self.contended: Callable[[], bool] = lambda: False
        self.turns = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One slice of stream work: keep it short (SLICE_EVENTS) and never wait on the client
        inside it."""
        loop = asyncio.get_running_loop()
        if self._taken or self._waiting:
            granted: asyncio.Future[None] = loop.create_future()
            self._waiting.append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release(loop, 0.0)  # granted, then cancelled before it ran
                raise
        else:
            self._taken = True
        self.turns += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._release(loop, time.perf_counter() - started)

    def _release(self, loop: asyncio.AbstractEventLoop, spent: float) -> None:
        # The lane stays taken until the next grant: no other turn in this loop iteration.
        if self.contended():
            loop.call_later(spent * CONTENDED_PAUSE, self._grant)
        else:
            loop.call_soon(self._grant)

    def _grant(self) -> None:
        while self._waiting:
            granted = self._waiting.popleft()
            if not granted.done():  # skip streams that left while waiting
                granted.set_result(None)
                return
        self._taken = False
