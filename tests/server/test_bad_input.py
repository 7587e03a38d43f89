"""Bad input gets a clear error with a reason and writes nothing; never INTERNAL."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import statekeeper as sk
from statekeeper.v1 import common_pb2, event_pb2, machine_type_pb2, node_pb2
from tests.support import ServerProcess

METHODS = [
    f"/statekeeper.v1.{svc.name}/{m.name}"
    for svc in (
        machine_type_pb2.DESCRIPTOR.services_by_name["MachineTypeService"],
        node_pb2.DESCRIPTOR.services_by_name["NodeService"],
    )
    for m in svc.methods
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # truncated varint
        b"\x0a\x05\xff\xfe\xfd\xfc\xfb",  # field 1 as a string with invalid UTF-8
        b"\x0a\x03\x0a\x01\xff",  # nested message holding invalid UTF-8
    ],
)
def test_unparseable_requests_are_invalid_argument(server: ServerProcess, method: str, body: bytes) -> None:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(method)
        try:
            call(body, timeout=5)
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (method, e)
            assert e.code() != grpc.StatusCode.INTERNAL
            return
    # Some bodies happen to parse (e.g. as an unknown field): then the server must still not fail.


def _reason(e: grpc.RpcError) -> tuple[str, dict[str, str]]:
    for key, value in e.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason, dict(info.metadata)
    return "", {}


@pytest.mark.parametrize(
    ("request_", "field", "reason"),
    [
        (node_pb2.CreateRootRequest(type="order", id=""), "id", "FIELD_REQUIRED"),
        (node_pb2.CreateRootRequest(type="order", id="x" * 257), "id", "FIELD_TOO_LONG"),
        (node_pb2.CreateRootRequest(type="order", id="a\x00b"), "id", "FIELD_INVALID"),
        (node_pb2.CreateRootRequest(type="order", id="a\nb"), "id", "FIELD_INVALID"),
        (node_pb2.CreateRootRequest(type="", id="a"), "type", "FIELD_REQUIRED"),
        (
            node_pb2.CreateRootRequest(
                type="order", id="big", data=common_pb2.Data(value=b"x" * (1024 * 1024 + 1))
            ),
            ".data.value",
            "DATA_TOO_LARGE",
        ),
        (
            node_pb2.CreateRootRequest(type="order", id="r", request_id="r" * 200),
            "request_id",
            "FIELD_TOO_LONG",
        ),
        (
            node_pb2.GetNodeRequest(
                node=common_pb2.NodeRef(root_id="r", path=[common_pb2.NodeKey(type="item", id="i")] * 17)
            ),
            "node.path",
            "PATH_TOO_DEEP",
        ),
        (
            node_pb2.ListChildrenRequest(parent=common_pb2.NodeRef(root_id="r"), type="item", page_size=-1),
            None,
            None,
        ),
        (node_pb2.ExecuteBatchRequest(), "operations", "FIELD_REQUIRED"),
        (
            node_pb2.ExecuteBatchRequest(operations=[node_pb2.BatchOperation()]),
            "operations[0]",
            "FIELD_REQUIRED",
        ),
        (
            node_pb2.WalkTreeRequest(node=common_pb2.NodeRef(root_id=""), page_token="!!"),
            "node.root_id",
            "FIELD_REQUIRED",
        ),
    ],
)
def test_malformed_fields_name_the_field_and_write_nothing(
    server: ServerProcess, request_: object, field: str | None, reason: str | None
) -> None:
    method = {
        node_pb2.CreateRootRequest: "CreateRoot",
        node_pb2.GetNodeRequest: "GetNode",
        node_pb2.ListChildrenRequest: "ListChildren",
        node_pb2.ExecuteBatchRequest: "ExecuteBatch",
        node_pb2.WalkTreeRequest: "WalkTree",
    }[type(request_)]
    with sk.SyncClient.connect(server.address) as client, grpc.insecure_channel(server.address) as channel:
        before = client.walk("r") if _exists(client, "r") else None
        call = channel.unary_unary(
            f"/statekeeper.v1.NodeService/{method}", request_serializer=lambda m: m.SerializeToString()
        )
        with pytest.raises(grpc.RpcError) as e:
            call(request_, timeout=5)
        code = e.value.code()  # type: ignore[attr-defined]
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), e.value
        got_reason, metadata = _reason(e.value)
        assert got_reason, "every error carries an ErrorInfo reason"
        if reason is not None:
            assert got_reason == reason
            assert metadata.get("field", "").endswith(field or "")
        after = client.walk("r") if _exists(client, "r") else None
        assert before == after


def _exists(client: sk.SyncClient, root: str) -> bool:
    try:
        client.get_node(root)
        return True
    except sk.NotFoundError:
        return False


def test_bad_page_tokens_are_invalid_argument(client: sk.SyncClient, uid: str) -> None:
    client.create_root("order", uid)
    other = client.create_root("order", uid + "o")
    client.add_child(other, "item", "a")
    client.add_child(other, "item", "b")
    stub_call = client._nodes.WalkTree  # type: ignore[attr-defined]
    page = stub_call(
        node_pb2.WalkTreeRequest(node=common_pb2.NodeRef(root_id=uid + "o"), page_size=1), timeout=5
    )
    with pytest.raises(grpc.RpcError) as e:
        stub_call(
            node_pb2.WalkTreeRequest(node=common_pb2.NodeRef(root_id=uid), page_token=page.next_page_token),
            timeout=5,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert _reason(e.value)[0] == "INVALID_PAGE_TOKEN"


def test_oversized_message_is_refused_not_internal(tmp_path: object) -> None:
    from pathlib import Path

    proc = ServerProcess(
        Path(str(tmp_path)) / "d",
        "--max-message-bytes",
        "100000",
        "--max-data-bytes",
        "50000",
        "--max-payload-bytes",
        "10000",
    ).start()
    try:
        with sk.SyncClient.connect(proc.address) as client:
            client.register_machine_type(sk.MachineType("t", 1, ["a"], "a"))
            with pytest.raises(sk.StatekeeperError) as e:
                client.create_root("t", "x", b"x" * 200_000)
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(sk.InvalidArgumentError) as e2:
                client.create_root("t", "x", b"x" * 60_000)
            assert e2.value.metadata["limit"] == "max_data_bytes"
            with pytest.raises(sk.NotFoundError):
                client.get_node("x")
    finally:
        proc.terminate()


def test_page_tokens_outside_the_alphabet_are_refused(client: sk.SyncClient) -> None:
    for call, request in (
        (client._events.ListConsumers, event_pb2.ListConsumersRequest(page_token="%%%")),  # type: ignore[attr-defined]
        (client._types.ListMachineTypes, machine_type_pb2.ListMachineTypesRequest(page_token="a b")),  # type: ignore[attr-defined]
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert _reason(e.value)[0] == "INVALID_PAGE_TOKEN"
