"""Run savepoints with Runbox's StateStore semantics, as pure rules (no storage, no gRPC).

A run has a start timestamp, a schedule (an interval in ms, or 0 for none) and a fixed set of
entities. Its savepoints are the multiples of the schedule strictly after the start. An entity's
state saved at timestamp ts goes into every savepoint <= ts that does not hold that entity yet,
so an entity always holds a prefix of the savepoints: all those <= its `filled_through`. A
savepoint is complete when every entity holds it, i.e. when it is <= the smallest
`filled_through` of the run (the run's frontier). Only complete savepoints are persisted and
loadable; the newest `keep` of them are kept.

Storage-friendly bookkeeping:
- an entity's contributions not yet in a complete savepoint are *segments*: a save that fills the
  savepoints (a, b] stores its state once, under b; the state of savepoint T is then the segment
  with the smallest b >= T;
- the run keeps a histogram filled_through -> number of entities, so its frontier is the smallest
  key, without reading every entity on every save.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from statekeeper_server.domain.errors import InvalidArgument, ResourceExhausted
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.validation import check_id

# -- the schedule ------------------------------------------------------------------------------


def next_savepoint(t: int, schedule_ms: int) -> int | None:
    """The smallest multiple of the schedule strictly greater than t; None without a schedule."""
    if schedule_ms <= 0:
        return None
    return (t // schedule_ms + 1) * schedule_ms


def last_savepoint_at_or_before(t: int, schedule_ms: int) -> int:
    """The largest multiple of the schedule <= t (0 when t is before the first multiple)."""
    return (t // schedule_ms) * schedule_ms if schedule_ms > 0 else 0


def savepoints_in(after: int, through: int, schedule_ms: int) -> range:
    """The savepoint timestamps in (after, through], ascending."""
    first = next_savepoint(after, schedule_ms)
    if first is None or through < first:
        return range(0)
    return range(first, last_savepoint_at_or_before(through, schedule_ms) + 1, schedule_ms)


# -- records -----------------------------------------------------------------------------------


@dataclass(slots=True)
class RunHeader:
    """What is stored for a run (its entity ids are stored apart: they are large and fixed)."""

    run_id: str
    start_ms: int
    schedule_ms: int
    schema_version: int
    keep: int  # newest complete savepoints kept; 0 = the server's default
    entity_count: int
    create_revision: int
    create_time_ms: int
    frontier: int = 0  # every savepoint <= frontier is complete (0: none yet)
    filled: dict[int, int] = field(default_factory=dict)  # filled_through -> entities
    savepoints: list[int] = field(default_factory=list)  # persisted complete ones, ascending

    @property
    def first_savepoint(self) -> int | None:
        return next_savepoint(self.start_ms, self.schedule_ms)

    @property
    def latest(self) -> int | None:
        return self.savepoints[-1] if self.savepoints else None

    def keep_count(self, default: int) -> int:
        return max(1, self.keep or default)

    def next_to_complete(self) -> int | None:
        """The oldest savepoint that is not complete yet."""
        if not self.schedule_ms:
            return None
        first = self.first_savepoint
        assert first is not None
        return max(first, next_savepoint(self.frontier, self.schedule_ms) or 0)

    def move(self, old: int, new: int) -> None:
        """One entity's filled_through moved from old to new (the histogram follows)."""
        left = self.filled.get(old, 0) - 1
        if left > 0:
            self.filled[old] = left
        else:
            self.filled.pop(old, None)
        self.filled[new] = self.filled.get(new, 0) + 1


@dataclass(slots=True)
class EntityProgress:
    """One entity of a run: the savepoints it holds and where its pending contributions are."""

    filled_through: int = 0  # the entity holds every savepoint <= this (0: none)
    segments: list[int] = field(default_factory=list)  # ascending; see the module docstring

    def segment_for(self, t: int) -> int:
        """The segment holding the entity's state for savepoint t (which it must hold)."""
        i = bisect.bisect_left(self.segments, t)
        if i == len(self.segments):
            raise LookupError(f"no segment holds savepoint {t} (filled through {self.filled_through})")
        return self.segments[i]

    def prune(self, frontier: int) -> list[int]:
        """Drop (and return) the segments every savepoint of which is complete."""
        i = bisect.bisect_right(self.segments, frontier)
        dropped, self.segments = self.segments[:i], self.segments[i:]
        return dropped


@dataclass(frozen=True, slots=True)
class Fill:
    """The savepoints a save filled: first..last (both inclusive), count of them."""

    first: int
    last: int
    count: int


@dataclass(frozen=True, slots=True)
class SavepointInfo:
    """A persisted complete savepoint."""

    timestamp: int
    schema_version: int
    entity_count: int
    checksum: bytes
    revision: int
    create_time_ms: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class TreeSnapshotInfo:
    """A named snapshot of a whole tree: its nodes and pending tasks as of `revision`."""

    root_id: str
    name: str
    revision: int  # the durable revision the snapshot shows
    create_revision: int  # the revision of the commit that stored it
    create_time_ms: int
    node_count: int
    task_count: int


@dataclass(frozen=True, slots=True)
class Completion:
    """What a commit completes: persist these, drop those (keep-N), move the frontier."""

    frontier: int
    persist: tuple[int, ...]  # ascending
    skipped: int  # completed together with newer ones and never persisted (beyond keep-N)
    drop: tuple[int, ...]  # persisted ones now beyond keep-N


