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

# The hot paths (every transition, every batch result) fill messages in place: building nested
# messages with keyword arguments copies each sub-message into its parent, about 3x the cost.


def address(ref: common_pb2.NodeRef) -> NodeAddress:
    path = ref.path
    if not path:
        return NodeAddress(ref.root_id)
    return NodeAddress(ref.root_id, tuple([(k.type, k.id) for k in path]))


def fill_ref(out: common_pb2.NodeRef, a: NodeAddress) -> None:
    out.root_id = a.root_id
    if a.path:
        add = out.path.add
        for t, i in a.path:
            add(type=t, id=i)


def ref(a: NodeAddress) -> common_pb2.NodeRef:
    out = common_pb2.NodeRef()
    fill_ref(out, a)
    return out


def fill_node(out: node_pb2.Node, a: NodeAddress, r: NodeRecord) -> None:
    """Set every field of an empty Node message from a node's address and record."""
    fill_ref(out.ref, a)
    out.type = r.type
    out.type_version = r.type_version
    out.state = r.state
    data = out.data
    data.value = r.data
    data.content_type = r.content_type
    out.transition_count = r.transition_count
    out.create_revision = r.create_revision
    out.update_revision = r.update_revision
    out.terminal = r.terminal
    if r.child_counts:
        out.child_counts.update(r.child_counts)


def node(a: NodeAddress, r: NodeRecord) -> node_pb2.Node:
    out = node_pb2.Node()
    fill_node(out, a, r)
    return out


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
    if not items:
        return ()
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
        # validate=True: anything but the URL-safe alphabet is refused, not silently skipped
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN", "page_token is not a token this server issued", field="page_token"
        ) from e
