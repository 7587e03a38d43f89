"""Builds the running server from a Config: store, engine, servicers, health, reflection."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from statekeeper.v1 import admin_pb2, event_pb2, machine_type_pb2, node_pb2, savepoint_pb2, task_pb2
from statekeeper_server.app import gauges, metrics, reflection, security
from statekeeper_server.app.config import Config, task_settings
from statekeeper_server.cluster.compaction import ClusterCompactor, CutOffConsumers
from statekeeper_server.cluster.events import EventTail
from statekeeper_server.cluster.housekeeping import ShardSweeps
from statekeeper_server.cluster.membership import Membership
from statekeeper_server.core.engine import Engine
from statekeeper_server.core.shards import ShardMap
from statekeeper_server.domain.errors import DomainError
from statekeeper_server.entrypoints.grpc.admin import AdminServicer, ClusterMember, ServerFacts
from statekeeper_server.entrypoints.grpc.auth import AuthInterceptor, Permission
from statekeeper_server.entrypoints.grpc.events import EventServicer
from statekeeper_server.entrypoints.grpc.forwarding import Forwarder
from statekeeper_server.entrypoints.grpc.handler import (
    CallObserver,
    ClusterRouting,
    ConcurrencyLimit,
    StreamLimit,
    generic_handler,
)
from statekeeper_server.entrypoints.grpc.machine_types import MachineTypeServicer
from statekeeper_server.entrypoints.grpc.nodes import NodeServicer
from statekeeper_server.entrypoints.grpc.pipeline import Pipelines
from statekeeper_server.entrypoints.grpc.routing import Router
from statekeeper_server.entrypoints.grpc.savepoints import SavepointServicer
from statekeeper_server.entrypoints.grpc.tasks import TaskServicer
from statekeeper_server.entrypoints.grpc.wire import WIRE_EVENTS
from statekeeper_server.entrypoints.http import Inspector, InspectorSettings
from statekeeper_server.features.events.consumers import ConsumerManager
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.features.events.retention import EventCompactor, RetentionPolicy
from statekeeper_server.features.savepoints.runs import Runs
from statekeeper_server.features.savepoints.tree_snapshots import TreeSnapshots
from statekeeper_server.features.tasks.executors import TaskExecutors
from statekeeper_server.storage import keys
from statekeeper_server.storage.base import Keyspace, Store
from statekeeper_server.storage.postgres import PgStore, ShardTable
from statekeeper_server.storage.rocksdb import RocksStore

log = logging.getLogger("statekeeper.server")

GC_YOUNG_THRESHOLD = 50_000
"""Tracked objects allocated (net of those freed) between collections of the youngest
generation; Python's default is 700. A commit group holds tens of thousands of live objects
(requests, records, events, messages) until it is answered: at the default the collector ran
over them again and again (about a third of ExecuteBatch's CPU per transition). The server's
long-lived objects are no reason to collect: start-up's are frozen (serve) and the event window
holds plain tuples the collector does not track. Cyclic garbage is still collected."""

FATAL_DRAIN_S = 0.2
FATAL_GRACE_S = 1.0
"""After a fatal store error (fail-stop): calls already received are answered for FATAL_DRAIN_S
(writes with UNAVAILABLE), then in-flight calls get FATAL_GRACE_S to finish."""


async def open_store(config: Config) -> Store:
    """The store the configuration names: PostgreSQL (cluster mode) or the embedded RocksDB."""
    if config.store:
        return await PgStore.open(config.store, config.shards)
    return RocksStore(config.data_dir)


class StatekeeperServer:
    """One server process's worth of parts, started and stopped together."""

    def __init__(
        self,
        config: Config,
        on_fatal: Callable[[BaseException], None] | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        # Read certificates and tokens first: a bad one stops the start before the store opens.
        self.tokens = security.load_tokens(config)
        self.credentials = security.server_credentials(config)
        self.metrics_http: metrics.MetricsHTTP | None = None
        self.inspector: Inspector | None = None
        self._inspector_dir = ""
        self.store: Store = store if store is not None else RocksStore(config.data_dir)
        self.cluster: PgStore | None = self.store if isinstance(self.store, PgStore) else None
        self.shards = ShardMap(self.cluster.shard_count if self.cluster is not None else 1)
        self.membership: Membership | None = None
        self._adopting: asyncio.Task[None] | None = None
        self.server_id = uuid.uuid4().hex[:12]
        self.routing: ClusterRouting | None = None
        if self.cluster is not None:
            store_ = self.cluster

            async def shard_of_task(task_id: str) -> int | None:
                key = keys.task_key(task_id)
                return await store_.shard_of_key(Keyspace.TASKS, key) if key is not None else None

            self.routing = ClusterRouting(
                Router(self.shards, shard_of_task),
                Forwarder(
                    self.shards,
                    self.server_id,
                    lambda: self.membership.refresh_soon() if self.membership is not None else None,
                    security.peer_credentials(config),
                    config.max_message_bytes,
                    lambda: self.membership.store_reachable if self.membership is not None else True,
                    owner_wait_s=3 * config.lease_s,
                ),
                self.shards,
            )
        self.engine = Engine(
            self.store,
            config.limits,
            fsync=config.fsync,
            request_ttl_ms=int(config.request_ttl_s * 1000),
            failpoints=config.failpoints,
            on_fatal=on_fatal or (lambda e: None),
            shards=self.shards,
            event_codec=WIRE_EVENTS,  # stored as sent: streams send stored bytes as they are
        )
        self.observers: list[CallObserver] = []
        self.tracer_provider: Any = None  # tests: trace into this provider (app/tracing.py)
        self.limit = ConcurrencyLimit(
            config.max_concurrent_rpcs, float(config.failpoints.get("rpc.delay", 0) or 0)
        )
        self.streams = StreamLimit(config.limits.max_subscribers)
        self.engine.committer.calls_in_flight = lambda: self.limit.in_flight
        self.pipelines = Pipelines()  # open ExecuteStreams, ended first when the server stops
        self.health = health_aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.port = 0
        self.tasks = TaskExecutors(self.engine, task_settings(config))
        self.services = {
            machine_type_pb2.DESCRIPTOR.services_by_name["MachineTypeService"]: MachineTypeServicer(
                self.engine
            ),
            node_pb2.DESCRIPTOR.services_by_name["NodeService"]: NodeServicer(self.engine),
            task_pb2.DESCRIPTOR.services_by_name["TaskService"]: TaskServicer(
                self.engine,
                self.tasks,
                self.routing.forwarder if self.routing is not None else None,
                self._peers if self.routing is not None else None,
            ),
            savepoint_pb2.DESCRIPTOR.services_by_name["SavepointService"]: SavepointServicer(
                self.engine, Runs(self.engine, config.savepoint_keep), TreeSnapshots(self.engine)
            ),
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"]: AdminServicer(
                self.engine,
                config.backup_dir,
                ServerFacts(
                    store="rocksdb" if self.cluster is None else "postgresql",
                    store_location=(
                        os.path.abspath(config.data_dir) if self.cluster is None else _safe_dsn(config.store)
                    ),
                    fsync=config.fsync if self.cluster is None else True,
                    oldest_event_revision=lambda: self.events.oldest_revision,
                    shard_count=lambda: self.shards.count if self.cluster is not None else 0,
                    cluster_members=self._cluster_members,
                    store_revision=lambda: self.events.durable_revision,
                ),
            ),
        }
        # The event stream: the hub learns of every durable commit (one server) or reads every
        # server's commits from the shared store (cluster); consumers persist positions.
        self.events = EventHub(self.store, self.engine.durable_revision, event_codec=WIRE_EVENTS)
        # Streams yield most of the loop to calls while any are in flight (lane.py).
        self.events.lane.contended = lambda: self.limit.in_flight > 0
        self.tail: EventTail | None = None
        if self.cluster is not None:
            self.tail = EventTail(self.cluster, self.events, self.engine.catalog)
            self.engine.committer.revision_hint = lambda: self.events.durable_revision
        else:
            self.engine.durable_listeners.append(self.events.on_durable)
        self.consumers = ConsumerManager(
            self.store,
            self.events,
            lambda mutations, shard: self.engine.enqueue_unversioned(mutations, shard),
            load=self.cluster is None,
            shard_of=self.shards.of,
        )
        if self.cluster is None:
            # Idle consumers follow the durable top past commits they do not match (in a
            # cluster they catch up from the hub every second).
            self.engine.durable_listeners.append(self.consumers.on_durable)
        self.compactor = EventCompactor(
            self.store,
            self.events,
            self.consumers,
            RetentionPolicy(
                config.event_retention_revisions,
                config.event_retention_age_s,
                config.event_retention_max_revisions,
                config.event_compaction_interval_s,
            ),
        )
        # Cluster mode: each server sweeps request ids and finished tasks of the shards it owns;
        # the holder of shard 0 compacts events (cluster/housekeeping.py, cluster/compaction.py).
        self.sweeps: ShardSweeps | None = None
        self.cluster_compactor: ClusterCompactor | None = None
        if self.cluster is not None:
            self.sweeps = ShardSweeps(self.cluster, self.shards, self.tasks.settings.finished_retention_ms)
            self.cluster.compaction_listeners.append(CutOffConsumers(self.cluster, self.consumers).compacted)
        self.event_servicer = EventServicer(self.engine, self.events, self.consumers)
        self.services[event_pb2.DESCRIPTOR.services_by_name["EventService"]] = self.event_servicer

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if cfg.otel_traces or self.tracer_provider is not None:  # outermost: refusals get spans too
            from statekeeper_server.app import tracing

            interceptors.append(tracing.instrument(self, self.tracer_provider))
        if len(self.tokens):  # no tokens configured: no interceptor at all (nothing on the hot path)
            interceptors.append(AuthInterceptor(self.tokens, self.observers))
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            # Not grpc's maximum_concurrent_rpcs: its bound drifts up with every refusal; the
            # handlers count calls themselves (entrypoints/grpc/handler.py ConcurrencyLimit).
            maximum_concurrent_rpcs=None,
            interceptors=interceptors or None,
        )
        server.add_generic_rpc_handlers(
            [
                generic_handler(
                    descriptor,
                    servicer,
                    self.observers,
                    self.limit,
                    self.streams,
                    self.engine.durable_barrier,
                    self.routing,
                    self.pipelines,
                )
                for descriptor, servicer in self.services.items()
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [d.full_name for d in self.services] + [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        ]
        reflection.enable(server, names)
        if self.credentials is not None:
            try:
                self.port = server.add_secure_port(cfg.listen, self.credentials)
            except RuntimeError:
                raise OSError(
                    f"cannot listen on {cfg.listen} with TLS: the address is in use, or the "
                    "certificate and key are not a valid pair"
                ) from None
        else:
            self.port = server.add_insecure_port(cfg.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        if self.cluster is not None:
            await self._join_cluster()
        if cfg.http_listen:
            # The inspector reaches the server only through this private gRPC port (a unix
            # socket in a 0700 folder), so its reads and writes take the same path as any client.
            self._inspector_dir = tempfile.mkdtemp(prefix="statekeeper-inspector-")
            inspector_target = f"unix:{self._inspector_dir}/grpc.sock"
            if server.add_insecure_port(inspector_target) == 0:
                raise OSError(f"cannot listen on {inspector_target}")
        if cfg.metrics_listen or cfg.http_listen:
            metrics.instrument(self)
            gauges.instrument(self)
        if cfg.metrics_listen:
            self.metrics_http = metrics.MetricsHTTP(cfg.metrics_listen)
        if cfg.http_listen:
            await self._start_inspector(inspector_target)  # binds now: a busy port stops the start
        await self.engine.start(sweep=self.cluster is None)
        self.tasks.start(retention=self.cluster is None)
        self.consumers.start()
        if self.tail is not None:
            self.tail.start()
        else:
            self.compactor.start()
        if self.sweeps is not None and self.cluster_compactor is not None:
            self.sweeps.start()
            self.cluster_compactor.start()
        await server.start()
        self.grpc_server = server
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.inspector is not None:
            self.inspector.serving()
        if self.cluster is not None:
            log.info(
                "serving on %s (cluster store %s, %d of %d shards, revision %d)",
                self.address,
                _safe_dsn(cfg.store),
                len(self.shards.owned),
                self.shards.count,
                self.engine.durable_revision,
            )
        else:
            log.info(
                "serving on %s (data %s, fsync %s, revision %d)",
                self.address,
                os.path.abspath(cfg.data_dir),
                "on" if cfg.fsync else "OFF",
                self.engine.durable_revision,
            )
        self._log_security()
        if cfg.ready_file:
            tmp = cfg.ready_file + ".tmp"
            with open(tmp, "w") as f:
                extra = {"metrics_address": self.metrics_http.address} if self.metrics_http else {}
                if self.inspector is not None:
                    extra["http_address"] = self.inspector.address
                json.dump({"address": self.address, "pid": os.getpid(), **extra}, f)
            os.replace(tmp, cfg.ready_file)

    async def _adopt_consumers(self, shards: set[int]) -> None:
        """Serve the durable consumers of shards this server just took."""
        attempt = 0
        while True:
            try:
                items = await self.store.durable().scan(
                    Keyspace.CONSUMERS, b"", None, limit=10_000_000, shards=sorted(shards)
                )
                break
            except DomainError as e:  # the store is unavailable: try again while they are ours
                log.warning("loading the consumers of shards %s failed: %s", sorted(shards), e.message)
                if not any(self.shards.is_owned(s) for s in shards):
                    return
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                attempt += 1
        owned = [(k, v) for k, v in items if self.shards.is_owned(self.shards.of(_consumer_name(k)))]
        self.consumers.adopt(owned, shards)

    def _peers(self) -> list[str]:
        """The addresses of the other live servers of the cluster."""
        if self.membership is None:
            return []
        return [address for id_, address, alive in self.membership.servers if alive and id_ != self.server_id]

    @property
    def advertised(self) -> str:
        return self.config.advertise or self.address

    async def _join_cluster(self) -> None:
        assert self.cluster is not None
        self.cluster.server_id = self.server_id
        table = ShardTable(
            self.cluster.pool,
            self.server_id,
            self.advertised,
            self.config.lease_s,
            tail_revision=lambda: self.events.durable_revision,
        )

        async def tails() -> list[int]:
            return [s.tail_revision for s in await table.servers() if s.alive]

        self.cluster_compactor = ClusterCompactor(
            self.cluster, self.events, self.consumers, self.compactor.policy, self.shards, tails
        )

        def gained(shards: set[int]) -> None:
            self.tasks.timers.wake()
            self.tasks.outbound.wake_all()
            self.consumers.loading(shards)
            loop = asyncio.get_running_loop()
            self._adopting = loop.create_task(self._adopt_consumers(shards), name="adopt-consumers")

        def lost(shards: set[int]) -> None:
            self.consumers.forget(self.consumers.shard_names(shards))

        self.membership = Membership(
            self.cluster,
            table,
            self.shards,
            self.config.lease_s,
            on_gained=gained,
            on_lost=lost,
            drain=self.engine.settled,
        )
        await self.membership.start()

    def _cluster_members(self) -> list[ClusterMember]:
        """GetServerInfo's servers and their shards (as this server last read them)."""
        if self.membership is None:
            return []
        owned: dict[str, list[int]] = {}
        for shard, (owner, _address) in self.shards.owners.items():
            owned.setdefault(owner, []).append(shard)
        owned[self.server_id] = list(self.shards.owned)
        return [
            ClusterMember(sid, address, sid == self.server_id, tuple(sorted(owned.get(sid, ()))))
            for sid, address, alive in self.membership.servers
            if alive or sid == self.server_id
        ]

    async def _start_inspector(self, target: str) -> None:
        cfg = self.config
        sampler_token = ""
        if len(self.tokens):
            # The consumer-lag sampler calls ListConsumers on its own: a random read token that
            # never leaves this process.
            sampler_token = secrets.token_urlsafe(32)
            self.tokens.add(sampler_token, "inspector-sampler", Permission.READ)
        self.inspector = Inspector(
            InspectorSettings(
                listen=cfg.http_listen,
                grpc_target=target,
                auth_required=len(self.tokens) > 0,
                sampler_token=sampler_token,
                tls_cert_file=cfg.tls_cert_file,
                tls_key_file=cfg.tls_key_file,
                tls_client_ca_file=cfg.tls_client_ca_file,
                max_message_bytes=cfg.max_message_bytes,
                metrics=metrics.render,
            )
        )
        await self.inspector.start()

    def _log_security(self) -> None:
        cfg = self.config
        tls = "off" if self.credentials is None else ("mutual" if cfg.tls_client_ca_file else "on")
        if len(self.tokens):
            grants = ", ".join(f"{g.name}={g.permission.label}" for g in self.tokens.grants())
            log.info("TLS %s; bearer tokens required (%s)", tls, grants)
            if self.credentials is None and not security.is_loopback(cfg.listen):
                log.warning("tokens are sent in clear text: configure TLS (--tls-cert-file, --tls-key-file)")
        else:
            log.info("TLS %s; authentication off (no tokens configured)", tls)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish, write what is queued, close the store."""
        grace = self.config.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.tasks.stop()  # ends workers' lease streams, so they do not hold up the grace
        if self.inspector is not None:
            await self.inspector.stop()  # ends its live feeds (Watch calls) and its channel
        self.pipelines.drain()  # they answer what they read and end, not holding up the grace
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        self.compactor.stop()
        if self.sweeps is not None:
            await self.sweeps.stop()
        if self.cluster_compactor is not None:
            await self.cluster_compactor.stop()
        if self.membership is not None:
            await self.membership.stop()
        if self.tail is not None:
            await self.tail.stop()
        if self.routing is not None:
            await self.routing.forwarder.close()
        self.consumers.stop()
        await self.engine.close()
        self.store.close()
        if self.cluster is not None:
            await self.cluster.aclose()
        if self.metrics_http is not None:
            await asyncio.to_thread(self.metrics_http.close)
        if self._inspector_dir:
            shutil.rmtree(self._inspector_dir, ignore_errors=True)
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

    # A bad certificate or token file stops the start before the store is opened or created.
    security.load_tokens(config)
    security.server_credentials(config)
    server = StatekeeperServer(config, on_fatal=fatal, store=await open_store(config))
    import signal

    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # What start-up built (modules, descriptors, the loaded state) lives as long as the process:
    # moved out of the collector's generations, later collections do not walk it again.
    gc.freeze()
    await stop.wait()
    grace = min(config.shutdown_grace_s, FATAL_GRACE_S) if exit_code else config.shutdown_grace_s
    log.info("shutting down (grace %.1fs)", grace)
    if exit_code:
        # Fail-stop: every write is now refused with UNAVAILABLE. Calls the transport has
        # received but not yet handed to a handler would be cut off by the stop with CANCELLED;
        # a short pause (health NOT_SERVING) lets them run and get that UNAVAILABLE instead.
        await server.health.enter_graceful_shutdown()
        await asyncio.sleep(FATAL_DRAIN_S)
    await server.stop(grace)
    return exit_code


def _consumer_name(key: bytes) -> str:
    """The consumer a CONSUMERS key belongs to (its record: the name; an ack: name 0x00 ...)."""
    return key.partition(b"\x00")[0].decode()


def _safe_dsn(dsn: str) -> str:
    """The store address without its password, for the log."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
