"""Record encoding: msgpack arrays with a leading record-format number.

msgpack is fast in Python, compact, and readable from any language, so a future tool or a
second server implementation can read the store. Positional arrays keep records small; the
leading number lets a later format add fields and still read old records.
"""

from __future__ import annotations

import msgpack

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

_V1 = 1
_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(raw: bytes) -> list:  # type: ignore[type-arg]
    return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=False)  # type: ignore[no-any-return]


def _path(address: NodeAddress) -> list[list[str]]:
    return [[t, i] for t, i in address.path]


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
            _path(t.address),
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
    )


def encode_event(e: Event) -> bytes:
    a = e.address
    return _packb(
        [
            _V1,
            int(e.kind),
            e.time_ms,
            a.root_id if a else None,
            _path(a) if a else None,
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
    return Event(revision, index, EventKind(f[1]), f[2], address, f[5], f[6], f[7], f[8], f[9], f[10], f[11])


def encode_request(fingerprint: bytes, response: bytes, expires_ms: int, revision: int) -> bytes:
    return _packb([_V1, fingerprint, response, expires_ms, revision])


def decode_request(raw: bytes) -> tuple[bytes, bytes, int, int]:
    f = _unpackb(raw)
    return f[1], f[2], f[3], f[4]