# -- the rules ---------------------------------------------------------------------------------


def entity_next_savepoint(run: RunHeader, entity: EntityProgress) -> int | None:
    """The next savepoint this entity will fill: an acknowledgement reaches it at or after it."""
    first = run.first_savepoint
    if first is None:
        return None
    return max(first, next_savepoint(entity.filled_through, run.schedule_ms) or 0)


def fill(run: RunHeader, entity: EntityProgress, ts: int) -> Fill | None:
    """Save the entity's state at ts: fill every savepoint <= ts it does not hold yet. Updates
    entity (filled_through, a new segment) and the run's histogram; None when nothing is filled."""
    first = entity_next_savepoint(run, entity)
    if first is None or ts < first:
        return None
    last = last_savepoint_at_or_before(ts, run.schedule_ms)
    run.move(entity.filled_through, last)
    entity.filled_through = last
    entity.segments.append(last)
    return Fill(first, last, (last - first) // run.schedule_ms + 1)


def completion(run: RunHeader, default_keep: int) -> Completion | None:
    """The savepoints that became complete, or None. Of many completed at once only the newest
    `keep` are persisted: the older ones would be deleted by keep-N in the same commit."""
    if not run.schedule_ms or not run.filled:
        return None
    frontier = min(run.filled)
    if frontier <= run.frontier:
        return None
    keep = run.keep_count(default_keep)
    done = savepoints_in(max(run.frontier, run.start_ms), frontier, run.schedule_ms)
    persist = tuple(done[-keep:])
    kept = [*run.savepoints, *persist]
    drop = tuple(kept[:-keep]) if len(kept) > keep else ()
    return Completion(frontier, persist, len(done) - len(persist), drop)


def apply_completion(run: RunHeader, done: Completion) -> None:
    run.frontier = done.frontier
    dropped = set(done.drop)
    run.savepoints = [t for t in [*run.savepoints, *done.persist] if t not in dropped]


# -- integrity ---------------------------------------------------------------------------------

_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">QI")


class Checksum:
    """blake2b over a savepoint's timestamp, schema version and its (entity id, state) pairs in
    entity-id order, length-prefixed so no two contents share a digest."""

    __slots__ = ("_h",)

    def __init__(self, timestamp: int, schema_version: int) -> None:
        self._h = hashlib.blake2b(_HEAD.pack(timestamp, schema_version), digest_size=16)

    def add(self, entity_id: str, state: bytes) -> None:
        raw = entity_id.encode()
        update = self._h.update
        update(_LEN.pack(len(raw)))
        update(raw)
        update(_LEN.pack(len(state)))
        update(state)

    def digest(self) -> bytes:
        return self._h.digest()


def checksum(timestamp: int, schema_version: int, items: Iterable[tuple[str, bytes]]) -> bytes:
    c = Checksum(timestamp, schema_version)
    for entity_id, state in items:
        c.add(entity_id, state)
    return c.digest()


# -- validation --------------------------------------------------------------------------------


def check_state(state: bytes, field: str, limits: Limits) -> None:
    if len(state) > limits.max_state_bytes:
        raise InvalidArgument(
            "STATE_TOO_LARGE",
            f"{field} is {len(state)} bytes; the limit is {limits.max_state_bytes}",
            field=field,
            limit="max_state_bytes",
        )


def check_timestamp(run: RunHeader, ts: int, field: str) -> None:
    if ts < run.start_ms:
        raise InvalidArgument(
            "TIMESTAMP_BEFORE_START",
            f"{field} {ts} is before the start of run {run.run_id!r} ({run.start_ms})",
            field=field,
            start_ms=run.start_ms,
        )


def check_entities(entities: Sequence[tuple[str, bytes]], field: str, limits: Limits) -> None:
    if not entities:
        raise InvalidArgument("FIELD_REQUIRED", f"{field} must not be empty", field=field)
    if len(entities) > limits.max_run_entities:
        raise ResourceExhausted(
            "TOO_MANY_ENTITIES",
            f"{field} has {len(entities)} entities; the limit is {limits.max_run_entities}",
            field=field,
            limit="max_run_entities",
        )
    seen: set[str] = set()
    for i, (entity_id, state) in enumerate(entities):
        check_id(entity_id, f"{field}[{i}].id", limits)
        if entity_id in seen:
            raise InvalidArgument(
                "DUPLICATE_ENTITY", f"{field}[{i}].id {entity_id!r} appears twice", field=f"{field}[{i}].id"
            )
        seen.add(entity_id)
        check_state(state, f"{field}[{i}].state", limits)


def check_run(
    run_id: str,
    start_ms: int,
    schedule_ms: int,
    entities: Sequence[tuple[str, bytes]],
    schema_version: int,
    keep: int,
    limits: Limits,
) -> None:
    """Validate a run's definition; the error names the first bad field."""
    check_id(run_id, "run_id", limits)
    if start_ms < 0:
        raise InvalidArgument("FIELD_INVALID", "start_ms must not be negative", field="start_ms")
    if schedule_ms < 0:
        raise InvalidArgument(
            "FIELD_INVALID", "schedule_ms must not be negative (0: no savepoints)", field="schedule_ms"
        )
    if schema_version < 0:
        raise InvalidArgument("FIELD_INVALID", "schema_version must not be negative", field="schema_version")
    if keep < 0:
        raise InvalidArgument("FIELD_INVALID", "keep_count must not be negative", field="keep_count")
    check_entities(entities, "entities", limits)
