"""Record encoding: msgpack arrays with a leading record-format number.

msgpack is fast in Python, compact, and readable from any language, so a future tool or a
second server implementation can read the store. Positional arrays keep records small; the
leading number lets a later format add fields and still read old records.
"""

from __future__ import annotations

from typing import Protocol

import msgpack

from statekeeper_server.domain.events import EventFilter
from statekeeper_server.domain.model import (
    Event,
    EventKind,
    MachineType,
    NodeAddress,
    NodeRecord,
    TaskDefinition,
    TaskKind,
    TaskRecord,
    TaskStatus,
    TransitionDefinition,
)
from statekeeper_server.domain.savepoints import EntityProgress, RunHeader, SavepointInfo, TreeSnapshotInfo

_V1 = 1
_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(raw: bytes) -> list:  # type: ignore[type-arg]
    return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=False)  # type: ignore[no-any-return]


def _address(root: str, path: list[list[str]]) -> NodeAddress:
    return NodeAddress(root, tuple((t, i) for t, i in path))


def encode_node(r: NodeRecord) -> bytes:
    return _packb(
        [
            _V1,
            r.type,
            r.type_version,
            r.state,
            r.data,
            r.content_type,
            r.transition_count,
            r.create_revision,
            r.update_revision,
            r.terminal,
            r.child_counts,
        ]
    )


def decode_node(raw: bytes) -> NodeRecord:
    f = _unpackb(raw)
    return NodeRecord(f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10])


def encode_machine_type(mt: MachineType) -> bytes:
    transitions = [
        [
            t.name,
            list(t.sources),
            t.destination,
            [
                [
                    k.name,
                    int(k.kind),
                    k.delay_ms,
                    k.deadline_from_request,
                    k.timer_transition,
                    k.destination,
                    k.payload,
                ]
                for k in t.tasks
            ],
        ]
        for t in mt.transitions
    ]
    return _packb(
        [
            _V1,
            mt.name,
            mt.version,
            list(mt.states),
            mt.initial_state,
            list(mt.terminal_states),
            transitions,
            mt.description,
        ]
    )


def decode_machine_type(raw: bytes) -> MachineType:
    f = _unpackb(raw)
    transitions = tuple(
        TransitionDefinition(
            name,
            tuple(sources),
            destination,
            tuple(TaskDefinition(k[0], TaskKind(k[1]), k[2], k[3], k[4], k[5], k[6]) for k in tasks),
        )
        for name, sources, destination, tasks in f[6]
    )
    return MachineType(f[1], f[2], tuple(f[3]), f[4], tuple(f[5]), transitions, f[7])


def encode_task(t: TaskRecord) -> bytes:
    return _packb(
        [
            _V1,
            t.task_id,
            t.name,
            int(t.kind),
            t.address.root_id,
            t.address.path,  # msgpack writes tuples as arrays
            t.node_create_revision,
            t.transition_count,
            t.emitted_by,
            t.create_revision,
            int(t.status),
            t.deadline_ms,
            t.timer_transition,
            t.destination,
            t.payload,
            t.attempts,
            t.last_error,
            t.available_ms,
        ]
    )


def decode_task(raw: bytes) -> TaskRecord:
    f = _unpackb(raw)
    return TaskRecord(
        f[1],
        f[2],
        TaskKind(f[3]),
        _address(f[4], f[5]),
        f[6],
        f[7],
        f[8],
        f[9],
        TaskStatus(f[10]),
        f[11],
        f[12],
        f[13],
        f[14],
        f[15],
        f[16],
        f[17] if len(f) > 17 else 0,
    )


def encode_event(e: Event) -> bytes:
    a = e.address
    return _packb(
        [
            _V1,
            int(e.kind),
            e.time_ms,
            a.root_id if a else None,
            a.path if a else None,
            e.node_type,
            e.from_state,
            e.to_state,
            e.transition,
            e.transition_count,
            e.task_id,
            e.detail,
        ]
    )


def decode_event(revision: int, index: int, raw: bytes) -> Event:
    f = _unpackb(raw)
    address = _address(f[3], f[4]) if f[3] is not None else None
    return Event(
        revision, index, EventKind(f[1]), f[2], address, f[5], f[6], f[7], f[8], f[9], f[10], f[11], raw
    )


MSGPACK_EVENT = 0x9C
"""The first byte of an event in this module's format (a msgpack array of 12): an event codec
that stores another format tells the two apart by it, so stores written before keep working."""


