"""Channel construction for the two clients; the only place they differ besides async/await."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

import grpc

ChannelOptions = Sequence[tuple[str, Any]]
AioChannel = grpc.aio.Channel
SyncChannel = grpc.Channel

DEFAULT_OPTIONS: ChannelOptions = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
)


def aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions = DEFAULT_OPTIONS
) -> AioChannel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def sync_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions = DEFAULT_OPTIONS
) -> SyncChannel:
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


# The standard health check, sent as raw bytes (an empty HealthCheckRequest: the whole server),
# so the SDK needs no health stubs. It needs no token.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def aio_probe(channel: AioChannel, timeout: float) -> str | None:
    """One attempt to reach the server, failing fast: None when it answered, else gRPC's words
    for why not (e.g. "... Connection refused")."""
    check: Any = channel.unary_unary(_HEALTH_CHECK)  # raw bytes in and out
    try:
        await check(b"", timeout=timeout, wait_for_ready=False)
    except grpc.RpcError as e:
        call: Any = e
        if call.code() in _UNREACHABLE:
            return str(call.details() or call.code().name)
    return None  # any answer, even UNIMPLEMENTED, means a server is there


def sync_probe(channel: SyncChannel, timeout: float) -> str | None:
    check: Any = channel.unary_unary(_HEALTH_CHECK)
    try:
        check(b"", timeout=timeout, wait_for_ready=False)
    except grpc.RpcError as e:
        call: Any = e
        if call.code() in _UNREACHABLE:
            return str(call.details() or call.code().name)
    return None


def _host_port(target: str) -> tuple[str, int] | None:
    """host and port of a plain "host:port", "[v6]:port" or "dns:///host:port" target."""
    text = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return None
    return host.strip("[]") or "localhost", int(port)


def speaks_tls(target: str, timeout: float = 2.0) -> bool | None:
    """Whether the server at target completes a TLS handshake (certificates not checked: this
    only tells TLS from plaintext after a plaintext connection was closed). None: cannot tell."""
    address = _host_port(target)
    if address is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(address, timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=address[0]),
        ):
            return True
    except ssl.SSLError:
        return False
    except OSError:
        return None


async def aio_speaks_tls(target: str, timeout: float = 2.0) -> bool | None:
    return await asyncio.to_thread(speaks_tls, target, timeout)


sync_speaks_tls = speaks_tls


aio_sleep = asyncio.sleep
sync_sleep = time.sleep
