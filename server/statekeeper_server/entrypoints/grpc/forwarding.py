"""Forwarding (cluster mode): a call for a shard another server owns is sent there as is (the
request bytes, the caller's token and request id, its deadline) and the answer comes back as
is (the response bytes, or the status with its details), so a plain gRPC client can call any
server.

A forwarded call carries `x-statekeeper-forwarded`; a server that receives one for a shard it
does not own refuses it with UNAVAILABLE / NOT_SHARD_OWNER (nothing applied) instead of
forwarding it again, and the forwarding server looks the owner up again and retries. It also
retries when the owner cannot be reached at all (nothing was sent); any other failure is the
caller's to retry (with its request_id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from statekeeper_server.core.shards import ShardMap
from statekeeper_server.domain.errors import Unavailable
from statekeeper_server.entrypoints.grpc.errors import rich_status

log = logging.getLogger("statekeeper.forward")

FORWARDED_HEADER = "x-statekeeper-forwarded"
_PASSED_HEADERS = ("authorization", "x-request-id")
_OWNER_WAIT_S = 15.0  # how long a call waits for a shard to get an owner (failover; app: 3 leases)


def not_owner_here(shard: int) -> Unavailable:
    return Unavailable(
        "NOT_SHARD_OWNER",
        f"this server does not own shard {shard}; nothing was applied: retry (any server forwards)",
        shard=shard,
    )


def _is_not_owner(error: grpc.aio.AioRpcError) -> bool:
    if error.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    return "NOT_SHARD_OWNER" in (error.details() or "") or any(
        k == "grpc-status-details-bin" and b"NOT_SHARD_OWNER" in (v if isinstance(v, bytes) else v.encode())
        for k, v in (error.trailing_metadata() or ())
    )


def _not_sent(error: grpc.aio.AioRpcError) -> bool:
    """The owner could not be reached: the call never left this server."""
    details = (error.details() or "").lower()
    return error.code() is grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details or "connect failed" in details
    )


class Forwarder:
    def __init__(
        self,
        shards: ShardMap,
        me: str,
        refresh: Callable[[], None],
        credentials: grpc.ChannelCredentials | None,
        max_message_bytes: int,
        store_reachable: Callable[[], bool] = lambda: True,
        owner_wait_s: float = _OWNER_WAIT_S,
    ) -> None:
        self.shards = shards
        self.me = me  # this server's id
        self._refresh = refresh
        self._store_reachable = store_reachable
        self._owner_wait_s = owner_wait_s
        self._credentials = credentials
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Fail fast when a dead owner's address refuses: the call is retried elsewhere.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    async def _owner(self, shard: int, deadline: float) -> str | None:
        """The owner's address; None: this server owns it (serve here)."""
        while True:
            if self.shards.is_owned(shard):
                return None
            owner = self.shards.owners.get(shard)
            if owner is not None and owner[0] != self.me and owner[1]:
                return owner[1]
            self._refresh()
            if not self._store_reachable():
                # Nobody can take a shard while the store is down: say so now.
                raise Unavailable(
                    "STORE_UNAVAILABLE",
                    f"shard {shard} has no owner and the store cannot be reached; retry",
                    shard=shard,
                )
            if time.monotonic() >= deadline:
                raise Unavailable(
                    "SHARD_UNAVAILABLE",
                    f"shard {shard} has no owner right now (a server is failing over); retry",
                    shard=shard,
                )
            await asyncio.sleep(0.05)

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, str | bytes]]:
        out: list[tuple[str, str | bytes]] = [(FORWARDED_HEADER, "1")]
        for key, value in context.invocation_metadata() or ():
            if key in _PASSED_HEADERS:
                out.append((key, value))
        return out

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[float, float | None]:
        remaining = context.time_remaining()
        wait = self._owner_wait_s if remaining is None else min(self._owner_wait_s, remaining)
        return time.monotonic() + wait, remaining

    async def unary(
        self, shard: int, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes | None:
        """The owner's answer (bytes); None: serve here (this server owns the shard now)."""
        give_up, _ = self._deadline(context)
        payload = request.SerializeToString()
        while True:
            address = await self._owner(shard, give_up)
            if address is None:
                return None
            unary: Any = self._channel(address).unary_unary(method)
            remaining = context.time_remaining()
            try:
                answer: bytes = await unary(payload, metadata=self._metadata(context), timeout=remaining)
                return answer
            except grpc.aio.AioRpcError as e:
                if (_is_not_owner(e) or _not_sent(e)) and time.monotonic() < give_up:
                    self._forget(shard, address)
                    continue
                await _relay_error(context, e)
                raise AssertionError("unreachable: abort raises") from e

    async def stream(
        self, shard: int, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes] | None:
        """The owner's messages; None: serve here."""
        give_up, _ = self._deadline(context)
        payload = request.SerializeToString()
        while True:
            address = await self._owner(shard, give_up)
            if address is None:
                return None
            stub: Any = self._channel(address).unary_stream(method)
            call: Any = stub(payload, metadata=self._metadata(context), timeout=context.time_remaining())
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as e:
                if (_is_not_owner(e) or _not_sent(e)) and time.monotonic() < give_up:
                    self._forget(shard, address)
                    continue
                await _relay_error(context, e)
                raise AssertionError("unreachable: abort raises") from e
            return self._relay_stream(call, first, context)

    async def _relay_stream(
        self, call: Any, first: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            message = first
            while message is not grpc.aio.EOF:
                yield message
                message = await call.read()
        except grpc.aio.AioRpcError as e:
            await _relay_error(context, e)
        finally:
            call.cancel()

    # -- calls to a named peer (fan-out) ----------------------------------------------------

    def peer_stream(
        self, address: str, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """A server stream opened on a peer, as if forwarded (the peer does not fan out again)."""
        stub: Any = self._channel(address).unary_stream(method)
        return stub(request.SerializeToString(), metadata=self._metadata(context))

    async def peer_unary(
        self, address: str, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        stub: Any = self._channel(address).unary_unary(method)
        answer: bytes = await stub(request.SerializeToString(), metadata=self._metadata(context), timeout=10)
        return answer

    def _forget(self, shard: int, address: str) -> None:
        owner = self.shards.owners.get(shard)
        if owner is not None and owner[1] == address:
            del self.shards.owners[shard]
        self._refresh()


async def _relay_error(context: grpc.aio.ServicerContext[Any, Any], error: grpc.aio.AioRpcError) -> None:
    trailing = [(k, v) for k, v in (error.trailing_metadata() or ()) if k == "grpc-status-details-bin"]
    if not trailing and error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        # The owner could not be reached or went away mid-call (a transport error, no status of ours): say so in our
        # words, so the caller knows it is the owner, not this server, and retries.
        code, message, details = rich_status(
            Unavailable(
                "SHARD_OWNER_UNREACHABLE",
                f"the server owning this call's shard is unreachable ({error.details()}); retry with the "
                "same request_id (another server takes its shards within the lease time)",
            )
        )
        await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", details),))
    await context.abort(error.code(), error.details() or "", trailing_metadata=tuple(trailing))
