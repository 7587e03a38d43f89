"""Registers servicers method by method from the proto descriptors, so every RPC is wrapped the
same way: a request that does not parse gets INVALID_ARGUMENT (never INTERNAL), domain errors
become rich statuses, and observers (metrics, logs) see every call."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from statekeeper_server.domain.errors import DomainError, InvalidArgument
from statekeeper_server.service.errors import rich_status

log = logging.getLogger("statekeeper.rpc")

CallObserver = Callable[[str, str, float], None]
"""(full method name, status code name, seconds)."""


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _deserializer(cls: type[Message]) -> Callable[[bytes], Message | _Malformed]:
    parse = cls.FromString

    def deserialize(raw: bytes) -> Message | _Malformed:
        try:
            return parse(raw)
        except Exception as e:  # DecodeError, invalid UTF-8 in a string field, ...
            return _Malformed(str(e) or type(e).__name__)

    return deserialize


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
    code, message, details = rich_status(error)
    await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", details),))


def _malformed_error(request: _Malformed) -> InvalidArgument:
    return InvalidArgument("MALFORMED_REQUEST", f"the request could not be parsed: {request.error}")


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def generic_handler(
    descriptor: ServiceDescriptor, servicer: object, observers: list[CallObserver]
) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        impl = getattr(servicer, method.name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        full_name = f"/{descriptor.full_name}/{method.name}"
        deserialize = _deserializer(request_cls)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _wrap_stream(impl, full_name, observers),
                request_deserializer=deserialize,
                response_serializer=lambda m: m.SerializeToString(),
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _wrap_unary(impl, full_name, observers),
                request_deserializer=deserialize,
                response_serializer=lambda m: m.SerializeToString(),
            )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _wrap_unary(impl: Callable[..., Any], name: str, observers: list[CallObserver]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        try:
            if isinstance(request, _Malformed):
                await abort(context, _malformed_error(request))
            try:
                return await impl(request, context)
            except DomainError as e:
                await abort(context, e)
        finally:
            if observers:
                elapsed = time.perf_counter() - started
                code = _code_of(context)
                for observe in observers:
                    observe(name, code, elapsed)

    return handle


def _wrap_stream(impl: Callable[..., Any], name: str, observers: list[CallObserver]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            if isinstance(request, _Malformed):
                await abort(context, _malformed_error(request))
            try:
                async for item in impl(request, context):
                    yield item
            except DomainError as e:
                await abort(context, e)
        finally:
            if observers:
                elapsed = time.perf_counter() - started
                code = _code_of(context)
                for observe in observers:
                    observe(name, code, elapsed)

    return handle
