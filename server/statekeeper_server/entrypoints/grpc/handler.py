"""Registers servicers method by method from the proto descriptors, so every RPC is wrapped the
same way: a request that does not parse gets INVALID_ARGUMENT (never INTERNAL), domain errors
become rich statuses, and observers (metrics) see every call.

Each call gets a request id — the request's own `request_id` field if set, else the incoming
`x-request-id` metadata, else a generated one — kept in a context variable for the call, so
every log record made during the call carries it (app/logs.py). Each call is logged at DEBUG
(method, code, duration); client errors at INFO, server-side failures at WARNING."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from statekeeper_server.core.shards import ShardMap, current_shard
from statekeeper_server.domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unavailable
from statekeeper_server.entrypoints.grpc.errors import rich_status
from statekeeper_server.entrypoints.grpc.forwarding import FORWARDED_HEADER, Forwarder, not_owner_here
from statekeeper_server.entrypoints.grpc.pipeline import Pipeline, Pipelines
from statekeeper_server.entrypoints.grpc.routing import Router

log = logging.getLogger("statekeeper.rpc")

CallObserver = Callable[[str, str, float], None]
"""(full method name, status code name, seconds)."""


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _Shed:
    """The request of a call that arrived over the concurrency limit: not parsed at all."""


_SHED = _Shed()


def _deserializer(
    cls: type[Message], limit: ConcurrencyLimit | None
) -> Callable[[bytes], Message | _Malformed | _Shed]:
    parse = cls.FromString

    def deserialize(raw: bytes) -> Message | _Malformed | _Shed:
        # gRPC parses the request before the handler runs: a call to be refused costs no parse.
        if limit is not None and limit.in_flight >= limit.limit:
            return _SHED
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


class ConcurrencyLimit:
    """At most `limit` calls in flight; more are refused at once with RESOURCE_EXHAUSTED
    (reason TOO_MANY_CONCURRENT_RPCS, metadata limit=max_concurrent_rpcs), so overload sheds
    load instead of queueing without bound. Health and reflection are not counted; a long-lived
    stream (Watch, Subscribe, LeaseTasks) is counted only until it is admitted, then under
    StreamLimit, so open streams never crowd out unary calls.

    A refusal costs no work: the request is not parsed, the status is encoded once. It is
    prompt only while the event loop is: stream work goes through the stream lane
    (features/events/lane.py), so thousands of calls are refused within milliseconds even
    while hundreds of streams catch up on history (before, they waited 20 s for the loop).

    The server counts calls itself because grpc.aio's own maximum_concurrent_rpcs (grpcio
    1.75) lets its bound drift: every refused call also lowers its in-flight count, so each
    refusal raises the effective limit by one and sustained overload ends with no bound at all.
    """

    def __init__(self, limit: int, delay_s: float = 0.0) -> None:
        self.limit = limit
        # Failpoint rpc.delay=SECONDS (tests only): each counted call first waits this long, as
        # a slow call would, so tests can fill the server with calls in flight.
        self.delay_s = delay_s
        self.in_flight = 0
        self.refused = 0
        self._reported = 0
        self._last_report = 0.0
        code, message, details = rich_status(self._error())
        self._status = (code, message, (("grpc-status-details-bin", details),))

    def _error(self) -> ResourceExhausted:
        return ResourceExhausted(
            "TOO_MANY_CONCURRENT_RPCS",
            f"the server has {self.limit} calls in flight, its limit; retry with backoff",
            limit="max_concurrent_rpcs",
            max_concurrent_rpcs=self.limit,
        )

    def refusal(self) -> ResourceExhausted:
        self._count_refusal()
        return self._error()

    def _count_refusal(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_report >= 10.0:  # one warning per 10 s, not one per refusal
            log.warning(
                "shedding load: %d calls refused (more than %d in flight)",
                self.refused - self._reported,
                self.limit,
            )
            self._reported, self._last_report = self.refused, now

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._count_refusal()
        code, message, trailers = self._status
        await context.abort(code, message, trailing_metadata=trailers)


class StreamLimit:
    """At most `limit` long-lived streams (Watch, Subscribe, LeaseTasks) open at once on the
    server; one more is refused with RESOURCE_EXHAUSTED (reason TOO_MANY_SUBSCRIBERS, metadata
    limit=max_subscribers). Each such stream holds memory (queues, deliveries awaiting an ack,
    leases) for as long as its client keeps it open. LoadSavepoint streams end by themselves
    and are not counted."""

    METHODS = frozenset({"Watch", "Subscribe", "LeaseTasks"})

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            "TOO_MANY_SUBSCRIBERS",
            f"the server has {self.limit} streams open (Watch, Subscribe, LeaseTasks), its limit; "
            "close one or retry later",
            limit="max_subscribers",
            max_subscribers=self.limit,
        )


# -- the call context: what logs made during a call are tagged with -----------------------------

current_request_id: ContextVar[str] = ContextVar("statekeeper_request_id", default="")
current_method: ContextVar[str] = ContextVar("statekeeper_method", default="")
current_principal: ContextVar[str] = ContextVar("statekeeper_principal", default="")
"""The name of the token the call was authenticated with (set by entrypoints/grpc/auth.py)."""

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128


def _request_id(request: Any, context: grpc.aio.ServicerContext[Any, Any], has_field: bool) -> str:
    """The request's own request_id field, else the x-request-id header, else a new id."""
    if has_field and not isinstance(request, _Malformed):
        value = getattr(request, "request_id", "")
        if value:
            return str(value)[:_MAX_REQUEST_ID]
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and value:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text[:_MAX_REQUEST_ID]
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFF:08x}"


