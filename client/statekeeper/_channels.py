"""Channel construction for the two clients; the only place they differ besides async/await."""

from __future__ import annotations

import asyncio
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


async def aio_ready(channel: AioChannel, timeout: float) -> None:
    await asyncio.wait_for(channel.channel_ready(), timeout)


def sync_ready(channel: SyncChannel, timeout: float) -> None:
    grpc.channel_ready_future(channel).result(timeout=timeout)


aio_sleep = asyncio.sleep
sync_sleep = time.sleep
