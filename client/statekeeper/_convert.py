"""Conversions between the SDK's types and the API messages."""

from __future__ import annotations

from collections.abc import Sequence

from statekeeper._types import (
    Backup,
    ClusterMember,
    Consumer,
    Event,
    LeasedTask,
    MachineType,
    Node,
    Outbound,
    Ref,
    Run,
    SaveOutcome,
    Savepoint,
    SavepointInfo,
    SaveResult,
    ServerInfo,
    State,
    Task,
    TaskInput,
    Timer,
    Transition,
    TransitionResult,
    TreeSnapshot,
)
from statekeeper.v1 import (
    admin_pb2,
    common_pb2,
    event_pb2,
    machine_type_pb2,
    node_pb2,
    savepoint_pb2,
    task_pb2,
)


def data(value: bytes | str | None, content_type: str = "") -> common_pb2.Data | None:
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    return common_pb2.Data(value=raw, content_type=content_type)


def ref_pb(r: Ref) -> common_pb2.NodeRef:
    if not r.path:
        return common_pb2.NodeRef(root_id=r.root_id)
    return common_pb2.NodeRef(root_id=r.root_id, path=[common_pb2.NodeKey(type=t, id=i) for t, i in r.path])


def ref(m: common_pb2.NodeRef) -> Ref:
    path = m.path
    return Ref(m.root_id, tuple([(k.type, k.id) for k in path]) if path else ())


def node(m: node_pb2.Node, known: Ref | None = None) -> Node:
    """known: the node's reference when the caller has it already (the one it addressed)."""
    data, counts = m.data, m.child_counts
    return Node(
        known if known is not None else ref(m.ref),
        m.type,
        m.type_version,
        m.state,
        data.value,
        data.content_type,
        m.transition_count,
        m.create_revision,
        m.update_revision,
        m.terminal,
        dict(counts) if counts else {},
    )


def task(m: task_pb2.Task, lease: task_pb2.TaskLease | None = None, next_attempt_ms: int = 0) -> Task:
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
        next_attempt_ms=next_attempt_ms,
        lease_worker_id=lease.worker_id if lease is not None else "",
        lease_expires_ms=lease.expires_ms if lease is not None else 0,
    )


def transition_result(m: node_pb2.ApplyTransitionResponse, known: Ref | None = None) -> TransitionResult:
    """known: the reference the transition addressed (the server answers with that node)."""
    tasks = m.tasks
    return TransitionResult(
        node(m.node, known), m.revision, m.from_state, tuple([task(t) for t in tasks]) if tasks else ()
    )


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


def event_kind_name(value: int) -> str:
    return event_pb2.EventKind.Name(value).removeprefix("EVENT_KIND_").lower()  # type: ignore[arg-type]


def event_kind_value(name: str) -> int:
    try:
        return int(event_pb2.EventKind.Value("EVENT_KIND_" + name.upper()))
    except ValueError:
        raise ValueError(f"unknown event kind {name!r}") from None


def event(m: event_pb2.Event) -> Event:
    return Event(
        revision=m.revision,
        index=m.index,
        kind=event_kind_name(m.kind),
        time_ms=m.time_ms,
        ref=ref(m.node) if m.HasField("node") else None,
        machine_type=m.machine_type,
        from_state=m.from_state,
        to_state=m.to_state,
        transition=m.transition,
        transition_count=m.transition_count,
        task_id=m.task_id,
        detail=m.detail,
    )


def event_filter(
    root_id: str, path_prefix: Sequence[tuple[str, str]], machine_types: Sequence[str], kinds: Sequence[str]
) -> event_pb2.EventFilter:
    return event_pb2.EventFilter(
        root_id=root_id,
        path_prefix=[common_pb2.NodeKey(type=t, id=i) for t, i in path_prefix],
        machine_types=list(machine_types),
        kinds=[event_kind_value(k) for k in kinds],  # type: ignore[misc]
    )