# Ids for calls that bring none (logs and traces only): a random prefix per process and a
# counter, not os.urandom per call (a system call on every call of the hot path).
_ID_PREFIX = secrets.token_hex(4)
_id_counter = itertools.count(1)


_SERVER_SIDE_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DATA_LOSS"})


def _finish(
    name: str,
    context: grpc.aio.ServicerContext[Any, Any],
    started: float,
    error: DomainError | None,
    failure: BaseException | None,
    observers: list[CallObserver],
) -> None:
    """Report one finished call to the observers and the log (DEBUG when OK)."""
    elapsed = time.perf_counter() - started
    if failure is not None and context.code() is None:
        # A stream the client left is cancelled or closed (GeneratorExit): not a failure.
        code = "CANCELLED" if isinstance(failure, (asyncio.CancelledError, GeneratorExit)) else "UNKNOWN"
    else:
        code = _code_of(context)
    for observe in observers:
        observe(name, code, elapsed)
    if code == "OK":
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s OK %.1f ms", name, elapsed * 1000, extra={"code": code, "duration_ms": elapsed * 1000}
            )
        return
    # A client ending its own stream (watch --count, Ctrl-C) is routine: DEBUG, not INFO.
    level = (
        logging.WARNING
        if code in _SERVER_SIDE_CODES
        else logging.DEBUG
        if code == "CANCELLED"
        else logging.INFO
    )
    if failure is not None and error is None and code == "UNKNOWN":
        log.error("%s failed unexpectedly", name, exc_info=failure, extra={"code": code})
        return
    if log.isEnabledFor(level):
        reason = error.reason if error is not None else ""
        message = error.message if error is not None else ""
        log.log(
            level,
            "%s %s %s %.1f ms%s",
            name,
            code,
            reason,
            elapsed * 1000,
            f": {message}" if message else "",
            extra={"code": code, "reason": reason, "duration_ms": elapsed * 1000},
        )


