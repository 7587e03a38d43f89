"""The domain without gRPC or storage: transactions against an in-memory view."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

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
    EventKind,
    MachineType,
    NodeAddress,
    NodeRecord,
    TaskDefinition,
    TaskKind,
    TransitionDefinition,
)
from statekeeper_server.domain.transaction import TaskInput, Transaction

DOOR = MachineType(
    "door",
    1,
    ("closed", "open", "locked", "gone"),
    "closed",
    ("gone",),
    (
        TransitionDefinition(
            "open",
            ("closed",),
            "open",
            (TaskDefinition("autoclose", TaskKind.TIMER, delay_ms=500, timer_transition="close"),),
        ),
        TransitionDefinition("close", ("open",), "closed"),
        TransitionDefinition(
            "lock",
            ("closed",),
            "locked",
            (TaskDefinition("tell", TaskKind.OUTBOUND, destination="alarm", payload=b"d"),),
        ),
        TransitionDefinition(
            "demolish",
            ("closed", "open", "locked"),
            "gone",
            (TaskDefinition("at", TaskKind.TIMER, deadline_from_request=True, timer_transition="close"),),
        ),
    ),
)


class MemoryView:
    def __init__(self) -> None:
        self.nodes: dict[NodeAddress, NodeRecord] = {}
        self.types = {("door", 1): DOOR}

    def get_node(self, address: NodeAddress) -> NodeRecord | None:
        return self.nodes.get(address)

    def get_nodes(self, addresses: Sequence[NodeAddress]) -> list[NodeRecord | None]:
        return [self.nodes.get(a) for a in addresses]

    def get_machine_type(self, name: str, version: int) -> MachineType | None:
        if not version:
            version = max((v for n, v in self.types if n == name), default=0)
        return self.types.get((name, version))

    def descendants(self, address: NodeAddress) -> Iterator[NodeAddress]:
        return (a for a in self.nodes if a != address and a.is_within(address))

    def commit(self, txn: Transaction) -> None:
        for a, r in txn.nodes.items():
            if r is None:
                self.nodes.pop(a, None)
            else:
                self.nodes[a] = r


def txn(view: MemoryView, revision: int = 1, limits: Limits | None = None) -> Transaction:
    return Transaction(view, revision, now_ms=1_000, limits=limits or Limits())


def test_root_child_grandchild_addresses() -> None:
    view = MemoryView()
    t = txn(view)
    root = t.create_root("door", "d1", b"", "")
    child = t.add_child(root.address, ("door", "c"), b"", "")
    grand = t.add_child(child.address, ("door", "g"), b"", "")
    assert grand.address == NodeAddress("d1", (("door", "c"), ("door", "g")))
    assert str(grand.address) == "d1/door:c/door:g"
    assert t.get(root.address).child_counts == {"door": 1}  # type: ignore[union-attr]
    assert [e.kind for e in t.events] == [EventKind.NODE_CREATED] * 3


def test_transition_from_sources_only_and_nothing_changes_on_refusal() -> None:
    view = MemoryView()
    t = txn(view)
    a = t.create_root("door", "d", b"", "").address
    view.commit(t)
    t2 = txn(view, 2)
    out = t2.apply_transition(a, "open", None, "")
    assert (out.from_state, out.node.record.state, out.node.record.transition_count) == ("closed", "open", 1)
    assert out.tasks[0].deadline_ms == 1_500 and out.tasks[0].timer_transition == "close"
    assert out.tasks[0].transition_count == 1 and out.tasks[0].node_create_revision == 1
    t3 = txn(view, 3)
    with pytest.raises(FailedPrecondition) as e:
        t3.apply_transition(a, "close", None, "")
    assert e.value.metadata == {
        "current_state": "closed",
        "allowed_transitions": "open,lock,demolish",
        "terminal": "false",
    }
    assert view.nodes[a].state == "closed" and view.nodes[a].transition_count == 0


def test_view_records_are_never_mutated() -> None:
    view = MemoryView()
    t = txn(view)
    a = t.create_root("door", "d", b"x", "").address
    view.commit(t)
    original = view.nodes[a]
    snapshot = original.copy()
    t2 = txn(view, 2)
    t2.apply_transition(a, "open", b"y", "")
    t2.add_child(a, ("door", "c"), b"", "")
    assert view.nodes[a] == snapshot


def test_compare_and_swap_and_terminal() -> None:
    view = MemoryView()
    t = txn(view)
    a = t.create_root("door", "d", b"", "").address
    with pytest.raises(Aborted):
        t.apply_transition(a, "open", None, "", expected_transition_count=5)
    t.apply_transition(a, "demolish", None, "", task_inputs=[TaskInput("at", deadline_ms=9_999)])
    assert t.get(a).terminal  # type: ignore[union-attr]
    assert t.tasks[-1].deadline_ms == 9_999
    with pytest.raises(FailedPrecondition) as e:
        t.apply_transition(a, "open", None, "")
    assert e.value.metadata["terminal"] == "true" and e.value.metadata["allowed_transitions"] == ""


def test_task_inputs_are_checked() -> None:
    view = MemoryView()
    t = txn(view)
    a = t.create_root("door", "d", b"", "").address
    with pytest.raises(InvalidArgument) as e:
        t.apply_transition(a, "demolish", None, "")
    assert e.value.reason == "FIELD_REQUIRED"
    with pytest.raises(InvalidArgument) as e:
        t.apply_transition(a, "open", None, "", task_inputs=[TaskInput("nope")])
    assert e.value.reason == "UNKNOWN_TASK"
    with pytest.raises(InvalidArgument) as e:
        t.apply_transition(a, "demolish", None, "", task_inputs=[TaskInput("at", deadline_ms=-1)])
    assert e.value.reason == "FIELD_INVALID"


def test_outbound_payload_from_request_replaces_default() -> None:
    view = MemoryView()
    t = txn(view)
    a = t.create_root("door", "d", b"", "").address
    assert t.apply_transition(a, "lock", None, "").tasks[0].payload == b"d"
    b = t.create_root("door", "e", b"", "").address
    assert (
        t.apply_transition(b, "lock", None, "", task_inputs=[TaskInput("tell", payload=b"x")])
        .tasks[0]
        .payload
        == b"x"
    )


def test_delete_subtree_and_not_found_after() -> None:
    view = MemoryView()
    t = txn(view)
    a = t.create_root("door", "d", b"", "").address
    c = t.add_child(a, ("door", "c"), b"", "").address
    t.add_child(c, ("door", "g"), b"", "")
    view.commit(t)
    t2 = txn(view, 2)
    assert t2.delete(c).deleted_count == 2
    assert t2.get(a).child_counts == {}  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        t2.apply_transition(c, "open", None, "")
    with pytest.raises(NotFound):
        t2.delete(c)
    with pytest.raises(InvalidArgument) as e:
        t2.add_child(a, ("door", "c"), b"", "")
    assert e.value.reason == "RECREATED_IN_BATCH"


def test_duplicates_unknown_types_and_limits() -> None:
    view = MemoryView()
    t = txn(view, limits=Limits(max_children_per_node=2, max_path_depth=2, max_data_bytes=4))
    a = t.create_root("door", "d", b"", "").address
    with pytest.raises(AlreadyExists):
        t.create_root("door", "d", b"", "")
    with pytest.raises(NotFound) as e:
        t.add_child(a, ("window", "w"), b"", "")
    assert e.value.reason == "MACHINE_TYPE_NOT_FOUND"
    with pytest.raises(InvalidArgument) as e2:
        t.create_root("door", "big", b"12345", "")
    assert e2.value.metadata["limit"] == "max_data_bytes"
    c1 = t.add_child(a, ("door", "1"), b"", "").address
    t.add_child(a, ("door", "2"), b"", "")
    with pytest.raises(ResourceExhausted):
        t.add_child(a, ("door", "3"), b"", "")
    c11 = t.add_child(c1, ("door", "x"), b"", "").address
    with pytest.raises(InvalidArgument) as e3:
        t.add_child(c11, ("door", "y"), b"", "")
    assert e3.value.reason == "PATH_TOO_DEEP"


def test_register_type_identical_is_noop_different_is_refused() -> None:
    view = MemoryView()
    t = txn(view)
    assert t.register_type(DOOR) == (DOOR, False)
    assert not t.events
    changed = MachineType("door", 1, ("a",), "a", (), ())
    with pytest.raises(AlreadyExists):
        t.register_type(changed)
    new = MachineType("door", 2, ("a",), "a", (), ())
    assert t.register_type(new) == (new, True)
    assert t.events[-1].kind is EventKind.MACHINE_TYPE_REGISTERED