class EventCodec(Protocol):
    """How events are stored. The composition root picks one (app/: the API's wire form, so a
    stream sends stored bytes as they are); the default is this module's msgpack format."""

    def encode(self, event: Event) -> bytes: ...

    def decode(self, revision: int, index: int, raw: bytes) -> Event: ...


class MsgpackEvents:
    def encode(self, event: Event) -> bytes:
        return encode_event(event)

    def decode(self, revision: int, index: int, raw: bytes) -> Event:
        return decode_event(revision, index, raw)


MSGPACK_EVENTS: EventCodec = MsgpackEvents()


def encode_request(fingerprint: bytes, response: bytes, expires_ms: int, revision: int) -> bytes:
    return _packb([_V1, fingerprint, response, expires_ms, revision])


def decode_request(raw: bytes) -> tuple[bytes, bytes, int, int]:
    f = _unpackb(raw)
    return f[1], f[2], f[3], f[4]


# -- events -----------------------------------------------------------------------------------


def encode_consumer(
    name: str,
    event_filter: EventFilter,
    ack_wait_ms: int,
    max_unacked: int,
    floor: tuple[int, int],
    acked_above: set[tuple[int, int]],
    create_revision: int,
) -> bytes:
    f = event_filter
    return _packb(
        [
            _V1,
            name,
            [
                f.root_id,
                [list(k) for k in f.path_prefix],
                sorted(f.machine_types),
                sorted(int(k) for k in f.kinds),
            ],
            ack_wait_ms,
            max_unacked,
            list(floor),
            sorted([list(p) for p in acked_above]),
            create_revision,
        ]
    )


def decode_consumer(
    raw: bytes,
) -> tuple[str, EventFilter, int, int, tuple[int, int], set[tuple[int, int]], int]:
    f = _unpackb(raw)
    root_id, path, types, kinds = f[2]
    event_filter = EventFilter(
        root_id, tuple((t, i) for t, i in path), frozenset(types), frozenset(EventKind(k) for k in kinds)
    )
    return f[1], event_filter, f[3], f[4], (f[5][0], f[5][1]), {(r, i) for r, i in f[6]}, f[7]


# -- savepoints ---------------------------------------------------------------------------------
# Entity states (SAVEPOINT_PARTS, SAVEPOINT_STATES) are stored as the raw bytes the client gave;
# the records below are msgpack like the others.


def encode_run(h: RunHeader) -> bytes:
    return _packb(
        [
            _V1,
            h.run_id,
            h.start_ms,
            h.schedule_ms,
            h.schema_version,
            h.keep,
            h.entity_count,
            h.create_revision,
            h.create_time_ms,
            h.frontier,
            h.filled,
            h.savepoints,
        ]
    )


def decode_run(raw: bytes) -> RunHeader:
    f = _unpackb(raw)
    return RunHeader(f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], dict(f[10]), list(f[11]))


def encode_entity_ids(ids: list[str]) -> bytes:
    return _packb([_V1, ids])


def decode_entity_ids(raw: bytes) -> list[str]:
    return list(_unpackb(raw)[1])


def encode_entity_progress(e: EntityProgress) -> bytes:
    return _packb([_V1, e.filled_through, e.segments])


def decode_entity_progress(raw: bytes) -> EntityProgress:
    f = _unpackb(raw)
    return EntityProgress(f[1], list(f[2]))


def encode_savepoint(s: SavepointInfo) -> bytes:
    return _packb(
        [
            _V1,
            s.timestamp,
            s.schema_version,
            s.entity_count,
            s.checksum,
            s.revision,
            s.create_time_ms,
            s.size_bytes,
        ]
    )


def decode_savepoint(raw: bytes) -> SavepointInfo:
    f = _unpackb(raw)
    return SavepointInfo(f[1], f[2], f[3], f[4], f[5], f[6], f[7])


def encode_tree_snapshot(s: TreeSnapshotInfo) -> bytes:
    return _packb(
        [_V1, s.root_id, s.name, s.revision, s.create_revision, s.create_time_ms, s.node_count, s.task_count]
    )


def decode_tree_snapshot(raw: bytes) -> TreeSnapshotInfo:
    f = _unpackb(raw)
    return TreeSnapshotInfo(f[1], f[2], f[3], f[4], f[5], f[6], f[7])
