"""CPU seconds used by a server, from /proc (Linux), to put "server CPU per write" beside the
rates: on a shared machine a rate moves with the neighbours' load, CPU per write much less.

A statekeeper server is one process (its threads included). PostgreSQL is a postmaster with a
process per connection and helpers (WAL writer, checkpointer, ...): its CPU is the postmaster's,
its live children's, and that of children already gone (cutime/cstime, once reaped)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; fields from 3 on


def process_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def tree_seconds(pid: int) -> float:
    """process_seconds of pid and its live children, plus its reaped children's."""
    fields = _stat_fields(pid)
    total = sum(int(x) for x in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(OSError, ValueError):  # gone meanwhile: in cutime/cstime once reaped
            total += process_seconds(child)
    return total


async def during(start: float, end: float, read: Callable[[], float]) -> float:
    """CPU seconds (by `read`) between the perf_counter instants start and end (awaited)."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    first = read()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    return read() - first