def generic_handler(
    descriptor: ServiceDescriptor,
    servicer: object,
    observers: list[CallObserver],
    limit: ConcurrencyLimit | None = None,
    streams: StreamLimit | None = None,
    barrier: Callable[[], Awaitable[None]] | None = None,
    cluster: ClusterRouting | None = None,
    pipelines: Pipelines | None = None,
) -> grpc.GenericRpcHandler:
    """`barrier` is awaited before each call runs (engine.durable_barrier: refuses every call
    once the store has failed). `cluster` (cluster mode) routes writes to their shard's owner.
    A bidirectional method (ExecuteStream) pipelines the unary methods its `call` oneof names
    (pipeline.py); `pipelines` keeps its open streams, to end them when the server stops."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    unary: dict[str, Callable[..., Any]] = {}  # by request type's full name, for pipelines
    for method in descriptor.methods:
        if method.client_streaming:
            continue
        impl = getattr(servicer, method.name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        full_name = f"/{descriptor.full_name}/{method.name}"
        deserialize = _deserializer(request_cls, limit)
        has_request_id = "request_id" in method.input_type.fields_by_name
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _wrap_stream(
                    impl,
                    full_name,
                    observers,
                    has_request_id,
                    limit,
                    streams if method.name in StreamLimit.METHODS else None,
                    barrier,
                    cluster,
                ),
                request_deserializer=deserialize,
                response_serializer=_serialize,
            )
        else:
            unary[method.input_type.full_name] = _wrap_unary(
                impl, full_name, observers, has_request_id, limit, barrier, cluster
            )
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                unary[method.input_type.full_name],
                request_deserializer=deserialize,
                response_serializer=_serialize,
            )
    for method in descriptor.methods:
        if not method.client_streaming:
            continue
        if not method.server_streaming:
            raise ValueError(f"{method.full_name}: only bidirectional client streams are served")
        handlers[method.name] = grpc.stream_stream_rpc_method_handler(
            _wrap_pipeline(
                _pipeline(method, unary, pipelines if pipelines is not None else Pipelines()),
                f"/{descriptor.full_name}/{method.name}",
                observers,
                limit,
                barrier,
            ),
            # Every request is parsed, also over the limit: a refused call is answered by its call_id.
            request_deserializer=_deserializer(message_factory.GetMessageClass(method.input_type), None),
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _pipeline(
    method: MethodDescriptor, unary: dict[str, Callable[..., Any]], pipelines: Pipelines
) -> Pipeline:
    """The pipeline of a bidirectional method (ExecuteStreamRequest.calls -> .results): each
    member of a call's `call` oneof that is a unary method's request runs through that method's
    handler; its response goes into the result's member of the same name."""
    calls: dict[str, Callable[..., Any]] = {}
    fields: dict[str, int] = {}
    call_type = method.input_type.fields_by_name["calls"].message_type
    result_type = method.output_type.fields_by_name["results"].message_type
    assert call_type is not None and result_type is not None
    responses = result_type.fields_by_name
    for field in call_type.oneofs_by_name["call"].fields:
        handler = unary.get(field.message_type.full_name) if field.message_type is not None else None
        if handler is not None:
            calls[field.name] = handler
            fields[field.name] = responses[field.name].number
    return Pipeline(
        calls,
        fields,
        lambda request: _malformed_error(request) if isinstance(request, _Malformed) else None,
        pipelines,
    )


def _serialize(message: Message | bytes) -> bytes:
    # A forwarded call's answer arrives as bytes and leaves as they came.
    return message if isinstance(message, bytes) else message.SerializeToString()


