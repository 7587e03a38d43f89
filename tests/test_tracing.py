"""OpenTelemetry tracing (the otel extra): a real server — in this process, so an in-memory
exporter sees its spans — over RocksDB in a temp folder, called through the SDK over real gRPC.
Each call is one server span named after its method, carrying its request_id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import statekeeper as sk
from statekeeper_server.app.config import parse
from statekeeper_server.app.server import StatekeeperServer
from statekeeper_server.app.tracing import REQUEST_ID_ATTRIBUTE
from tests.conftest import ORDER


def test_every_call_is_a_span_with_its_request_id(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def main() -> None:
        server = StatekeeperServer(parse(["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")]))
        server.tracer_provider = provider
        await server.start()
        try:
            async with await sk.Client.connect(server.address) as client:
                await client.register_machine_type(ORDER)
                await client.create_root("order", "o-1", request_id="create-o-1")
                await client.transition("o-1", "pay", request_id="pay-o-1")
                with contextlib.suppress(sk.FailedPreconditionError):
                    await client.transition("o-1", "pay", request_id="pay-again")
                await client.get_node("o-1")
        finally:
            await server.stop(0)

    asyncio.run(main())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    create = spans["/statekeeper.v1.NodeService/CreateRoot"]
    assert create.attributes is not None and create.attributes[REQUEST_ID_ATTRIBUTE] == "create-o-1"
    assert create.attributes["rpc.method"] == "CreateRoot" and create.attributes["rpc.grpc.status_code"] == 0
    pays = [s for s in exporter.get_finished_spans() if s.name.endswith("/ApplyTransition")]
    assert [(s.attributes or {}).get(REQUEST_ID_ATTRIBUTE) for s in pays] == ["pay-o-1", "pay-again"]
    assert (pays[1].attributes or {})["rpc.grpc.status_code"] == 9  # FAILED_PRECONDITION
    # a call without a request_id carries the id the server made for it (the one its logs show)
    get = spans["/statekeeper.v1.NodeService/GetNode"]
    assert len(str((get.attributes or {})[REQUEST_ID_ATTRIBUTE])) == 16


def test_serve_with_console_traces_prints_spans(tmp_path: Path) -> None:
    """The flag end to end in a server process: spans on stdout (console exporter)."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "statekeeper_server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--ready-file",
            str(ready),
            "--otel-traces",
            "console",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for _ in range(400):
            if ready.exists():
                break
            assert proc.poll() is None
            time.sleep(0.05)
        address = json.loads(ready.read_text())["address"]
        with sk.SyncClient.connect(address) as client:
            client.register_machine_type(ORDER)
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert '"name": "/statekeeper.v1.MachineTypeService/RegisterMachineType"' in out
    assert f'"{REQUEST_ID_ATTRIBUTE}"' in out
