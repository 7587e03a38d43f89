"""gRPC server reflection, v1 and v1alpha, resolving every symbol kind grpcurl asks for.

grpcio-reflection (up to 1.85 at least) ships only v1alpha, and its servicer asks the descriptor
pool for the file of a symbol, which the upb pool does not resolve for methods
(`grpcurl describe pkg.Service.Method`: "Symbol not found"; grpc/grpc#34743). Here:
- ``SymbolPool`` wraps the pool and falls back from ``Service.Method`` to the service's file;
- the v1 service (``grpc.reflection.v1.ServerReflection``) is served by the same servicer: its
  messages are v1alpha's under another package, identical on the wire, and its own descriptor
  (for ``describe``) is v1alpha's file renamed, kept in a private pool.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def _v1_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding grpc/reflection/v1/reflection.proto, derived from the v1alpha file."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    proto.ClearField("options")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


class SymbolPool:
    """The default pool, plus method symbols and the v1 reflection file."""

    def __init__(self) -> None:
        self._pools = (descriptor_pool.Default(), _v1_pool())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pools[0], name)

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:
        file: descriptor.FileDescriptor = self._first("FindFileByName", name)
        return file

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            file: descriptor.FileDescriptor = self._first("FindFileContainingSymbol", symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service: descriptor.ServiceDescriptor = self._first("FindServiceByName", service_name)
            if method not in service.methods_by_name:
                raise
            file = service.file
        return file

    def _first(self, method: str, name: str) -> Any:
        for pool in self._pools:
            try:
                return getattr(pool, method)(name)
            except KeyError:
                continue
        raise KeyError(name)


def enable(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Serve reflection v1 and v1alpha for these services (and the reflection services)."""
    servicer = ReflectionServicer([*service_names, V1_SERVICE, V1ALPHA_SERVICE], pool=SymbolPool())
    v1alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler})]
    )
