"""Conversions between the SDK's types and the API messages."""

from __future__ import annotations

from statekeeper._types import (
    MachineType,
    Node,
    Outbound,
    Ref,
    Task,
    TaskInput,
    Timer,
    Transition,
    TransitionResult,
)
from statekeeper.v1 import common_pb2, machine_type_pb2, node_pb2, task_pb2


def data(value: bytes | str | None, content_type: str = "") -> common_pb2.Data | None:
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    return common_pb2.Data(value=raw, content_type=content_type)


def ref_pb(r: Ref) -> common_pb2.NodeRef:
    return common_pb2.NodeRef(root_id=r.root_id, path=[common_pb2.NodeKey(type=t, id=i) for t, i in r.path])


def ref(m: common_pb2.NodeRef) -> Ref:
    return Ref(m.root_id, tuple((k.type, k.id) for k in m.path))


def node(m: node_pb2.Node) -> Node:
    return Node(
        ref=ref(m.ref),
        type=m.type,
        type_version=m.type_version,
        state=m.state,
        data=m.data.value,
        content_type=m.data.content_type,
        transition_count=m.transition_count,
        create_revision=m.create_revision,
        update_revision=m.update_revision,
        terminal=m.terminal,
        child_counts=dict(m.child_counts),
    )


def task(m: task_pb2.Task) -> Task:
    return Task(
        id=m.id,
        name=m.name,
        kind=task_pb2.TaskKind.Name(m.kind).removeprefix("TASK_KIND_").lower(),
        status=task_pb2.TaskStatus.Name(m.status).removeprefix("TASK_STATUS_").lower(),
        ref=ref(m.reference.node),
        node_create_revision=m.reference.node_create_revision,
        transition_count=m.reference.transition_count,
        emitted_by=m.emitted_by,
        create_revision=m.create_revision,
        deadline_ms=m.deadline_ms,
        timer_transition=m.timer_transition,
        destination=m.destination,
        payload=m.payload,
        attempts=m.attempts,
        last_error=m.last_error,
    )


def transition_result(m: node_pb2.ApplyTransitionResponse) -> TransitionResult:
    return TransitionResult(node(m.node), m.revision, m.from_state, tuple(task(t) for t in m.tasks))


def task_inputs(items: list[TaskInput] | None) -> list[node_pb2.TaskInput]:
    return [
        node_pb2.TaskInput(task=i.task, deadline_ms=i.deadline_ms, payload=i.payload) for i in items or ()
    ]


def machine_type_pb(mt: MachineType) -> machine_type_pb2.MachineType:
    transitions = []
    for t in mt.transitions:
        tasks = []
        for k in t.tasks:
            if isinstance(k, Timer):
                tasks.append(
                    machine_type_pb2.TaskDefinition(
                        name=k.name,
                        timer=machine_type_pb2.TimerTaskDefinition(
                            delay_ms=k.delay_ms,
                            deadline_from_request=k.deadline_from_request,
                            transition=k.transition,
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
                name=t.name, sources=list(t.sources), destination=t.destination, tasks=tasks
            )
        )
    return machine_type_pb2.MachineType(
        name=mt.name,
        version=mt.version,
        states=list(mt.states),
        initial_state=mt.initial_state,
        terminal_states=list(mt.terminal_states),
        transitions=transitions,
        description=mt.description,
    )


def machine_type(m: machine_type_pb2.MachineType) -> MachineType:
    transitions = []
    for t in m.transitions:
        tasks: list[Timer | Outbound] = []
        for k in t.tasks:
            if k.WhichOneof("kind") == "timer":
                tasks.append(
                    Timer(k.name, k.timer.transition, k.timer.delay_ms, k.timer.deadline_from_request)
                )
            else:
                tasks.append(Outbound(k.name, k.outbound.destination, k.outbound.payload))
        transitions.append(Transition(t.name, tuple(t.sources), t.destination, tuple(tasks)))
    return MachineType(
        name=m.name,
        version=m.version,
        states=tuple(m.states),
        initial_state=m.initial_state,
        transitions=tuple(transitions),
        terminal_states=tuple(m.terminal_states),
        description=m.description,
    )
