"""Conversions between API messages (statekeeper.v1) and domain objects."""

from __future__ import annotations

import base64
import binascii

from statekeeper.v1 import common_pb2, machine_type_pb2, node_pb2, task_pb2
from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.model import (
    MachineType,
    NodeAddress,
    NodeRecord,
    TaskDefinition,
    TaskKind,
    TaskRecord,
    TransitionDefinition,
)
from statekeeper_server.domain.transaction import NodeSnapshot, TaskInput


def address(ref: common_pb2.NodeRef) -> NodeAddress:
    return NodeAddress(ref.root_id, tuple((k.type, k.id) for k in ref.path))


def ref(a: NodeAddress) -> common_pb2.NodeRef:
    return common_pb2.NodeRef(root_id=a.root_id, path=[common_pb2.NodeKey(type=t, id=i) for t, i in a.path])


def node(a: NodeAddress, r: NodeRecord) -> node_pb2.Node:
    return node_pb2.Node(
        ref=ref(a),
        type=r.type,
        type_version=r.type_version,
        state=r.state,
        data=common_pb2.Data(value=r.data, content_type=r.content_type),
        transition_count=r.transition_count,
        create_revision=r.create_revision,
        update_revision=r.update_revision,
        terminal=r.terminal,
        child_counts=r.child_counts,
    )


def snapshot(s: NodeSnapshot) -> node_pb2.Node:
    return node(s.address, s.record)


_TASK_KIND = {TaskKind.TIMER: task_pb2.TASK_KIND_TIMER, TaskKind.OUTBOUND: task_pb2.TASK_KIND_OUTBOUND}


def task(t: TaskRecord) -> task_pb2.Task:
    return task_pb2.Task(
        id=t.task_id,
        name=t.name,
        kind=_TASK_KIND[t.kind],
        reference=task_pb2.TaskReference(
            node=ref(t.address),
            node_create_revision=t.node_create_revision,
            transition_count=t.transition_count,
        ),
        status=int(t.status),  # type: ignore[arg-type]
        deadline_ms=t.deadline_ms,
        timer_transition=t.timer_transition,
        destination=t.destination,
        payload=t.payload,
        attempts=t.attempts,
        last_error=t.last_error,
        create_revision=t.create_revision,
        emitted_by=t.emitted_by,
    )


def task_inputs(items: object) -> tuple[TaskInput, ...]:
    return tuple(TaskInput(ti.task, ti.deadline_ms, ti.payload) for ti in items)  # type: ignore[attr-defined]


def machine_type(m: machine_type_pb2.MachineType) -> MachineType:
    transitions = []
    for i, t in enumerate(m.transitions):
        tasks = []
        for j, k in enumerate(t.tasks):
            which = k.WhichOneof("kind")
            if which == "timer":
                tasks.append(
                    TaskDefinition(
                        k.name,
                        TaskKind.TIMER,
                        delay_ms=k.timer.delay_ms,
                        deadline_from_request=k.timer.deadline_from_request,
                        timer_transition=k.timer.transition,
                    )
                )
            elif which == "outbound":
                tasks.append(
                    TaskDefinition(
                        k.name,
                        TaskKind.OUTBOUND,
                        destination=k.outbound.destination,
                        payload=k.outbound.payload,
                    )
                )
            else:
                field = f"machine_type.transitions[{i}].tasks[{j}]"
                raise InvalidArgument("FIELD_REQUIRED", f"{field} must set timer or outbound", field=field)
        transitions.append(TransitionDefinition(t.name, tuple(t.sources), t.destination, tuple(tasks)))
    return MachineType(
        name=m.name,
        version=m.version,
        states=tuple(m.states),
        initial_state=m.initial_state,
        terminal_states=tuple(m.terminal_states),
        transitions=tuple(transitions),
        description=m.description,
    )


def machine_type_pb(mt: MachineType) -> machine_type_pb2.MachineType:
    transitions = []
    for t in mt.transitions:
        tasks = []
        for k in t.tasks:
            if k.kind is TaskKind.TIMER:
                tasks.append(
                    machine_type_pb2.TaskDefinition(
                        name=k.name,
                        timer=machine_type_pb2.TimerTaskDefinition(
                            delay_ms=k.delay_ms,
                            deadline_from_request=k.deadline_from_request,
                            transition=k.timer_transition,
                        ),
                    )
                )
            else:
                tasks.append(
                    machine_type_pb2.TaskDefinition(
                        name=k.name,
                        outbound=machine_type_pb2.OutboundTaskDefinition(
                            destination=k.destination, payload=k.payload
                        ),
                    )
                )
        transitions.append(
            machine_type_pb2.TransitionDefinition(
                name=t.name, sources=t.sources, destination=t.destination, tasks=tasks
            )
        )
    return machine_type_pb2.MachineType(
        name=mt.name,
        version=mt.version,
        states=mt.states,
        initial_state=mt.initial_state,
        terminal_states=mt.terminal_states,
        transitions=transitions,
        description=mt.description,
    )


def encode_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str) -> bytes | None:
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError) as e:
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN", "page_token is not a token this server issued", field="page_token"
        ) from e
