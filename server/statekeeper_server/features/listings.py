"""Read-only listings over durable state that the inspector needed and the API lacked:
ListEvents (the event log newest first), ListTimers (pending timers by deadline) and ListRuns.

Each is one plain function over the Store that reads durable state only and does bounded work
per call, so a page stays fast on a store with millions of records. They are kept together
here, synchronous and free of gRPC, so that making the read paths asynchronous means changing
these three functions and the three servicer lines that call them.
"""

from __future__ import annotations

from statekeeper_server.domain.events import EventFilter
from statekeeper_server.domain.model import Event, NodeAddress, TaskRecord
from statekeeper_server.domain.savepoints import RunHeader
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, Store

Position = tuple[int, int]


def events_before(
    store: Store,
    flt: EventFilter,
    node_only: NodeAddress | None,
    before: Position,
    limit: int,
    scan_limit: int,
) -> tuple[list[Event], Position | None, int]:
    """Events strictly before `before` (revision, index), newest first, that match flt (and,
    with node_only, concern exactly that node): at most `limit` of them, examining at most
    `scan_limit` events. Returns the events, the position to continue before (None once the
    oldest event was examined) and the revision of the oldest event examined (0: none)."""
    # A cheap test on the encoded bytes first: an event of a tree holds its root id's UTF-8
    # bytes, so most non-matching events are skipped without being decoded.
    needle = flt.root_id.encode() if flt.root_id else None
    types = [t.encode() for t in flt.machine_types]
    out: list[Event] = []
    oldest = 0
    scan = store.scan(Keyspace.EVENTS, b"", keys.seq_key(*before), reverse=True)
    for examined, (key, raw) in enumerate(scan, 1):
        revision, index = keys.seq_key_parts(key)
        oldest = revision
        if (needle is None or needle in raw) and (not types or any(t in raw for t in types)):
            event = codec.decode_event(revision, index, raw)
            if flt.matches(event) and (node_only is None or event.address == node_only):
                out.append(event)
        if len(out) >= limit or examined >= scan_limit:
            return out, (revision, index), oldest
    return out, None, oldest


def timers(store: Store, after: bytes | None, limit: int) -> tuple[list[TaskRecord], bytes | None]:
    """Pending timers by deadline (the TIMERS index: deadline + task key), after the index key
    `after`; returns them and the key to continue after (None at the end)."""
    out: list[TaskRecord] = []
    start = after + b"\x00" if after is not None else b""
    for key, _ in store.scan(Keyspace.TIMERS, start):
        if len(out) >= limit:
            return out, after
        raw = store.get(Keyspace.TASKS, key[8:])
        after = key
        if raw is not None:  # the index and the task are written in one batch
            out.append(codec.decode_task(raw))
    return out, None


def runs(store: Store, after: str | None, limit: int) -> tuple[list[RunHeader], str | None]:
    """Runs by id after the run id `after`; returns them and the id to continue after."""
    out: list[RunHeader] = []
    # A run has two keys, its header (id 0x00) and its entity ids (id 0x00 0x01).
    start = keys.run_entity_ids_key(after) + b"\x00" if after is not None else b""
    for key, raw in store.scan(Keyspace.RUNS, start):
        if not key.endswith(b"\x00"):
            continue
        if len(out) >= limit:
            return out, out[-1].run_id
        out.append(codec.decode_run(raw))
    return out, None