class ClusterRouting:
    """Cluster mode: which shard a call writes (routing.py), and how it reaches the owner
    (forwarding.py) when that is another server."""

    def __init__(self, router: Router, forwarder: Forwarder, shards: ShardMap) -> None:
        self.router = router
        self.forwarder = forwarder
        self.shards = shards

    async def route(self, name: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> int | None:
        """The shard to forward the call to; None: serve it here (with current_shard set)."""
        if not self.router.routed(name):
            return None
        shard = await self.router.shard(name, request)
        if shard is None:
            return None
        current_shard.set(shard)
        if self.shards.is_owned(shard):
            return None
        if self.forwarded(context):
            raise not_owner_here(shard)  # no second hop: the forwarding server looks again
        return shard

    @staticmethod
    def forwarded(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        return any(k == FORWARDED_HEADER for k, _ in context.invocation_metadata() or ())


class _CallScope:
    """What every call goes through, unary or streaming: load shedding, the request id in the
    log context, the in-flight count, malformed requests refused, the durable barrier, domain
    errors turned into rich statuses, and the observers and log told how it ended.

    A class with __aenter__/__aexit__ rather than an @asynccontextmanager generator: it runs
    around every call, and a generator costs several times as much to enter and leave."""

    __slots__ = (
        "_barrier",
        "_cluster",
        "_context",
        "_has_request_id",
        "_method",
        "_name",
        "_observers",
        "_request",
        "_reset_context",
        "_rid",
        "_started",
        "error",
        "forward",
        "limit",
    )

    def __init__(
        self,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        name: str,
        observers: list[CallObserver],
        has_request_id: bool,
        limit: ConcurrencyLimit | None,
        barrier: Callable[[], Awaitable[None]] | None,
        reset_context: bool,
        cluster: ClusterRouting | None = None,
    ) -> None:
        self._request, self._context, self._name, self._observers = request, context, name, observers
        self._has_request_id, self._barrier, self._reset_context = has_request_id, barrier, reset_context
        self._cluster = cluster
        self.limit = limit  # set while the call counts as in flight
        self.error: DomainError | None = None
        self.forward: int | None = None  # the shard to forward the call to

    def uncount(self) -> None:
        """Stop counting the call in flight (a long-lived stream, once admitted)."""
        if self.limit is not None:
            self.limit.in_flight -= 1
            self.limit = None

    async def __aenter__(self) -> _CallScope:
        self._started = time.perf_counter()
        request, context, limit = self._request, self._context, self.limit
        if limit is not None and (request is _SHED or limit.in_flight >= limit.limit):
            self.limit = None
            await _shed(context, limit, self._name, self._started, self._observers)
        self._rid = current_request_id.set(_request_id(request, context, self._has_request_id))
        self._method = current_method.set(self._name)
        if limit is not None:
            limit.in_flight += 1
        try:
            if limit is not None and limit.delay_s:
                await asyncio.sleep(limit.delay_s)
            if isinstance(request, _Malformed):
                self.error = _malformed_error(request)
                await abort(context, self.error)
            if self._barrier is not None:
                await self._barrier()
            if self._cluster is not None:
                self.forward = await self._cluster.route(self._name, request, context)
        except BaseException as e:
            await self.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        try:
            if isinstance(error, DomainError):
                self.error = error
                await abort(self._context, error)
        except BaseException as e:
            error = e
            raise
        finally:
            self.uncount()
            failure = error if error is not None and not isinstance(error, DomainError) else None
            _finish(self._name, self._context, self._started, self.error, failure, self._observers)
            if self._reset_context:
                # Streams skip this: an async generator may resume in another context, and the
                # call's task ends with it anyway.
                current_method.reset(self._method)
                current_request_id.reset(self._rid)


def _wrap_unary(
    impl: Callable[..., Any],
    name: str,
    observers: list[CallObserver],
    has_request_id: bool,
    limit: ConcurrencyLimit | None,
    barrier: Callable[[], Awaitable[None]] | None = None,
    cluster: ClusterRouting | None = None,
) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with _CallScope(
            request, context, name, observers, has_request_id, limit, barrier, True, cluster
        ) as call:
            if call.forward is not None and cluster is not None:
                answer = await cluster.forwarder.unary(call.forward, name, request, context)
                if answer is not None:
                    return answer
            if cluster is None:
                return await impl(request, context)
            try:
                return await impl(request, context)
            except Unavailable as e:
                # The shard moved away while the call waited here (nothing was applied): send
                # it to the new owner rather than back to the caller.
                if e.reason != "NOT_SHARD_OWNER" or cluster.forwarded(context):
                    raise
                answer = await cluster.forwarder.unary(current_shard.get(), name, request, context)
                if answer is None:
                    raise
                return answer

    return handle


def _wrap_stream(
    impl: Callable[..., Any],
    name: str,
    observers: list[CallObserver],
    has_request_id: bool,
    limit: ConcurrencyLimit | None,
    streams: StreamLimit | None = None,
    barrier: Callable[[], Awaitable[None]] | None = None,
    cluster: ClusterRouting | None = None,
) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with _CallScope(
            request, context, name, observers, has_request_id, limit, barrier, False, cluster
        ) as call:
            if call.forward is not None and cluster is not None:
                relayed = await cluster.forwarder.stream(call.forward, name, request, context)
                if relayed is not None:
                    async for message in relayed:
                        yield message
                    return
            counted = False
            try:
                if streams is not None:
                    if streams.open >= streams.limit:
                        call.error = streams.refusal()
                        await abort(context, call.error)
                    streams.open += 1
                    counted = True
                    # Admitted as a long-lived stream: it holds a subscriber slot, not a call slot.
                    call.uncount()
                # aclosing: the servicer's own cleanup (unsubscribe, release) runs as soon as the
                # call ends, not whenever the garbage collector finalises the generator.
                async with contextlib.aclosing(impl(request, context)) as items:
                    async for item in items:
                        yield item
            finally:
                if counted:
                    assert streams is not None
                    streams.open -= 1

    return handle


def _wrap_pipeline(
    pipeline: Pipeline,
    name: str,
    observers: list[CallObserver],
    limit: ConcurrencyLimit | None,
    barrier: Callable[[], Awaitable[None]] | None = None,
) -> Callable[..., Any]:
    """A pipelining stream: admitted like any call (shed over the limit, refused once the store
    has failed), then not counted itself: each of its calls counts as one call in flight."""

    async def handle(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async with _CallScope(None, context, name, observers, False, limit, barrier, False) as call:
            call.uncount()
            async with contextlib.aclosing(pipeline.serve(requests, context)) as answers:
                async for answer in answers:
                    yield answer

    return handle


async def _shed(
    context: grpc.aio.ServicerContext[Any, Any],
    limit: ConcurrencyLimit,
    name: str,
    started: float,
    observers: list[CallObserver],
) -> None:
    """Refuse a call over the limit: cheap, counted by the observers, logged in summary only."""
    elapsed = time.perf_counter() - started
    for observe in observers:
        observe(name, "RESOURCE_EXHAUSTED", elapsed)
    await limit.refuse(context)
