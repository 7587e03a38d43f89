"""Pipelining (`connect(..., pipeline=True)`): the client's writes travel over one shared
ExecuteStream (node.proto) instead of one unary call each, so that the calls of many tasks or
threads reach the server together and commit in one group. The calls waiting to be sent go
out together in one message (a gRPC message costs grpc.aio about as much as a small call), and
the server answers those completed together in one.

A call keeps the unary call's semantics: its own deadline (sent with it, and kept here too),
its error as the same StatekeeperError (from the google.rpc.Status the server answers it with),
cancellation (a cancelled caller cancels its call at the server). When the stream breaks, its
calls in flight fail the way a unary call fails when its connection does (UNAVAILABLE: the
client retries those with a request_id), and the next call opens a new stream. A server that
refuses the stream itself before reading anything (UNIMPLEMENTED: an older server;
PERMISSION_DENIED, UNAUTHENTICATED: a token that may not write) gets unary calls from then on,
which answer exactly as they would have.

The async pipeline and its threaded twin (for SyncClient) live side by side here, as
_channels.py does for channels: the clients themselves differ only by async/await.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from statekeeper._deadlines import Deadlines
from statekeeper._errors import DeadlineExceededError, StatekeeperError, UnavailableError, from_status
from statekeeper._varint import varint as _varint
from statekeeper.v1 import node_pb2

METHOD = "/statekeeper.v1.NodeService/ExecuteStream"
MAX_IN_FLIGHT = 1000
"""The server's limit of calls in flight per stream (node.proto): never more are unanswered."""

