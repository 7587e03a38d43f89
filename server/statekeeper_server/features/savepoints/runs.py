"""Runs and their savepoints on the engine's Commit API; the rules are in domain/savepoints.py.

Every write is one commit built synchronously by the committer (so it composes with the other
commits of its group and writes nothing when it raises). Reads (load, list, get) use one durable
view each, so a read sees one durable revision.

The entity envelope (Runbox's Entity.update_state / ack_processed_time): `update` commits an
entity's current state (keys.entity_update_key), durable like any other write and cheap by group
commit; it fills no savepoint. An acknowledgement that reaches the entity's next savepoint saves
the current state, exactly the bytes last given, also after a restart. Without a current state
(never updated, or forgotten when the run was deleted or rewound by UpdateSavepoint) an
acknowledgement saves the entity's latest saved state, or its initial state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from statekeeper_server.core.engine import Commit, Engine, ResponseCodec
from statekeeper_server.domain.errors import (
    AlreadyExists,
    BatchOperationFailed,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from statekeeper_server.domain.model import EventKind
from statekeeper_server.domain.savepoints import (
    Checksum,
    Completion,
    EntityProgress,
    Fill,
    RunHeader,
    SavepointInfo,
    apply_completion,
    check_entities,
    check_run,
    check_state,
    check_timestamp,
    completion,
    entity_next_savepoint,
    fill,
)
from statekeeper_server.domain.validation import check_id
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import DurableView, Keyspace

log = logging.getLogger("statekeeper.savepoints")

M = TypeVar("M")


def detail(**fields: Any) -> str:
    """An event's detail: compact JSON."""
    return json.dumps(fields, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class RunSpec:
    run_id: str
    start_ms: int
    schedule_ms: int
    entities: tuple[tuple[str, bytes], ...]  # (entity id, initial state)
    schema_version: int = 1
    keep: int = 0


@dataclass(frozen=True, slots=True)
class EntitySave:
    """Save `state` at `timestamp`; state None acknowledges processed time `timestamp` and saves
    the entity's current state if that reaches its next savepoint."""

    run_id: str
    entity_id: str
    timestamp: int
    state: bytes | None = None


@dataclass(frozen=True, slots=True)
class SaveResult:
    fill: Fill | None  # the savepoints filled; None: none
    next_savepoint: int  # the entity's next savepoint after this save (0: no schedule)


@dataclass(frozen=True, slots=True)
class SaveOutcome:
    results: tuple[SaveResult, ...]
    completed: tuple[tuple[str, int], ...]  # (run id, timestamp) of every savepoint persisted


@dataclass(frozen=True, slots=True)
class LoadedSavepoint:
    run_id: str
    info: SavepointInfo
    entities: list[tuple[str, bytes]]  # by entity id
    damaged: tuple[int, ...]  # newer savepoints skipped because their checksum failed
    fell_back: bool


class _RunWork:
    """One run's changes within one commit."""

    __slots__ = ("dirty", "entities", "fills", "header", "ids")

    def __init__(self, header: RunHeader) -> None:
        self.header = header
        self.entities: dict[str, EntityProgress] = {}
        self.dirty: set[str] = set()
        self.fills = 0
        self.ids: list[str] | None = None


class Runs:
    """Runs, entity saves and savepoints. One per server; `default_keep` is the server's keep-N."""

    def __init__(self, engine: Engine, default_keep: int) -> None:
        self.engine = engine
        self.store = engine.store
        self.limits = engine.limits
        self.default_keep = max(1, default_keep)

    # -- reads: durable state only -------------------------------------------------------------

    async def get_run(self, run_id: str, view: DurableView | None = None) -> RunHeader:
        check_id(run_id, "run_id", self.limits)
        raw = await (view or self.engine.reads.view()).get(Keyspace.RUNS, keys.run_key(run_id))
        if raw is None:
            raise _run_not_found(run_id)
        return codec.decode_run(raw)

    async def list_savepoints(self, run_id: str) -> tuple[RunHeader, list[SavepointInfo]]:
        view = self.engine.reads.view()
        header = await self.get_run(run_id, view)
        out = []
        for t in header.savepoints:
            raw = await view.get(Keyspace.SAVEPOINTS, keys.savepoint_key(run_id, t))
            try:
                out.append(codec.decode_savepoint(raw))  # type: ignore[arg-type]
            except Exception:  # a damaged header: listed, and refused on load
                out.append(SavepointInfo(t, 0, 0, b"", 0, 0, 0))
        return header, out

    async def load(self, run_id: str, timestamp: int = 0) -> LoadedSavepoint:
        """The latest complete savepoint (timestamp 0), falling back past damaged ones; or exactly
        the one at timestamp."""
        if timestamp < 0:
            raise InvalidArgument("FIELD_INVALID", "timestamp_ms must not be negative", field="timestamp_ms")
        view = self.engine.reads.view()
        header = await self.get_run(run_id, view)
        if timestamp:
            if timestamp not in header.savepoints:
                raise NotFound(
                    "SAVEPOINT_NOT_FOUND",
                    f"run {run_id!r} has no complete savepoint at {timestamp}",
                    run_id=run_id,
                    timestamp_ms=timestamp,
                )
            candidates = [timestamp]
        else:
            if not header.savepoints:
                raise NotFound(
                    "NO_SAVEPOINT",
                    f"run {run_id!r} has no complete savepoint yet: every entity must save first",
                    run_id=run_id,
                )
            candidates = list(reversed(header.savepoints))
        damaged: list[int] = []
        for t in candidates:
            found = await self._read(view, run_id, t)
            if isinstance(found, str):
                log.error("savepoint %d of run %r is damaged: %s", t, run_id, found)
                damaged.append(t)
                continue
            info, items = found
            if damaged:
                log.warning(
                    "run %r: loading savepoint %d instead of the damaged %s",
                    run_id,
                    t,
                    ", ".join(map(str, damaged)),
                )
            return LoadedSavepoint(run_id, info, items, tuple(damaged), bool(damaged))
        text = ",".join(map(str, damaged))
        if timestamp:
            raise FailedPrecondition(
                "SAVEPOINT_DAMAGED",
                f"savepoint {timestamp} of run {run_id!r} is damaged (checksum mismatch)",
                run_id=run_id,
                damaged_timestamps=text,
            )
        raise NotFound(
            "NO_INTACT_SAVEPOINT",
            f"every complete savepoint of run {run_id!r} is damaged ({text})",
            run_id=run_id,
            damaged_timestamps=text,
        )

    async def _read(
        self, view: DurableView, run_id: str, t: int
    ) -> tuple[SavepointInfo, list[tuple[str, bytes]]] | str:
        """A savepoint and its states, verified; or why it is damaged."""
        raw = await view.get(Keyspace.SAVEPOINTS, keys.savepoint_key(run_id, t))
        if raw is None:
            return "its header is missing"
        try:
            info = codec.decode_savepoint(raw)
        except Exception as e:
            return f"its header does not decode ({e})"
        if info.timestamp != t:
            return f"its header names timestamp {info.timestamp}"
        prefix = keys.savepoint_key(run_id, t)
        n = len(prefix)
        check = Checksum(t, info.schema_version)
        items: list[tuple[str, bytes]] = []
        try:
            states = await view.scan(
                Keyspace.SAVEPOINT_STATES, prefix, keys.prefix_end(prefix), limit=info.entity_count + 1
            )
            for key, state in states:
                entity_id = key[n:].decode()
                items.append((entity_id, state))
                check.add(entity_id, state)
        except UnicodeDecodeError as e:
            return f"an entity key does not decode ({e})"
        if len(items) != info.entity_count:
            return f"it holds {len(items)} entity states, not {info.entity_count}"
        if check.digest() != info.checksum:
            return "its checksum does not match its contents"
        return info, items

    # -- writes ------------------------------------------------------------------------------

    async def init_run(
        self,
        spec: RunSpec,
        respond: Callable[[RunHeader, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        return await self.engine.commit(
            lambda c: self._init(c, spec),
            respond,
            request_id=request_id,
            fingerprint=fingerprint,
            response_codec=response_codec,
        )

    async def delete_run(
        self,
        run_id: str,
        respond: Callable[[int, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        return await self.engine.commit(
            lambda c: self._delete(c, run_id),
            respond,
            request_id=request_id,
            fingerprint=fingerprint,
            response_codec=response_codec,
        )

    async def save(
        self,
        saves: Sequence[EntitySave],
        respond: Callable[[SaveOutcome, int], M],
        *,
        field: str = "saves",
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        """Save entity states (or acknowledge processed time: state None), in order, atomically."""
        self._check_count(len(saves), field)
        return await self.engine.commit(
            lambda c: self._save(c, saves, field),
            respond,
            request_id=request_id,
            fingerprint=fingerprint,
            response_codec=response_codec,
        )

    async def update(self, updates: Sequence[tuple[str, str, bytes]]) -> int:
        """Set entities' current states durably (one commit; all or nothing). Returns how many."""
        self._check_count(len(updates), "updates")
        return await self.engine.commit(lambda c: self._update(c, updates), lambda n, revision: n)

    async def rewrite_savepoint(
        self,
        run_id: str,
        timestamp: int,
        schema_version: int,
        entities: Sequence[tuple[str, bytes]],
        respond: Callable[[RunHeader, int], M],
        *,
        request_id: str = "",
        fingerprint: bytes = b"",
        response_codec: ResponseCodec[M] | None = None,
    ) -> M:
        """Replace the states of a persisted savepoint (e.g. upgraded to a new schema version) and
        make it the run's resume point (see _rewrite)."""
        return await self.engine.commit(
            lambda c: self._rewrite(c, run_id, timestamp, schema_version, entities),
            respond,
            request_id=request_id,
            fingerprint=fingerprint,
            response_codec=response_codec,
        )

    def _check_count(self, n: int, field: str) -> None:
        if not n:
            raise InvalidArgument("FIELD_REQUIRED", f"{field} must not be empty", field=field)
        if n > self.limits.max_batch_operations:
            raise InvalidArgument(
                "TOO_MANY_OPERATIONS",
                f"{field} has {n} items; the limit is {self.limits.max_batch_operations}",
                field=field,
                limit="max_batch_operations",
            )

    # -- commit bodies (synchronous; raising writes nothing) ----------------------------------

    def _init(self, c: Commit, spec: RunSpec) -> RunHeader:
        check_run(
            spec.run_id,
            spec.start_ms,
            spec.schedule_ms,
            spec.entities,
            spec.schema_version,
            spec.keep,
            self.limits,
        )
        run_id = spec.run_id
        key = keys.run_key(run_id)
        if c.get(Keyspace.RUNS, key) is not None:
            raise AlreadyExists("RUN_EXISTS", f"run {run_id!r} is already initialised", run_id=run_id)
        ids = sorted(entity_id for entity_id, _ in spec.entities)
        header = RunHeader(
            run_id,
            spec.start_ms,
            spec.schedule_ms,
            spec.schema_version or 1,
            spec.keep,
            len(ids),
            c.revision,
            c.now_ms,
            0,
            {0: len(ids)},
            [],
        )
        c.put(Keyspace.RUNS, key, codec.encode_run(header))
        c.put(Keyspace.RUNS, keys.run_entity_ids_key(run_id), codec.encode_entity_ids(ids))
        fresh = codec.encode_entity_progress(EntityProgress())
        for entity_id, state in spec.entities:
            c.put(Keyspace.RUN_ENTITIES, keys.run_entity_key(run_id, entity_id), fresh)
            c.put(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, 0), state)
        c.event(
            EventKind.RUN_INITIALISED,
            detail=detail(
                run_id=run_id, start_ms=spec.start_ms, schedule_ms=spec.schedule_ms, entities=len(ids)
            ),
        )
        return header

    def _update(self, c: Commit, updates: Sequence[tuple[str, str, bytes]]) -> int:
        per_run: dict[str, int] = {}
        for i, (run_id, entity_id, state) in enumerate(updates):
            try:
                field = f"updates[{i}]"
                check_id(run_id, f"{field}.run_id", self.limits)
                check_id(entity_id, f"{field}.entity_id", self.limits)
                check_state(state, f"{field}.state", self.limits)
                if run_id not in per_run:
                    self._header(c, run_id)
                    per_run[run_id] = 0
                if c.get(Keyspace.RUN_ENTITIES, keys.run_entity_key(run_id, entity_id)) is None:
                    raise _unknown_entity(run_id, entity_id, f"{field}.entity_id")
            except DomainError as e:
                raise BatchOperationFailed(i, e) from e
            c.put(Keyspace.SAVEPOINT_PARTS, keys.entity_update_key(run_id, entity_id), state)
            per_run[run_id] += 1
        for run_id, n in per_run.items():
            c.event(EventKind.ENTITY_UPDATED, detail=detail(run_id=run_id, updates=n))
        return len(updates)

    def _header(self, c: Commit, run_id: str) -> RunHeader:
        raw = c.get(Keyspace.RUNS, keys.run_key(run_id))
        if raw is None:
            raise _run_not_found(run_id)
        return codec.decode_run(raw)

    def _ids(self, c: Commit, rw: _RunWork) -> list[str]:
        if rw.ids is None:
            raw = c.get(Keyspace.RUNS, keys.run_entity_ids_key(rw.header.run_id))
            assert raw is not None, "a run's entity ids are written with its header"
            rw.ids = codec.decode_entity_ids(raw)
        return rw.ids

    def _entity(self, c: Commit, rw: _RunWork, entity_id: str, field: str = "entity_id") -> EntityProgress:
        ep = rw.entities.get(entity_id)
        if ep is None:
            run_id = rw.header.run_id
            raw = c.get(Keyspace.RUN_ENTITIES, keys.run_entity_key(run_id, entity_id))
            if raw is None:
                raise _unknown_entity(run_id, entity_id, field)
            ep = rw.entities[entity_id] = codec.decode_entity_progress(raw)
        return ep

    def _save(self, c: Commit, saves: Sequence[EntitySave], field: str) -> SaveOutcome:
        work: dict[str, _RunWork] = {}
        results = []
        for i, s in enumerate(saves):
            try:
                results.append(self._save_one(c, work, s, f"{field}[{i}]"))
            except DomainError as e:
                raise BatchOperationFailed(i, e) from e
        completed: list[tuple[str, int]] = []
        for rw in work.values():
            completed.extend(self._finish(c, rw))
        return SaveOutcome(tuple(results), tuple(completed))

    def _save_one(self, c: Commit, work: dict[str, _RunWork], s: EntitySave, field: str) -> SaveResult:
        limits = self.limits
        check_id(s.run_id, f"{field}.run_id", limits)
        check_id(s.entity_id, f"{field}.entity_id", limits)
        if s.state is not None:
            check_state(s.state, f"{field}.state", limits)
        rw = work.get(s.run_id)
        if rw is None:
            rw = work[s.run_id] = _RunWork(self._header(c, s.run_id))
        header = rw.header
        check_timestamp(header, s.timestamp, f"{field}.timestamp_ms")
        ep = self._entity(c, rw, s.entity_id, f"{field}.entity_id")
        reached = entity_next_savepoint(header, ep)
        if reached is None or s.timestamp < reached:
            return SaveResult(None, reached or 0)
        run_id = header.run_id
        state = s.state if s.state is not None else self._current_state(c, run_id, s.entity_id, ep)
        # Contributions every savepoint of which is complete are dropped here, when the entity's
        # record is rewritten anyway (not when the savepoint completes: that would rewrite all).
        if ep.segments and ep.segments[0] <= header.frontier:
            for upto in ep.prune(header.frontier):
                c.delete(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, s.entity_id, upto))
        filled = fill(header, ep, s.timestamp)
        assert filled is not None
        c.put(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, s.entity_id, filled.last), state)
        rw.dirty.add(s.entity_id)
        rw.fills += 1
        return SaveResult(filled, entity_next_savepoint(header, ep) or 0)

    def _current_state(self, c: Commit, run_id: str, entity_id: str, ep: EntityProgress) -> bytes:
        """The envelope's current state, else the latest saved one, else the initial one."""
        current = c.get(Keyspace.SAVEPOINT_PARTS, keys.entity_update_key(run_id, entity_id))
        if current is not None:
            return current
        if ep.segments:
            raw = c.get(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, ep.segments[-1]))
        elif ep.filled_through:
            # No pending segment: its last contribution is in the latest complete savepoint.
            raw = c.get(
                Keyspace.SAVEPOINT_STATES, keys.savepoint_state_key(run_id, ep.filled_through, entity_id)
            )
        else:
            raw = c.get(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, 0))
        if raw is None:
            raise RuntimeError(f"run {run_id!r} entity {entity_id!r}: its saved state is missing")
        return raw

    def _finish(self, c: Commit, rw: _RunWork) -> list[tuple[str, int]]:
        header = rw.header
        run_id = header.run_id
        if rw.fills:
            c.event(EventKind.ENTITY_SAVED, detail=detail(run_id=run_id, saves=rw.fills))
        done = completion(header, self.default_keep)
        if done is not None:
            self._complete(c, rw, done)
        for entity_id in rw.dirty:
            c.put(
                Keyspace.RUN_ENTITIES,
                keys.run_entity_key(run_id, entity_id),
                codec.encode_entity_progress(rw.entities[entity_id]),
            )
        if rw.fills or done is not None:
            c.put(Keyspace.RUNS, keys.run_key(run_id), codec.encode_run(header))
        return [(run_id, t) for t in done.persist] if done is not None else []

    def _complete(self, c: Commit, rw: _RunWork, done: Completion) -> None:
        """Persist the savepoints that became complete (every entity's state for each) and
        apply keep-N. Contributions no incomplete savepoint needs any more are dropped at each
        entity's next save (see _save_one)."""
        header = rw.header
        run_id = header.run_id
        ids = self._ids(c, rw)
        sums = {t: Checksum(t, header.schema_version) for t in done.persist}
        sizes = dict.fromkeys(done.persist, 0)
        for entity_id in ids:
            ep = self._entity(c, rw, entity_id)
            for t in done.persist:
                state = c.get(
                    Keyspace.SAVEPOINT_PARTS,
                    keys.savepoint_part_key(run_id, entity_id, ep.segment_for(t)),
                )
                if state is None:
                    raise RuntimeError(f"run {run_id!r} entity {entity_id!r}: a saved state is missing")
                c.put(Keyspace.SAVEPOINT_STATES, keys.savepoint_state_key(run_id, t, entity_id), state)
                sums[t].add(entity_id, state)
                sizes[t] += len(state)
        for t in done.persist:
            info = SavepointInfo(
                t, header.schema_version, len(ids), sums[t].digest(), c.revision, c.now_ms, sizes[t]
            )
            c.put(Keyspace.SAVEPOINTS, keys.savepoint_key(run_id, t), codec.encode_savepoint(info))
        for t in done.drop:
            self._delete_savepoint(c, run_id, t, ids)
        apply_completion(header, done)
        for t in done.persist:
            c.event(
                EventKind.SAVEPOINT_COMPLETED,
                detail=detail(run_id=run_id, timestamp_ms=t, entities=len(ids), skipped=done.skipped),
            )

    def _delete_savepoint(self, c: Commit, run_id: str, t: int, ids: Sequence[str]) -> None:
        c.delete(Keyspace.SAVEPOINTS, keys.savepoint_key(run_id, t))
        prefix = keys.savepoint_key(run_id, t)
        names = set(ids)
        # An older savepoint may hold entities the run no longer has (an upgrade changed them).
        for key, _ in c.scan(Keyspace.SAVEPOINT_STATES, prefix, keys.prefix_end(prefix)):
            names.add(key[len(prefix) :].decode(errors="replace"))
        for entity_id in names:
            c.delete(Keyspace.SAVEPOINT_STATES, keys.savepoint_state_key(run_id, t, entity_id))

    def _delete(self, c: Commit, run_id: str) -> int:
        check_id(run_id, "run_id", self.limits)
        rw = _RunWork(self._header(c, run_id))
        ids = self._ids(c, rw)
        for entity_id in ids:
            ep = self._entity(c, rw, entity_id)
            for upto in (0, *ep.segments, keys.CURRENT_STATE_UPTO):
                c.delete(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, upto))
            c.delete(Keyspace.RUN_ENTITIES, keys.run_entity_key(run_id, entity_id))
        for t in rw.header.savepoints:
            self._delete_savepoint(c, run_id, t, ids)
        c.delete(Keyspace.RUNS, keys.run_key(run_id))
        c.delete(Keyspace.RUNS, keys.run_entity_ids_key(run_id))
        c.event(
            EventKind.RUN_DELETED,
            detail=detail(run_id=run_id, entities=len(ids), savepoints=len(rw.header.savepoints)),
        )
        return len(rw.header.savepoints)

    def _rewrite(
        self,
        c: Commit,
        run_id: str,
        timestamp: int,
        schema_version: int,
        entities: Sequence[tuple[str, bytes]],
    ) -> RunHeader:
        """Savepoint `timestamp` gets `entities` (which become the run's entity set) and
        `schema_version`; the run resumes from it: newer savepoints and every contribution to
        incomplete savepoints are dropped, every entity holds exactly the savepoints <= it."""
        check_id(run_id, "run_id", self.limits)
        if schema_version < 1:
            raise InvalidArgument(
                "FIELD_INVALID", "schema_version must be at least 1", field="schema_version"
            )
        check_entities(entities, "entities", self.limits)
        rw = _RunWork(self._header(c, run_id))
        header = rw.header
        if timestamp not in header.savepoints:
            raise NotFound(
                "SAVEPOINT_NOT_FOUND",
                f"run {run_id!r} has no complete savepoint at {timestamp}",
                run_id=run_id,
                timestamp_ms=timestamp,
                field="timestamp_ms",
            )
        old_ids = self._ids(c, rw)
        new = dict(entities)
        new_ids = sorted(new)
        for entity_id in old_ids:
            ep = self._entity(c, rw, entity_id)
            # The run resumes from the savepoint: current states given before are forgotten.
            for upto in (*ep.segments, keys.CURRENT_STATE_UPTO):
                c.delete(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, upto))
            if entity_id not in new:
                c.delete(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, 0))
                c.delete(Keyspace.RUN_ENTITIES, keys.run_entity_key(run_id, entity_id))
        progress = codec.encode_entity_progress(EntityProgress(timestamp, []))
        known = set(old_ids)
        for entity_id in new_ids:
            c.put(Keyspace.RUN_ENTITIES, keys.run_entity_key(run_id, entity_id), progress)
            if entity_id not in known:
                c.put(Keyspace.SAVEPOINT_PARTS, keys.savepoint_part_key(run_id, entity_id, 0), new[entity_id])
        superseded = [t for t in header.savepoints if t > timestamp]
        for t in [*superseded, timestamp]:
            self._delete_savepoint(c, run_id, t, old_ids)
        check = Checksum(timestamp, schema_version)
        size = 0
        for entity_id in new_ids:
            state = new[entity_id]
            c.put(Keyspace.SAVEPOINT_STATES, keys.savepoint_state_key(run_id, timestamp, entity_id), state)
            check.add(entity_id, state)
            size += len(state)
        info = SavepointInfo(
            timestamp, schema_version, len(new_ids), check.digest(), c.revision, c.now_ms, size
        )
        c.put(Keyspace.SAVEPOINTS, keys.savepoint_key(run_id, timestamp), codec.encode_savepoint(info))
        header.schema_version = schema_version
        header.entity_count = len(new_ids)
        header.frontier = timestamp
        header.filled = {timestamp: len(new_ids)}
        header.savepoints = [t for t in header.savepoints if t <= timestamp]
        c.put(Keyspace.RUNS, keys.run_key(run_id), codec.encode_run(header))
        c.put(Keyspace.RUNS, keys.run_entity_ids_key(run_id), codec.encode_entity_ids(new_ids))
        c.event(
            EventKind.RUN_UPGRADED,
            detail=detail(
                run_id=run_id,
                timestamp_ms=timestamp,
                schema_version=schema_version,
                entities=len(new_ids),
                superseded=superseded,
            ),
        )
        return header


def _run_not_found(run_id: str) -> NotFound:
    return NotFound("RUN_NOT_FOUND", f"run {run_id!r} is not initialised", run_id=run_id)


def _unknown_entity(run_id: str, entity_id: str, field: str) -> InvalidArgument:
    return InvalidArgument(
        "UNKNOWN_ENTITY",
        f"run {run_id!r} has no entity {entity_id!r}",
        field=field,
        run_id=run_id,
        entity_id=entity_id,
    )
