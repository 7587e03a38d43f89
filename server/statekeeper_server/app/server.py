"""Builds the running server from a Config: store, engine, servicers, health, reflection."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from statekeeper.v1 import machine_type_pb2, node_pb2
from statekeeper_server.app.config import Config
from statekeeper_server.engine.engine import Engine
from statekeeper_server.service.handler import CallObserver, generic_handler
from statekeeper_server.service.machine_types import MachineTypeServicer
from statekeeper_server.service.nodes import NodeServicer
from statekeeper_server.storage.rocks import RocksStore

log = logging.getLogger("statekeeper.server")


class StatekeeperServer:
    """One server process's worth of parts, started and stopped together."""

    def __init__(self, config: Config, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.store = RocksStore(config.data_dir)
        self.engine = Engine(
            self.store,
            config.limits,
            fsync=config.fsync,
            request_ttl_ms=int(config.request_ttl_s * 1000),
            failpoints=config.failpoints,
            on_fatal=on_fatal or (lambda e: None),
        )
        self.observers: list[CallObserver] = []
        self.health = health_aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.port = 0
        self.services = {
            machine_type_pb2.DESCRIPTOR.services_by_name["MachineTypeService"]: MachineTypeServicer(
                self.engine
            ),
            node_pb2.DESCRIPTOR.services_by_name["NodeService"]: NodeServicer(self.engine),
        }

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers(
            [
                generic_handler(descriptor, servicer, self.observers)
                for descriptor, servicer in self.services.items()
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [d.full_name for d in self.services] + [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        ]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        self.port = server.add_insecure_port(cfg.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        await self.engine.start()
        await server.start()
        self.grpc_server = server
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving on %s (data %s, fsync %s, revision %d)",
            self.address,
            os.path.abspath(cfg.data_dir),
            "on" if cfg.fsync else "OFF",
            self.engine.durable_revision,
        )
        if cfg.ready_file:
            tmp = cfg.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"address": self.address, "pid": os.getpid()}, f)
            os.replace(tmp, cfg.ready_file)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish, write what is queued, close the store."""
        grace = self.config.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        await self.engine.close()
        self.store.close()
        log.info("stopped; store closed at revision %d", self.engine.durable_revision)

    async def wait(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.wait_for_termination()


async def serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    exit_code = 0

    def fatal(error: BaseException) -> None:
        nonlocal exit_code
        exit_code = 70
        stop.set()

    server = StatekeeperServer(config, on_fatal=fatal)
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    log.info("shutting down (grace %.1fs)", 0 if exit_code else config.shutdown_grace_s)
    await server.stop(0 if exit_code else None)
    return exit_code