def consumer(m: event_pb2.Consumer) -> Consumer:
    return Consumer(
        name=m.name,
        acked_revision=m.acked_revision,
        unacked_count=m.unacked_count,
        lag_revisions=m.lag_revisions,
        subscribers=m.subscribers,
        ack_wait_ms=m.ack_wait_ms,
        max_unacked=m.max_unacked,
        create_revision=m.create_revision,
        root_id=m.filter.root_id,
        machine_types=tuple(m.filter.machine_types),
        kinds=tuple(event_kind_name(k) for k in m.filter.kinds),
    )


def leased_task(m: task_pb2.LeasedTask) -> LeasedTask:
    return LeasedTask(task(m.task), m.lease_token, m.lease_expires_ms)


def task_status_value(name: str) -> int:
    try:
        return int(task_pb2.TaskStatus.Value("TASK_STATUS_" + name.upper()))
    except ValueError:
        raise ValueError(f"unknown task status {name!r}") from None


def completion_inputs(items: Sequence[TaskInput] | None) -> list[task_pb2.CompletionTaskInput]:
    return [
        task_pb2.CompletionTaskInput(task=i.task, deadline_ms=i.deadline_ms, payload=i.payload)
        for i in items or ()
    ]


# -- savepoints ---------------------------------------------------------------------------------


def state(value: State) -> bytes:
    return value.encode() if isinstance(value, str) else value


def run(m: savepoint_pb2.Run) -> Run:
    return Run(
        run_id=m.run_id,
        start_ms=m.start_ms,
        schedule_ms=m.schedule_ms,
        schema_version=m.schema_version,
        keep_count=m.keep_count,
        entity_count=m.entity_count,
        latest_savepoint_ms=m.latest_savepoint_ms if m.savepoint_count else None,
        savepoint_count=m.savepoint_count,
        next_savepoint_ms=m.next_savepoint_ms or None,
        create_revision=m.create_revision,
        create_time_ms=m.create_time_ms,
    )


def save_result(m: savepoint_pb2.EntitySaveResult) -> SaveResult:
    return SaveResult(m.filled_count, m.first_filled_ms, m.last_filled_ms, m.next_savepoint_ms)


def save_outcome(
    m: savepoint_pb2.SaveEntityStatesResponse | savepoint_pb2.AckProcessedTimeResponse,
) -> SaveOutcome:
    return SaveOutcome(
        m.revision,
        tuple(save_result(r) for r in m.results),
        tuple((c.run_id, c.timestamp_ms) for c in m.completed),
    )


def savepoint(chunks: Sequence[savepoint_pb2.LoadSavepointResponse]) -> Savepoint:
    first = chunks[0]
    states = {e.entity_id: e.state for c in chunks for e in c.entities}
    if len(states) != first.entity_count:
        raise ValueError(f"the savepoint arrived with {len(states)} of {first.entity_count} entities")
    return Savepoint(
        run_id=first.run_id,
        timestamp_ms=first.timestamp_ms,
        schema_version=first.schema_version,
        states=states,
        damaged_timestamps=tuple(first.damaged_timestamps),
        fell_back=first.fell_back,
    )


def savepoint_info(m: savepoint_pb2.SavepointInfo) -> SavepointInfo:
    return SavepointInfo(
        m.timestamp_ms, m.schema_version, m.entity_count, m.size_bytes, m.revision, m.create_time_ms
    )


def tree_snapshot(m: savepoint_pb2.TreeSnapshot) -> TreeSnapshot:
    return TreeSnapshot(
        m.root_id, m.name, m.revision, m.create_revision, m.create_time_ms, m.node_count, m.task_count
    )


def server_info(m: admin_pb2.GetServerInfoResponse) -> ServerInfo:
    return ServerInfo(
        m.version,
        m.revision,
        m.durable_revision,
        m.store,
        m.store_location,
        m.fsync,
        m.start_time_ms,
        m.server_time_ms,
        m.oldest_event_revision,
        m.shard_count,
        tuple(
            ClusterMember(c.server_id, c.address, c.self, tuple(c.owned_shards)) for c in m.cluster_members
        ),
    )


def backup(m: admin_pb2.CreateBackupResponse) -> Backup:
    return Backup(m.name, m.path, m.revision, m.size_bytes, m.create_time_ms)
