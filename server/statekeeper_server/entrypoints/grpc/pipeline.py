"""ExecuteStream: write calls pipelined over one bidirectional stream (node.proto documents the
protocol). Each call of the stream runs through its unary method's own handler (handler.py
`_wrap_unary`: admission, request id, barrier, routing and forwarding, domain errors, observers)
with a CallContext in place of a ServicerContext, concurrently, so calls that arrive together
are queued for the committer together and commit in one group.

Flow control: a call holds one of MAX_CALLS_IN_FLIGHT slots from when it is read until its
result has been handed to gRPC; with every slot taken the stream is not read, so what a
stream holds is bounded whatever the client sends or fails to read.

Results that are ready together leave in one message: a gRPC message costs about as much
Python as a small call (grpc.aio: ~70-130 µs per read or write), so one per call would eat
what pipelining saves. They are written as bytes: each result's two fields (call_id, then
the outcome) are put in front of the outcome's own serialization, and the results in front of
each other (protobuf fields concatenate), so an outcome is serialized once, and a forwarded
call's answer (bytes from the owner) is passed on as it came.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.rpc import status_pb2

from statekeeper._deadlines import Deadlines
from statekeeper_server.domain.errors import DomainError, InvalidArgument, Unavailable
from statekeeper_server.entrypoints.grpc.errors import rich_status
from statekeeper_server.entrypoints.grpc.wire import varint

log = logging.getLogger("statekeeper.rpc")

MAX_CALLS_IN_FLIGHT = 1000
"""Calls of one stream read and not yet answered (node.proto states it)."""

UnaryHandler = Callable[[Any, Any], Awaitable[Any]]
"""A wrapped unary handler: (request, context) -> its response (a message, or bytes)."""

_ERROR_FIELD = 2  # StreamCallResult.error
_CANCEL = "cancel"  # the oneof member that cancels a call instead of making one
_DETAILS = "grpc-status-details-bin"


def _envelope(call_id: int, field: int, payload: bytes) -> bytes:
    """A StreamCallResult: call_id (field 1, omitted when 0 as proto3 does) and `field` holding
    the serialized message `payload`."""
    head = b"\x08" + varint(call_id) if call_id else b""
    return head + varint(field << 3 | 2) + varint(len(payload)) + payload


def _results(results: list[bytes]) -> bytes:
    """An ExecuteStreamResponse holding these StreamCallResults (field 1, repeated)."""
    return b"".join([b"\x0a" + varint(len(r)) + r for r in results])


def _status(code: grpc.StatusCode, message: str) -> bytes:
    """A google.rpc.Status without details, as gRPC itself ends a call (deadline, cancel)."""
    status: bytes = status_pb2.Status(code=code.value[0], message=message).SerializeToString()
    return status


class CallAborted(Exception):
    """A call of the stream ended with a status (CallContext.abort): its response's error."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata or ())

    def status(self) -> bytes:
        for key, value in self.trailing_metadata:
            if key == _DETAILS:
                return value if isinstance(value, bytes) else str(value).encode()
        return _status(self.code, self.details)


class CallContext:
    """What one call of the stream is given for a ServicerContext: the stream's metadata (token,
    x-request-id, the forwarded mark), its own deadline, its own status; abort() ends the call,
    not the stream. It offers what the handlers and the forwarder use, nothing of the stream."""

    __slots__ = ("_code", "_deadline", "_metadata", "_stream")

    def __init__(self, stream: Any, metadata: Any, deadline: float | None) -> None:
        self._stream = stream
        self._metadata = metadata  # the stream's, read once for all its calls
        self._deadline = deadline  # time.monotonic()
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return str(self._stream.peer())

    def time_remaining(self) -> float | None:
        stream: float | None = self._stream.time_remaining()
        if self._deadline is None:
            return stream
        mine = max(0.0, self._deadline - time.monotonic())
        return mine if stream is None else min(stream, mine)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code = code
        raise CallAborted(code, details, trailing_metadata)


