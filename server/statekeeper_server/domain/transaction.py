"""A transaction: the operations of one commit, applied in order against a view of the state.

The transaction reads through its own writes, then the view; it never changes the view. If an
operation raises, the caller discards the transaction and nothing has changed (batch atomicity).
On success the caller persists `nodes`, `tasks`, `types` and `events` under `revision`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from statekeeper_server.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.model import (
    Event,
    EventKind,
    MachineType,
    NodeAddress,
    NodeKey,
    NodeRecord,
    TaskDefinition,
    TaskKind,
    TaskRecord,
)
from statekeeper_server.domain.validation import (
    check_address,
    check_data,
    check_id,
    check_machine_type,
    check_name,
)


class StateView(Protocol):
    """Read access to the state a transaction builds on."""

    def get_node(self, address: NodeAddress) -> NodeRecord | None: ...

    def get_nodes(self, addresses: Sequence[NodeAddress]) -> list[NodeRecord | None]:
        """get_node of each address, in one read of the store."""
        ...

    def get_machine_type(self, name: str, version: int) -> MachineType | None:
        """version 0 means the latest version."""
        ...

    def descendants(self, address: NodeAddress) -> Iterator[NodeAddress]:
        """Every node below address (not address itself), in any order."""
        ...


@dataclass(frozen=True, slots=True)
class TaskInput:
    task: str
    deadline_ms: int = 0
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    address: NodeAddress
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class TransitionOutcome:
    node: NodeSnapshot
    from_state: str
    tasks: tuple[TaskRecord, ...]


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    deleted_count: int


class Transaction:
    def __init__(
        self, view: StateView, revision: int, now_ms: int, limits: Limits, events: list[Event] | None = None
    ) -> None:
        self.view = view
        self.revision = revision
        self.now_ms = now_ms
        self.limits = limits
        self.nodes: dict[NodeAddress, NodeRecord | None] = {}
        self.tasks: list[TaskRecord] = []
        self.types: list[MachineType] = []
        # Shared with the enclosing commit when other changes (tasks, savepoints) join it.
        self.events: list[Event] = [] if events is None else events
        self._deleted: set[NodeAddress] = set()
        # What each written node was before this transaction (for index maintenance); a missing
        # entry means "not read here": look it up in the view.
        self.before: dict[NodeAddress, NodeRecord | None] = {}
        # Nodes read from the view (it does not change while a transaction is built).
        self._read: dict[NodeAddress, NodeRecord | None] = {}

    # -- reads -------------------------------------------------------------------------------

    def get(self, address: NodeAddress) -> NodeRecord | None:
        if address in self.nodes:
            return self.nodes[address]
        read = self._read
        if address in read:
            return read[address]
        record = read[address] = self.view.get_node(address)
        return record

    def read_ahead(self, addresses: Sequence[NodeAddress]) -> None:
        """Read these nodes now, in one read of the view (the nodes a batch's operations use):
        one store call instead of one per operation."""
        read, nodes = self._read, self.nodes
        wanted = [a for a in dict.fromkeys(addresses) if a not in read and a not in nodes]
        if wanted:
            read.update(zip(wanted, self.view.get_nodes(wanted), strict=True))

    def _put(self, address: NodeAddress, record: NodeRecord | None, before: NodeRecord | None) -> None:
        if address not in self.nodes:
            self.before[address] = before
        self.nodes[address] = record

    def _require(self, address: NodeAddress) -> NodeRecord:
        record = self.get(address)
        if record is None:
            raise NotFound("NODE_NOT_FOUND", f"node {address} does not exist", node=str(address))
        return record

    def _machine_type(self, name: str, version: int) -> MachineType:
        mt = self.view.get_machine_type(name, version)
        if mt is None:
            what = f"machine type {name!r}" + (f" version {version}" if version else "")
            raise NotFound(
                "MACHINE_TYPE_NOT_FOUND", f"{what} is not registered", machine_type=name, version=version
            )
        return mt

    # -- writes ------------------------------------------------------------------------------

    def _event(self, kind: EventKind, address: NodeAddress | None, **fields: object) -> None:
        self.events.append(Event(self.revision, len(self.events), kind, self.now_ms, address, **fields))  # type: ignore[arg-type]

    def register_type(self, mt: MachineType) -> tuple[MachineType, bool]:
        """Returns (the stored definition, created). Identical re-registration is a no-op."""
        check_machine_type(mt, self.limits)
        existing = self.view.get_machine_type(mt.name, mt.version)
        if existing is not None:
            if existing == mt:
                return existing, False
            raise AlreadyExists(
                "MACHINE_TYPE_EXISTS",
                f"machine type {mt.name!r} version {mt.version} is registered with a different definition; "
                "register a new version instead",
                machine_type=mt.name,
                version=mt.version,
            )
        self.types.append(mt)
        self._event(EventKind.MACHINE_TYPE_REGISTERED, None, node_type=mt.name, detail=str(mt.version))
        return mt, True

    def _new_node(
        self,
        address: NodeAddress,
        type_name: str,
        type_version: int,
        data: bytes,
        content_type: str,
        field: str,
    ) -> NodeSnapshot:
        check_data(data, content_type, f"{field}.data", self.limits)
        mt = self._machine_type(type_name, type_version)
        if address in self._deleted:
            raise InvalidArgument(
                "RECREATED_IN_BATCH",
                f"node {address} was deleted earlier in this batch; recreate it in a later call",
                node=str(address),
            )
        if self.get(address) is not None:
            raise AlreadyExists("NODE_EXISTS", f"node {address} already exists", node=str(address))
        record = NodeRecord(
            type=mt.name,
            type_version=mt.version,
            state=mt.initial_state,
            data=data,
            content_type=content_type,
            transition_count=0,
            create_revision=self.revision,
            update_revision=self.revision,
            terminal=mt.is_terminal(mt.initial_state),
            child_counts={},
        )
        self._put(address, record, None)
        self._event(EventKind.NODE_CREATED, address, node_type=mt.name, to_state=mt.initial_state)
        return NodeSnapshot(address, record)

    def create_root(
        self, type_name: str, root_id: str, data: bytes, content_type: str, type_version: int = 0
    ) -> NodeSnapshot:
        check_name(type_name, "type", self.limits)
        check_id(root_id, "id", self.limits)
        return self._new_node(NodeAddress(root_id), type_name, type_version, data, content_type, "")

    def add_child(
        self, parent: NodeAddress, key: NodeKey, data: bytes, content_type: str, type_version: int = 0
    ) -> NodeSnapshot:
        check_address(parent, "parent", self.limits)
        check_name(key[0], "key.type", self.limits)
        check_id(key[1], "key.id", self.limits)
        if len(parent.path) + 1 > self.limits.max_path_depth:
            raise InvalidArgument(
                "PATH_TOO_DEEP",
                f"a child of {parent} would be {len(parent.path) + 1} keys deep; the limit is {self.limits.max_path_depth}",
                field="key",
                limit="max_path_depth",
            )
        parent_record = self._require(parent)
        count = parent_record.child_counts.get(key[0], 0)
        if sum(parent_record.child_counts.values()) >= self.limits.max_children_per_node:
            raise ResourceExhausted(
                "TOO_MANY_CHILDREN",
                f"node {parent} has {self.limits.max_children_per_node} children, the limit",
                limit="max_children_per_node",
            )
        snapshot = self._new_node(parent.child(key), key[0], type_version, data, content_type, "")
        updated = parent_record.copy()
        updated.child_counts[key[0]] = count + 1
        self._put(parent, updated, parent_record)
        return snapshot

    def apply_transition(
        self,
        address: NodeAddress,
        name: str,
        data: bytes | None,
        content_type: str,
        expected_transition_count: int | None = None,
        task_inputs: Sequence[TaskInput] = (),
    ) -> TransitionOutcome:
        check_address(address, "node", self.limits)
        check_name(name, "transition", self.limits)
        if data is not None:
            check_data(data, content_type, "data", self.limits)
        record = self._require(address)
        mt = self._machine_type(record.type, record.type_version)
        definition = mt.transition(name)
        if definition is None:
            raise InvalidArgument(
                "UNKNOWN_TRANSITION",
                f"machine type {mt.name!r} v{mt.version} has no transition {name!r}; "
                f"allowed from {record.state!r}: {', '.join(mt.allowed_from(record.state)) or 'none'}",
                field="transition",
                current_state=record.state,
                allowed_transitions=",".join(mt.allowed_from(record.state)),
            )
        if expected_transition_count is not None and expected_transition_count != record.transition_count:
            raise Aborted(
                "TRANSITION_COUNT_MISMATCH",
                f"node {address} has transition count {record.transition_count}, not {expected_transition_count}",
                expected=expected_transition_count,
                actual=record.transition_count,
            )
        if record.state not in definition.sources:
            allowed = mt.allowed_from(record.state)
            raise FailedPrecondition(
                "INVALID_TRANSITION",
                f"transition {name!r} is not allowed from state {record.state!r}"
                + (" (terminal)" if record.terminal else "")
                + f"; allowed: {', '.join(allowed) or 'none'}",
                current_state=record.state,
                allowed_transitions=",".join(allowed),
                terminal=str(record.terminal).lower(),
            )
        inputs = self._task_inputs(definition.tasks, task_inputs) if definition.tasks or task_inputs else {}
        destination = definition.destination
        count = record.transition_count + 1
        data_changed = data is not None and (data != record.data or content_type != record.content_type)
        # The new record shares child_counts with the old: records are values (changed only on a
        # copy), and a transition leaves the counts as they are.
        updated = NodeRecord(
            record.type,
            record.type_version,
            destination,
            data if data is not None else record.data,
            content_type if data is not None else record.content_type,
            count,
            record.create_revision,
            self.revision,
            mt.is_terminal(destination),
            record.child_counts,
        )
        self._put(address, updated, record)
        events = self.events
        events.append(
            Event(
                self.revision,
                len(events),
                EventKind.NODE_TRANSITIONED,
                self.now_ms,
                address,
                record.type,
                record.state,
                destination,
                name,
                count,
            )
        )
        if data_changed:
            self._event(EventKind.NODE_DATA_CHANGED, address, node_type=record.type, to_state=destination)
        if not definition.tasks:
            return TransitionOutcome(NodeSnapshot(address, updated), record.state, ())
        emitted = []
        for task_def in definition.tasks:
            given = inputs.get(task_def.name)
            task = TaskRecord(
                task_id=f"{self.revision}-{len(self.tasks)}",
                name=task_def.name,
                kind=task_def.kind,
                address=address,
                node_create_revision=record.create_revision,
                transition_count=updated.transition_count,
                emitted_by=name,
                create_revision=self.revision,
            )
            if task_def.kind is TaskKind.TIMER:
                task.timer_transition = task_def.timer_transition
                task.deadline_ms = (
                    given.deadline_ms
                    if task_def.deadline_from_request and given
                    else self.now_ms + task_def.delay_ms
                )
            else:
                task.destination = task_def.destination
                task.payload = given.payload if given and given.payload else task_def.payload
                # Queued by availability time: new tasks and retries take turns in time order.
                task.available_ms = self.now_ms
            self.tasks.append(task)
            emitted.append(task)
            self._event(
                EventKind.TASK_CREATED, address, node_type=record.type, task_id=task.task_id, detail=task.name
            )
        return TransitionOutcome(NodeSnapshot(address, updated), record.state, tuple(emitted))

    def _task_inputs(
        self, defs: Sequence[TaskDefinition], given: Sequence[TaskInput]
    ) -> dict[str, TaskInput]:
        if not given:  # the common case: only a timer needing a deadline from the request fails
            for d in defs:
                if d.deadline_from_request:
                    raise InvalidArgument(
                        "FIELD_REQUIRED",
                        f"timer {d.name!r} takes its deadline from the request: give task_inputs with deadline_ms",
                        field="task_inputs",
                    )
            return {}
        by_name = {d.name: d for d in defs}
        out: dict[str, TaskInput] = {}
        for i, ti in enumerate(given):
            task_def = by_name.get(ti.task)
            if task_def is None:
                raise InvalidArgument(
                    "UNKNOWN_TASK",
                    f"task_inputs[{i}].task {ti.task!r} is not a task of this transition",
                    field=f"task_inputs[{i}].task",
                )
            if ti.task in out:
                raise InvalidArgument(
                    "DUPLICATE_NAME", f"task_inputs[{i}] repeats {ti.task!r}", field=f"task_inputs[{i}]"
                )
            if len(ti.payload) > self.limits.max_payload_bytes:
                raise InvalidArgument(
                    "DATA_TOO_LARGE",
                    f"task_inputs[{i}].payload is {len(ti.payload)} bytes; the limit is {self.limits.max_payload_bytes}",
                    field=f"task_inputs[{i}].payload",
                    limit="max_payload_bytes",
                )
            if ti.deadline_ms < 0:
                raise InvalidArgument(
                    "FIELD_INVALID",
                    f"task_inputs[{i}].deadline_ms must not be negative",
                    field=f"task_inputs[{i}].deadline_ms",
                )
            out[ti.task] = ti
        for d in defs:
            if d.deadline_from_request and not (d.name in out and out[d.name].deadline_ms > 0):
                raise InvalidArgument(
                    "FIELD_REQUIRED",
                    f"timer {d.name!r} takes its deadline from the request: give task_inputs with deadline_ms",
                    field="task_inputs",
                )
        return out

    def delete(self, address: NodeAddress) -> DeleteOutcome:
        check_address(address, "node", self.limits)
        record = self._require(address)
        doomed = {address}
        doomed.update(self.view.descendants(address))
        doomed.update(a for a, r in self.nodes.items() if r is not None and a.is_within(address))
        doomed.difference_update(a for a, r in self.nodes.items() if r is None)
        if len(doomed) > self.limits.max_deleted_nodes:
            raise ResourceExhausted(
                "TOO_MANY_NODES",
                f"deleting {address} would delete {len(doomed)} nodes; the limit per call is {self.limits.max_deleted_nodes}",
                limit="max_deleted_nodes",
            )
        for a in doomed:
            if a == address:
                self._put(a, None, record)
            else:
                self.nodes[a] = None  # before: looked up when the index is updated
            self._deleted.add(a)
        parent = address.parent()
        if parent is not None:
            parent_record = self._require(parent)
            updated = parent_record.copy()
            remaining = updated.child_counts.get(record.type, 1) - 1
            if remaining > 0:
                updated.child_counts[record.type] = remaining
            else:
                updated.child_counts.pop(record.type, None)
            self._put(parent, updated, parent_record)
        self._event(
            EventKind.NODE_DELETED,
            address,
            node_type=record.type,
            from_state=record.state,
            detail=str(len(doomed)),
        )
        return DeleteOutcome(len(doomed))
