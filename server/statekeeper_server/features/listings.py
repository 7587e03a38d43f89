"""Read-only listings over durable state that the inspector needed and the API lacked:
ListEvents (the event log newest first), ListTimers (pending timers by deadline) and ListRuns.

Each is one function over a durable view (engine.reads.view(): one consistent moment, RocksDB
snapshot or PostgreSQL rows) that does bounded work per call, so a page stays fast on a store
with millions of records. They are kept together here and free of gRPC.
"""

from __future__ import annotations

from statekeeper_server.domain.events import EventFilter
from statekeeper_server.domain.model import Event, NodeAddress, TaskRecord
from statekeeper_server.domain.savepoints import RunHeader
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import DurableView, Keyspace

Position = tuple[int, int]
EVENT_CHUNK = 5_000  # events read from the store at a time while scanning back


async def events_before(
    view: DurableView,
    flt: EventFilter,
    node_only: NodeAddress | None,
    before: Position,
    limit: int,
    scan_limit: int,
    event_codec: codec.EventCodec,
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
    examined = 0
    oldest = 0
    end = keys.seq_key(*before)
    while examined < scan_limit:
        want = min(EVENT_CHUNK, scan_limit - examined)
        chunk = await view.scan(Keyspace.EVENTS, b"", end, limit=want, reverse=True)
        for key, raw in chunk:
            revision, index = keys.seq_key_parts(key)
            examined += 1
            oldest = revision
            if (needle is None or needle in raw) and (not types or any(t in raw for t in types)):
                event = event_codec.decode(revision, index, raw)
                if flt.matches(event) and (node_only is None or event.address == node_only):
                    out.append(event)
                    if len(out) >= limit:
                        return out, (revision, index), oldest
        if len(chunk) < want:
            return out, None, oldest  # reached the oldest retained event
        end = chunk[-1][0]
    return out, keys.seq_key_parts(end), oldest


async def timers(view: DurableView, after: bytes | None, limit: int) -> tuple[list[TaskRecord], bytes | None]:
    """Pending timers by deadline (the TIMERS index: deadline + task key), after the index key
    `after`; returns them and the key to continue after (None at the end)."""
    start = after + b"\x00" if after is not None else b""
    entries = await view.scan(Keyspace.TIMERS, start, None, limit=limit + 1)
    page = entries[:limit]
    raws = await view.get_many(Keyspace.TASKS, [key[8:] for key, _ in page])
    # The index and the task are written in one batch, so a task is always there.
    found = [codec.decode_task(raw) for raw in raws if raw is not None]
    return found, (page[-1][0] if len(entries) > limit else None)


async def runs(view: DurableView, after: str | None, limit: int) -> tuple[list[RunHeader], str | None]:
    """Runs by id after the run id `after`; returns them and the id to continue after."""
    # A run has two keys, its header (id 0x00) and its entity ids (id 0x00 0x01).
    start = keys.run_entity_ids_key(after) + b"\x00" if after is not None else b""
    entries = await view.scan(Keyspace.RUNS, start, None, limit=2 * limit + 2)
    headers = [codec.decode_run(raw) for key, raw in entries if key.endswith(b"\x00")]
    more = len(headers) > limit or len(entries) == 2 * limit + 2
    page = headers[:limit]
    return page, (page[-1].run_id if more and page else None)