class Pipelines:
    """The open ExecuteStreams of a server, so that stopping it (app/server.py) ends them
    promptly instead of waiting out the shutdown grace: each stops reading, answers the calls
    it has read, and ends UNAVAILABLE / SHUTTING_DOWN (calls it did not read were not applied)."""

    def __init__(self) -> None:
        self.draining = False
        self.readers: set[asyncio.Task[None]] = set()

    def drain(self) -> None:
        self.draining = True
        for reader in list(self.readers):
            reader.cancel()


class _Call:
    __slots__ = ("cancelled_by_client", "expired", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[bytes] | None = None  # None once answered
        self.cancelled_by_client = False
        self.expired = False  # its deadline passed


def _answered(call: _Call) -> bool:
    return call.task is None or call.task.done()


def _expire(call: _Call) -> None:
    """Its deadline passed: the call is cancelled, and answered DEADLINE_EXCEEDED."""
    assert call.task is not None
    call.expired = True
    call.task.cancel()


class Pipeline:
    """The handler of one bidirectional method whose messages carry calls (StreamCall) with a
    `call` oneof of other methods' requests: `calls` maps each member's name to that method's
    wrapped unary handler, `fields` to its field number in the result (StreamCallResult);
    `malformed` tells the error of a message that did not parse (None: it parsed)."""

    def __init__(
        self,
        calls: Mapping[str, UnaryHandler],
        fields: Mapping[str, int],
        malformed: Callable[[Any], DomainError | None],
        pipelines: Pipelines,
    ) -> None:
        self._calls = dict(calls)
        self._fields = dict(fields)  # member name -> its field number in the response
        self._malformed = malformed
        self._pipelines = pipelines

    async def serve(self, requests: AsyncIterator[Any], context: Any) -> AsyncGenerator[bytes, None]:
        """The stream's responses: the results of the calls completed since the last one; raises
        a DomainError when the stream must end with one (after every call read is answered)."""
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()  # a result per call; None: reading ended
        slots = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        calls: dict[int, _Call] = {}  # by call_id, for cancellations
        running: set[asyncio.Task[bytes]] = set()
        ended: list[BaseException] = []  # why reading ended early, if it did
        started = 0
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[_Call] = Deadlines(loop, _expire, _answered, 2 * MAX_CALLS_IN_FLIGHT)
        metadata = context.invocation_metadata()

        async def read() -> None:
            nonlocal started
            try:
                async for message in requests:
                    error = self._malformed(message)
                    if error is not None:
                        ended.append(error)  # its call_ids are lost with it: end the stream
                        return
                    for request in message.calls:
                        which = request.WhichOneof("call")
                        if which == _CANCEL:
                            found = calls.get(request.call_id)
                            if found is not None and found.task is not None:
                                found.cancelled_by_client = True
                                found.task.cancel()
                            continue
                        await slots.acquire()
                        call = _Call()
                        calls[request.call_id] = call
                        call.task = loop.create_task(
                            self._answer(request, which, context, metadata, call, deadlines)
                        )
                        running.add(call.task)
                        call.task.add_done_callback(
                            functools.partial(_settled, request.call_id, call, calls, answers, running)
                        )
                        started += 1
            except asyncio.CancelledError:
                if not self._pipelines.draining:
                    raise
                ended.append(
                    Unavailable(
                        "SHUTTING_DOWN",
                        "the server is shutting down: the calls it read are answered, later ones were "
                        "not read (nothing of them applied); retry",
                    )
                )
            except Exception as e:  # the request stream broke: answer what was read, then fail
                ended.append(e)
            finally:
                answers.put_nowait(None)

        reader = loop.create_task(read())
        self._pipelines.readers.add(reader)
        if self._pipelines.draining:
            reader.cancel()
        try:
            answered, reading = 0, True
            while reading or answered < started:
                ready = [await answers.get()]
                while not answers.empty():  # what completed meanwhile goes in the same message
                    ready.append(answers.get_nowait())
                results = [r for r in ready if r is not None]
                reading = reading and len(results) == len(ready)
                if results:
                    yield _results(results)
                    answered += len(results)
                    for _ in results:
                        slots.release()
            if ended:
                raise ended[0]
        finally:
            self._pipelines.readers.discard(reader)
            # The stream is over (ended, cancelled, its connection lost): so are its calls, as a
            # disconnect cancels unary calls (their queued writes still commit).
            reader.cancel()
            deadlines.close()
            for task in list(running):
                task.cancel()

    async def _answer(
        self,
        request: Any,
        which: str | None,
        context: Any,
        metadata: Any,
        call: _Call,
        deadlines: Deadlines[_Call],
    ) -> bytes:
        call_id: int = request.call_id
        handler = self._calls.get(which) if which is not None else None
        if handler is None or which is None:
            return _envelope(call_id, _ERROR_FIELD, _refusal("FIELD_REQUIRED", "the call is not set", "call"))
        deadline: float | None = None
        if request.HasField("timeout"):
            seconds, nanos = request.timeout.seconds, request.timeout.nanos
            if seconds < 0 or nanos < 0 or nanos > 999_999_999:
                return _envelope(
                    call_id,
                    _ERROR_FIELD,
                    _refusal("FIELD_INVALID", "timeout must be a Duration of zero or more", "timeout"),
                )
            deadline = time.monotonic() + seconds + nanos / 1e9
            deadlines.add(deadline, call)
        sub = CallContext(context, metadata, deadline)
        try:
            response = await handler(getattr(request, which), sub)
        except CallAborted as e:
            return _envelope(call_id, _ERROR_FIELD, e.status())
        except asyncio.CancelledError:
            if call.expired:
                _uncancel()
                return _envelope(call_id, _ERROR_FIELD, _DEADLINE_EXCEEDED)
            if not call.cancelled_by_client:
                raise  # the stream is over: nobody to answer
            _uncancel()
            return _envelope(call_id, _ERROR_FIELD, _CANCELLED)
        except Exception as e:  # a defect (logged by the handler): what gRPC answers a unary call
            return _envelope(
                call_id, _ERROR_FIELD, _status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(e)}: {e}")
            )
        payload = response if isinstance(response, bytes) else response.SerializeToString()
        return _envelope(call_id, self._fields[which], payload)


