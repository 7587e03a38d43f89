"""The ceiling: a bare grpc.aio server, its own process, with the statekeeper server's channel
options and no work per call. Requests and responses are raw bytes (no protobuf on either side):

    /bench.v1.Echo/Unary   request: 4-byte big-endian response size, then padding to the request
                           size under test; response: that many bytes.
    /bench.v1.Echo/Stream  request: 4-byte message size; streams messages of that size until the
                           client cancels.

Run: python -m bench.echo --listen 127.0.0.1:0 --ready-file FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc

UNARY = "/bench.v1.Echo/Unary"
STREAM = "/bench.v1.Echo/Stream"
_SIZE = struct.Struct(">I")


def unary_request(request_bytes: int, response_bytes: int) -> bytes:
    head = _SIZE.pack(response_bytes)
    return head + b"x" * max(0, request_bytes - len(head))


def stream_request(message_bytes: int) -> bytes:
    return _SIZE.pack(message_bytes)


async def serve(listen: str, ready_file: str) -> None:
    responses: dict[int, bytes] = {}

    def response(size: int) -> bytes:
        body = responses.get(size)
        if body is None:
            body = responses[size] = b"r" * size
        return body

    async def unary(request: bytes, context: Any) -> bytes:
        return response(_SIZE.unpack_from(request)[0])

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        body = response(_SIZE.unpack_from(request)[0])
        while True:
            yield body

    handler = grpc.method_handlers_generic_handler(
        "bench.v1.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    # The same options as the statekeeper server (app/server.py).
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=10_000,
    )
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rpartition(":")[0]
    tmp = ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"address": f"{host}:{port}", "pid": os.getpid()}, f)
    os.replace(tmp, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.ready_file))


if __name__ == "__main__":
    main()