_FIELDS = {f.name: f.number for f in node_pb2.StreamCall.DESCRIPTOR.fields}
_REFUSALS = frozenset(
    {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)
_parse = node_pb2.ExecuteStreamResponse.FromString

ErrorOf = Callable[[grpc.RpcError], StatekeeperError]


class StreamRefused(Exception):
    """The server refused the stream before reading any call: send this call unary."""


def _request(call_id: int, kind: str, request: Message, timeout: float) -> bytes:
    """A StreamCall, its request spliced in as serialized (protobuf fields concatenate): the
    request is serialized once, not copied into the envelope first."""
    seconds = int(timeout)
    nanos = int((timeout - seconds) * 1e9)
    # A google.protobuf.Duration: seconds (field 1) and nanos (field 2), zeros omitted.
    duration = (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")
    body = request.SerializeToString()
    return b"".join(
        (
            b"\x08",
            _varint(call_id),
            b"\x12",
            _varint(len(duration)),
            duration,
            _varint(_FIELDS[kind] << 3 | 2),
            _varint(len(body)),
            body,
        )
    )


def _cancel(call_id: int) -> bytes:
    return b"\x08" + _varint(call_id) + _varint(_FIELDS["cancel"] << 3 | 2) + b"\x00"


def _message(calls: list[bytes]) -> bytes:
    """An ExecuteStreamRequest holding these StreamCalls (field 1, repeated)."""
    return b"".join(b"\x0a" + _varint(len(c)) + c for c in calls)


def _outcome(response: node_pb2.StreamCallResult) -> Any:
    which = response.WhichOneof("result")
    if which == "error":
        raise from_status(response.error)
    if which is None:
        raise StatekeeperError(grpc.StatusCode.UNKNOWN, "the server answered the call without a result")
    return getattr(response, which)


def _deadline_exceeded() -> DeadlineExceededError:
    return DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")  # gRPC's words


def _ended_error() -> UnavailableError:
    return UnavailableError(
        grpc.StatusCode.UNAVAILABLE, "the stream ended before the call was answered; its outcome is unknown"
    )


def _closed_error() -> StatekeeperError:
    return StatekeeperError(grpc.StatusCode.CANCELLED, "the client was closed while the call was in flight")


class _Failure:
    """How a stream ended, as the error each of its unanswered calls gets (a fresh one each)."""

    def __init__(self, error: grpc.RpcError | None, refused: bool, closed: bool, error_of: ErrorOf) -> None:
        self._error, self.refused, self._closed, self._error_of = error, refused, closed, error_of

    def new(self) -> BaseException:
        if self.refused:
            return StreamRefused()
        if self._closed:
            return _closed_error()
        return self._error_of(self._error) if self._error is not None else _ended_error()


def _failure(error: BaseException | None, answered: bool, closed: bool, error_of: ErrorOf) -> _Failure:
    rpc = error if isinstance(error, grpc.RpcError) else None
    code = rpc.code() if rpc is not None else None
    return _Failure(rpc, not answered and code in _REFUSALS, closed, error_of)


# -- asyncio ------------------------------------------------------------------------------------


class _AioStream:
    """One ExecuteStream: a writer task (gRPC takes one write at a time) and a reader task that
    hands each answer to its caller's future."""

    def __init__(self, call: Any, release: Callable[[], None], error_of: ErrorOf) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.dead = False
        self.refused = False
        self.closing = False
        self._release = release
        self._error_of = error_of
        self.deadlines: Deadlines[int] = Deadlines(
            asyncio.get_running_loop(), self._expire, self._answered, 2 * MAX_IN_FLIGHT
        )
        self.writer = asyncio.ensure_future(self._write())
        self.reader = asyncio.ensure_future(self._read())

    def _answered(self, call_id: int) -> bool:
        future = self.pending.get(call_id)
        return future is None or future.done()

    def _expire(self, call_id: int) -> None:
        """The call's deadline passed: it fails DEADLINE_EXCEEDED and is cancelled at the server
        (its slot stays taken until the server answers)."""
        self.pending[call_id].set_exception(_deadline_exceeded())
        self.abandon(call_id)

    async def _write(self) -> None:
        try:
            while True:
                calls = [await self.outbox.get()]
                while not self.outbox.empty():  # what queued up meanwhile goes in the same message
                    calls.append(self.outbox.get_nowait())
                ready = [c for c in calls if c is not None]
                if ready:
                    await self.call.write(_message(ready))
                if len(ready) < len(calls):
                    return
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # the stream ended: the reader tells the calls

    async def _read(self) -> None:
        answered, error = False, None
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                answered = True
                for result in response.results:
                    future = self.pending.pop(result.call_id, None)
                    if future is None:
                        continue
                    self._release()
                    if not future.done():  # done: its caller gave up (deadline, cancelled)
                        future.set_result(result)
        except (grpc.RpcError, asyncio.CancelledError) as e:
            error = e
        finally:
            failure = _failure(error, answered, self.closing, self._error_of)
            self.dead, self.refused = True, failure.refused
            self.deadlines.close()
            for future in self.pending.values():
                self._release()
                if not future.done():
                    future.set_exception(failure.new())
            self.pending.clear()
            self.outbox.put_nowait(None)

    def abandon(self, call_id: int) -> None:
        """The caller gave up on the call (deadline, cancelled): cancel it at the server too. Its
        slot stays taken until the server answers it, so the stream never exceeds the limit."""
        if not self.dead and call_id in self.pending:
            self.outbox.put_nowait(_cancel(call_id))


class AioPipeline:
    def __init__(
        self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]], error_of: ErrorOf
    ) -> None:
        self._method: Any = channel.stream_stream(METHOD, response_deserializer=_parse)
        self._metadata = tuple(metadata)
        self._error_of = error_of
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._ids = itertools.count(1)
        self._stream: _AioStream | None = None
        self.refused = False

    async def call(self, kind: str, request: Message, timeout: float) -> Any:
        """The response of one call (ExecuteStreamRequest's member `kind`); raises its
        StatekeeperError, or StreamRefused."""
        if self.refused:
            raise StreamRefused()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._slots.locked():  # every slot taken: wait for one, within the deadline
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise _deadline_exceeded() from None
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            message = _request(call_id := next(self._ids), kind, request, max(0.0, deadline - loop.time()))
            stream = self._stream
            if stream is None or stream.dead:  # opened lazily, again after it broke
                stream = self._stream = _AioStream(
                    self._method(metadata=self._metadata), self._slots.release, self._error_of
                )
        except BaseException:
            self._slots.release()
            raise
        future: asyncio.Future[Any] = loop.create_future()
        stream.pending[call_id] = future
        stream.deadlines.add(deadline, call_id)
        stream.outbox.put_nowait(message)
        try:
            response = await future  # DeadlineExceededError once the deadline passed
        except asyncio.CancelledError:
            stream.abandon(call_id)
            raise
        except StreamRefused:
            self.refused = True
            raise
        return _outcome(response)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.closing = True
            stream.deadlines.close()
            stream.call.cancel()
            await asyncio.gather(stream.reader, stream.writer, return_exceptions=True)