def _uncancel() -> None:
    """The call's task answers after all (its deadline or the client's cancel): not cancelled."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


_DEADLINE_EXCEEDED = _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")  # gRPC's words
_CANCELLED = _status(grpc.StatusCode.CANCELLED, "Cancelled")


def _settled(
    call_id: int,
    call: _Call,
    calls: dict[int, _Call],
    answers: asyncio.Queue[bytes | None],
    running: set[asyncio.Task[bytes]],
    task: asyncio.Task[bytes],
) -> None:
    """A call's task ended: its result goes out. A task cancelled before it ever ran (its
    cancellation right behind it in one message) has none of its own: it is answered here."""
    running.discard(task)
    call.task = None
    if calls.get(call_id) is call:
        del calls[call_id]
    if task.cancelled():
        if call.expired:
            answers.put_nowait(_envelope(call_id, _ERROR_FIELD, _DEADLINE_EXCEEDED))
        elif call.cancelled_by_client:
            answers.put_nowait(_envelope(call_id, _ERROR_FIELD, _CANCELLED))
        return  # else the stream is over: nobody to answer
    error = task.exception()
    if error is not None:  # not an Exception (those _answer answers itself)
        answers.put_nowait(_envelope(call_id, _ERROR_FIELD, _status(grpc.StatusCode.UNKNOWN, repr(error))))
        return
    answers.put_nowait(task.result())


def _refusal(reason: str, message: str, field: str) -> bytes:
    return rich_status(InvalidArgument(reason, message, field=field))[2]
