"""The inspector's only way into the server: the generated gRPC stubs over the server's private
unix-socket port, each call carrying the browser user's bearer token. Every read and write so
goes through the same handlers, permission rule and commit path as any other gRPC client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from statekeeper.v1 import (
    admin_pb2_grpc,
    event_pb2_grpc,
    machine_type_pb2_grpc,
    node_pb2_grpc,
    savepoint_pb2_grpc,
    task_pb2_grpc,
)

CALL_TIMEOUT_S = 10.0


@dataclass
class ApiError(Exception):
    """A refused or failed gRPC call, with what the server said."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def api_error(e: grpc.aio.AioRpcError) -> ApiError:
    reason, metadata = "", {}
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    return ApiError(e.code(), e.details() or "", reason, metadata)


class Api:
    """Stubs of every service on one channel; `call` and `stream` add the token."""

    def __init__(self, target: str, max_message_bytes: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.events = event_pb2_grpc.EventServiceStub(self.channel)
        self.types = machine_type_pb2_grpc.MachineTypeServiceStub(self.channel)
        self.nodes = node_pb2_grpc.NodeServiceStub(self.channel)
        self.savepoints = savepoint_pb2_grpc.SavepointServiceStub(self.channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(self.channel)

    @staticmethod
    def _metadata(token: str | None) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")] if token else []

    async def call(self, method: Any, request: Message, token: str | None) -> Any:
        """A unary call; grpc errors become ApiError."""
        try:
            return await method(request, metadata=self._metadata(token), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise api_error(e) from None

    async def stream(self, method: Any, request: Message, token: str | None) -> AsyncIterator[Any]:
        """A server stream (no deadline: it lives as long as the page that asked for it)."""
        call = method(request, metadata=self._metadata(token))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            raise api_error(e) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()
