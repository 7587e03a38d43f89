"""The deadlines of the calls pipelined over one stream, on either side of ExecuteStream: one
heap and one timer, for the earliest, instead of an asyncio.timeout around every call (which
cost about as much as the rest of a pipelined call's handling)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")


class Deadlines(Generic[K]):
    """expire(call) runs once a call's deadline passes, unless it was answered by then
    (answered(call)). Answered calls stay in the heap until their deadline comes or, once the
    heap holds more than `prune_above` entries, until the next add drops them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        expire: Callable[[K], None],
        answered: Callable[[K], bool],
        prune_above: int,
    ) -> None:
        self._loop = loop
        self._expire_call = expire
        self._answered = answered
        self._prune_above = prune_above
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()  # ties in time: calls need not be comparable
        self._timer: asyncio.TimerHandle | None = None

    def add(self, when: float, call: K) -> None:
        """when: on the loop's clock (loop.time(), time.monotonic())."""
        heap = self._heap
        if len(heap) > self._prune_above:
            heap[:] = [entry for entry in heap if not self._answered(entry[2])]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, next(self._order), call))
        timer = self._timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        heap, now = self._heap, self._loop.time()
        while heap and heap[0][0] <= now:
            call = heapq.heappop(heap)[2]
            if not self._answered(call):
                self._expire_call(call)
        if heap:
            self._timer = self._loop.call_at(heap[0][0], self._expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
