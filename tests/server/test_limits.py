"""Every documented limit (README "Limits") is configurable and, when exceeded, answered with
INVALID_ARGUMENT or RESOURCE_EXHAUSTED whose ErrorInfo metadata `limit` names it; nothing is
written. One server with small limits serves the module."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import statekeeper as sk
from statekeeper._errors import from_rpc_error
from statekeeper.v1 import (
    common_pb2,
    event_pb2,
    event_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
)
from tests.support import ServerProcess

LIMITS = {
    "max-id-length": 8,
    "max-name-length": 8,
    "max-request-id-length": 8,
    "max-data-bytes": 100,
    "max-payload-bytes": 50,
    "max-path-depth": 2,
    "max-children-per-node": 3,
    "max-batch-operations": 5,
    "max-deleted-nodes": 4,
    "max-page-size": 3,
    "default-page-size": 2,
    "max-states-per-type": 3,
    "max-transitions-per-type": 3,
    "max-tasks-per-transition": 1,
    "max-state-bytes": 10,
    "max-run-entities": 2,
    "max-subscribers": 2,
}
MAX_MESSAGE = 10_000

LT = sk.MachineType(
    name="lt",
    version=1,
    states=["a", "b"],
    initial_state="a",
    transitions=[
        sk.Transition("go", ["a", "b"], "b"),
        sk.Transition("send", ["a", "b"], "a", tasks=[sk.Outbound("job", "dest", b"p")]),
    ],
)

_ids = iter(range(1_000_000))


def _uid() -> str:
    return f"L{next(_ids)}"  # short: the id limit is 8


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = [a for name, value in LIMITS.items() for a in (f"--{name}", str(value))]
    proc = ServerProcess(
        Path(tmp_path_factory.mktemp("limits")) / "data", *args, "--max-message-bytes", str(MAX_MESSAGE)
    ).start()
    with sk.SyncClient.connect(proc.address) as c:
        c.register_machine_type(LT)
    yield proc
    proc.terminate()


@pytest.fixture
def c(limited: ServerProcess) -> Iterator[sk.SyncClient]:
    with sk.SyncClient.connect(limited.address) as client:
        yield client


def _refused(call: Callable[[], Any], code: grpc.StatusCode, limit: str) -> sk.StatekeeperError:
    with pytest.raises(sk.StatekeeperError) as e:
        call()
    assert e.value.code == code, e.value
    assert e.value.metadata.get("limit") == limit, (e.value, e.value.metadata)
    return e.value


INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_id_length(c: sk.SyncClient) -> None:
    _refused(lambda: c.create_root("lt", "x" * 9), INVALID, "max_id_length")
    root = c.create_root("lt", _uid())
    _refused(lambda: c.add_child(root, "lt", "y" * 9), INVALID, "max_id_length")
    _refused(lambda: c.get_node(sk.Ref("z" * 9)), INVALID, "max_id_length")
    assert c.get_node(root).child_counts == {}
    c.create_root("lt", "x" * 8).ref  # noqa: B018  exactly at the limit is fine


def test_name_length(c: sk.SyncClient) -> None:
    long = "n" * 9
    _refused(lambda: c.register_machine_type(sk.MachineType(long, 1, ["a"], "a")), INVALID, "max_name_length")
    _refused(
        lambda: c.register_machine_type(sk.MachineType("ok", 1, [long], long)), INVALID, "max_name_length"
    )
    _refused(lambda: c.create_root(long, _uid()), INVALID, "max_name_length")
    root = c.create_root("lt", _uid())
    _refused(lambda: c.transition(root, long), INVALID, "max_name_length")
    with pytest.raises(sk.NotFoundError):
        c.get_machine_type("ok")


def test_request_id_length(c: sk.SyncClient) -> None:
    uid = _uid()
    _refused(lambda: c.create_root("lt", uid, request_id="r" * 9), INVALID, "max_request_id_length")
    with pytest.raises(sk.NotFoundError):
        c.get_node(uid)
    c.create_root("lt", uid, request_id="r" * 8)


def test_data_size(c: sk.SyncClient) -> None:
    uid = _uid()
    _refused(lambda: c.create_root("lt", uid, b"x" * 101), INVALID, "max_data_bytes")
    root = c.create_root("lt", uid, b"x" * 100)
    _refused(lambda: c.add_child(root, "lt", "c", b"x" * 101), INVALID, "max_data_bytes")
    _refused(lambda: c.transition(root, "go", b"x" * 101), INVALID, "max_data_bytes")
    assert c.get_node(root) == root


def test_payload_size(c: sk.SyncClient) -> None:
    root = c.create_root("lt", _uid())
    _refused(
        lambda: c.transition(root, "send", task_inputs=[sk.TaskInput("job", payload=b"p" * 51)]),
        INVALID,
        "max_payload_bytes",
    )
    big = sk.MachineType(
        "pl", 1, ["a"], "a", [sk.Transition("t", ["a"], "a", [sk.Outbound("j", "d", b"p" * 51)])]
    )
    _refused(lambda: c.register_machine_type(big), INVALID, "max_payload_bytes")
    assert c.get_node(root).transition_count == 0
    assert c.transition(root, "send", task_inputs=[sk.TaskInput("job", payload=b"p" * 50)]).tasks


def test_path_depth(c: sk.SyncClient) -> None:
    root = c.create_root("lt", _uid())
    one = c.add_child(root, "lt", "c1")
    two = c.add_child(one, "lt", "c2")  # depth 2: the limit
    _refused(lambda: c.add_child(two, "lt", "c3"), INVALID, "max_path_depth")
    _refused(lambda: c.get_node(two.ref.child("lt", "c3")), INVALID, "max_path_depth")
    _refused(lambda: c.transition(two.ref.child("lt", "c3"), "go"), INVALID, "max_path_depth")
    assert c.get_node(two).child_counts == {}


def test_children_per_node(c: sk.SyncClient) -> None:
    root = c.create_root("lt", _uid())
    for i in range(3):
        c.add_child(root, "lt", f"c{i}")
    _refused(lambda: c.add_child(root, "lt", "c3"), EXHAUSTED, "max_children_per_node")
    e = _refused(
        lambda: c.execute(sk.Batch().transition(root, "go").add_child(root, "lt", "c4")),
        EXHAUSTED,
        "max_children_per_node",
    )
    assert e.metadata["operation_index"] == "1"
    node = c.get_node(root)
    assert node.child_counts == {"lt": 3} and node.transition_count == 0
    # Room again after a delete.
    c.delete_node(root.ref.child("lt", "c0"))
    c.add_child(root, "lt", "c3")


def test_operations_per_batch(c: sk.SyncClient) -> None:
    uid = _uid()
    batch = sk.Batch().create_root("lt", uid).add_child(uid, "lt", "c")
    for _ in range(4):
        batch.transition(uid, "go")
    assert len(batch) == 6
    _refused(lambda: c.execute(batch), INVALID, "max_batch_operations")
    with pytest.raises(sk.NotFoundError):
        c.get_node(uid)
    batch.operations.pop()
    assert len(c.execute(batch).results) == 5


def test_deleted_nodes_per_call(c: sk.SyncClient) -> None:
    root = c.create_root("lt", _uid())
    one = c.add_child(root, "lt", "a")
    c.add_child(one, "lt", "b")
    c.add_child(root, "lt", "c")
    c.add_child(root, "lt", "d")  # five nodes in the tree
    before = c.walk(root)
    _refused(lambda: c.delete_node(root), EXHAUSTED, "max_deleted_nodes")
    _refused(lambda: c.execute(sk.Batch().delete(root)), EXHAUSTED, "max_deleted_nodes")
    assert c.walk(root) == before
    assert c.delete_node(one) == 2
    assert c.delete_node(root) == 3  # four or fewer: fine


def test_page_size_is_capped_and_negative_is_refused(limited: ServerProcess, c: sk.SyncClient) -> None:
    root = c.create_root("lt", _uid())
    for i in range(3):
        c.add_child(root, "lt", f"c{i}")
    with grpc.insecure_channel(limited.address) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        ref = common_pb2.NodeRef(root_id=root.ref.root_id)
        page = stub.WalkTree(node_pb2.WalkTreeRequest(node=ref, page_size=1000), timeout=5)
        assert len(page.nodes) == 3 and page.next_page_token  # max_page_size
        page = stub.WalkTree(node_pb2.WalkTreeRequest(node=ref), timeout=5)
        assert len(page.nodes) == 2 and page.next_page_token  # default_page_size
        with pytest.raises(grpc.RpcError) as e:
            stub.WalkTree(node_pb2.WalkTreeRequest(node=ref, page_size=-1), timeout=5)
        err = from_rpc_error(e.value)
        assert err.code == INVALID and err.metadata.get("field") == "page_size"
    assert len(c.walk(root)) == 4  # the SDK follows the page tokens


def test_message_size(c: sk.SyncClient) -> None:
    uid = _uid()
    with pytest.raises(sk.StatekeeperError) as e:
        c.create_root("lt", uid, b"x" * (MAX_MESSAGE + 1))
    assert e.value.code == EXHAUSTED
    with pytest.raises(sk.NotFoundError):
        c.get_node(uid)


def test_states_transitions_and_tasks_per_type(c: sk.SyncClient) -> None:
    states = ["a", "b", "c", "d"]
    _refused(
        lambda: c.register_machine_type(sk.MachineType("s4", 1, states, "a")), INVALID, "max_states_per_type"
    )
    many = [sk.Transition(f"t{i}", ["a"], "a") for i in range(4)]
    _refused(
        lambda: c.register_machine_type(sk.MachineType("t4", 1, ["a"], "a", many)),
        INVALID,
        "max_transitions_per_type",
    )
    tasks = [sk.Outbound("j1", "d"), sk.Outbound("j2", "d")]
    _refused(
        lambda: c.register_machine_type(
            sk.MachineType("k2", 1, ["a"], "a", [sk.Transition("t", ["a"], "a", tasks)])
        ),
        INVALID,
        "max_tasks_per_transition",
    )
    assert {mt.name for mt in c.list_machine_types()}.isdisjoint({"s4", "t4", "k2"})


def test_entity_state_size_and_entities_per_run(c: sk.SyncClient) -> None:
    _refused(lambda: c.create_run("r1", {"e1": b"x" * 11}, schedule_ms=10), INVALID, "max_state_bytes")
    _refused(
        lambda: c.create_run("r1", {"e1": b"", "e2": b"", "e3": b""}, schedule_ms=10),
        EXHAUSTED,
        "max_run_entities",
    )
    assert not c.is_run_initialized("r1")
    c.create_run("r1", {"e1": b"", "e2": b""}, schedule_ms=10)
    _refused(lambda: c.save_entity_state("r1", "e1", 10, b"x" * 11), INVALID, "max_state_bytes")
    assert c.list_savepoints("r1") == []


# -- subscribers: Watch, Subscribe and LeaseTasks streams open at once ------------------------


def _refused_stream(open_stream: Callable[[], Any]) -> None:
    call = open_stream()
    try:
        with pytest.raises(grpc.RpcError) as e:
            next(call)
        err = from_rpc_error(e.value)
        assert err.code == EXHAUSTED, err
        assert (err.reason, err.metadata.get("limit")) == ("TOO_MANY_SUBSCRIBERS", "max_subscribers")
    finally:
        call.cancel()


def _eventually_opens(open_stream: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Open a Watch once a slot is free again (freed slots are returned asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        call = open_stream()
        try:
            next(call)
            return call
        except grpc.RpcError as e:
            call.cancel()
            if e.code() != EXHAUSTED or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(0.05)


def test_subscribers_per_server(limited: ServerProcess, c: sk.SyncClient) -> None:
    c.create_consumer("lc")
    with grpc.insecure_channel(limited.address) as channel:
        events = event_pb2_grpc.EventServiceStub(channel)
        tasks = task_pb2_grpc.TaskServiceStub(channel)

        def watch() -> Any:
            return events.Watch(event_pb2.WatchRequest(), timeout=30)

        def subscribe() -> Any:
            return events.Subscribe(event_pb2.SubscribeRequest(consumer="lc"), timeout=30)

        def lease() -> Any:
            return tasks.LeaseTasks(task_pb2.LeaseTasksRequest(destinations=["none"]), timeout=30)

        w1 = _eventually_opens(watch)
        s1 = subscribe()
        try:
            next(s1)  # an idle heartbeat within a second: the subscription is open
            for open_stream in (watch, subscribe, lease):
                _refused_stream(open_stream)
            # Closing a stream frees its slot: a lease stream (no message until a task) fits.
            s1.cancel()
            _eventually_opens(watch).cancel()
            time.sleep(0.5)  # the cancelled watch's slot is returned
            l1 = lease()
            time.sleep(0.3)  # it is counted once its handler runs
            try:
                assert not l1.done(), "the lease stream was refused or ended"
                _refused_stream(watch)
            finally:
                l1.cancel()
            _eventually_opens(watch).cancel()
        finally:
            w1.cancel()
            s1.cancel()