# -- threads (SyncClient) -----------------------------------------------------------------------


class _SyncStream:
    """One ExecuteStream: gRPC's own thread sends what the outbox holds; a reader thread hands
    each answer to its caller's future."""

    def __init__(
        self, method: Any, metadata: Sequence[tuple[str, str]], release: Callable[[], None], error_of: ErrorOf
    ) -> None:
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}
        self.lock = threading.Lock()
        self.outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.dead = False
        self.refused = False
        self.closing = False
        self._release = release
        self._error_of = error_of
        self.call = method(self._messages(), metadata=metadata)
        self.reader = threading.Thread(target=self._read, name="statekeeper-pipeline", daemon=True)
        self.reader.start()

    def _messages(self) -> Iterator[bytes]:
        """What gRPC's thread sends: the calls queued up since its last message, in one."""
        while (first := self.outbox.get()) is not None:
            calls = [first]
            try:
                while (call := self.outbox.get_nowait()) is not None:
                    calls.append(call)
            except queue.Empty:
                call = b""
            yield _message(calls)
            if call is None:
                return

    def _read(self) -> None:
        answered, error = False, None
        try:
            for response in self.call:
                answered = True
                for result in response.results:
                    with self.lock:
                        future = self.pending.pop(result.call_id, None)
                    if future is None:
                        continue
                    self._release()
                    if future.set_running_or_notify_cancel():
                        future.set_result(result)
        except grpc.RpcError as e:
            error = e
        finally:
            failure = _failure(error, answered, self.closing, self._error_of)
            with self.lock:
                self.dead, self.refused = True, failure.refused
                pending, self.pending = list(self.pending.values()), {}
            for future in pending:
                self._release()
                if future.set_running_or_notify_cancel():
                    future.set_exception(failure.new())
            self.outbox.put(None)  # ends gRPC's sending thread

    def abandon(self, call_id: int) -> None:
        with self.lock:
            if not self.dead and call_id in self.pending:
                self.outbox.put(_cancel(call_id))


class SyncPipeline:
    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]], error_of: ErrorOf) -> None:
        self._method: Any = channel.stream_stream(METHOD, response_deserializer=_parse)
        self._metadata = tuple(metadata)
        self._error_of = error_of
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stream: _SyncStream | None = None
        self.refused = False

    def call(self, kind: str, request: Message, timeout: float) -> Any:
        if self.refused:
            raise StreamRefused()
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise _deadline_exceeded()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            message = _request(
                call_id := next(self._ids), kind, request, max(0.0, deadline - time.monotonic())
            )
            stream = self._register(call_id, future)
        except BaseException:
            self._slots.release()
            raise
        stream.outbox.put(message)
        try:
            response = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except StreamRefused:
            self.refused = True
            raise
        except TimeoutError:  # the wait's (a call's own errors are StatekeeperErrors)
            future.cancel()
            stream.abandon(call_id)
            raise _deadline_exceeded() from None
        except BaseException:  # e.g. KeyboardInterrupt while waiting
            if not future.done():
                future.cancel()
                stream.abandon(call_id)
            raise
        return _outcome(response)

    def _register(self, call_id: int, future: concurrent.futures.Future[Any]) -> _SyncStream:
        """The open stream, with the call in its pending calls (opened lazily, again after it broke)."""
        with self._lock:
            while True:
                stream = self._stream
                if stream is None or stream.dead:
                    stream = self._stream = _SyncStream(
                        self._method, self._metadata, self._slots.release, self._error_of
                    )
                with stream.lock:
                    if not stream.dead:
                        stream.pending[call_id] = future
                        return stream

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.closing = True
            stream.call.cancel()
            stream.reader.join(10)
