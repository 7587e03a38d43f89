"""Prometheus metrics, served over HTTP at /metrics when `--metrics-listen` is set (off by default).

All metrics live in this module's own registry (REGISTRY), with the process and platform
collectors. `instrument(server)` wires a StatekeeperServer in: RPCs through its `observers`,
commit groups through `engine.committer.write_listeners`, the revision as a callback gauge.

Metrics (all prefixed `statekeeper_`):

| name | type | labels | meaning |
| --- | --- | --- | --- |
| rpc_handled_total | counter | service, method, code | finished calls |
| rpc_duration_seconds | histogram | service, method, code | call latency (streams: their life) |
| commit_latency_seconds | histogram | | a commit handed to the committer → durable (queue + write + fsync) |
| commit_write_seconds | histogram | | one commit group's RocksDB write with fsync (the fsync latency) |
| commit_group_commits | histogram | | commits per group (the group-commit batch size) |
| commit_group_mutations | histogram | | key writes per group's WriteBatch |
| revision | gauge | | the durable store-wide revision |
| subscribers | gauge | | event subscribers connected |
| subscriber_max_lag_revisions | gauge | | the largest lag of any subscriber (revision minus its position) |
| consumer_lag_revisions | gauge | consumer | lag of each named durable consumer |
| task_queue_depth | gauge | | outbound tasks waiting to be leased |
| timers_pending | gauge | | timers not yet fired |

For other parts of the server (call them from anywhere; each takes a number or a function that
returns one, called at scrape time):

    from statekeeper_server.app import metrics
    metrics.set_subscribers(len(self._subscribers))
    metrics.set_subscriber_max_lag(lambda: max_lag())
    metrics.set_consumer_lag("billing", 12); metrics.remove_consumer("billing")
    metrics.set_task_queue_depth(n); metrics.set_timers_pending(lambda: index.timers_pending())

They cost nothing when metrics are off except a dictionary write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

if TYPE_CHECKING:
    from statekeeper_server.app.server import StatekeeperServer
    from statekeeper_server.core.committer import Committer, Intent

log = logging.getLogger("statekeeper.metrics")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

RPC_HANDLED = Counter(
    "statekeeper_rpc_handled",
    "RPCs finished, by service, method and status code",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_DURATION = Histogram(
    "statekeeper_rpc_duration_seconds",
    "RPC latency in seconds, by service, method and status code",
    ["service", "method", "code"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_LATENCY = Histogram(
    "statekeeper_commit_latency_seconds",
    "seconds from a commit being handed to the committer until it is durable",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_WRITE = Histogram(
    "statekeeper_commit_write_seconds",
    "seconds one commit group's WriteBatch took to write and fsync",
    buckets=_WRITE_BUCKETS,
    registry=REGISTRY,
)
COMMIT_GROUP_COMMITS = Histogram(
    "statekeeper_commit_group_commits",
    "commits written together in one group (group-commit batch size)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
    registry=REGISTRY,
)
COMMIT_GROUP_MUTATIONS = Histogram(
    "statekeeper_commit_group_mutations",
    "key writes in one commit group's WriteBatch",
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144),
    registry=REGISTRY,
)

Source = float | int | Callable[[], float]
_sources: dict[str, Callable[[], float]] = {}


def _read(name: str) -> float:
    source = _sources.get(name)
    if source is None:
        return 0.0
    try:
        return float(source())
    except Exception:  # a broken callback must not break the scrape
        return math.nan


def _gauge(name: str, doc: str) -> Gauge:
    gauge = Gauge(name, doc, registry=REGISTRY)
    gauge.set_function(lambda: _read(name))
    return gauge


def _set(name: str, value: Source) -> None:
    if callable(value):
        _sources[name] = value
    else:
        number = float(value)
        _sources[name] = lambda: number


REVISION = _gauge("statekeeper_revision", "the durable store-wide revision")
SUBSCRIBERS = _gauge("statekeeper_subscribers", "event subscribers connected")
SUBSCRIBER_MAX_LAG = _gauge(
    "statekeeper_subscriber_max_lag_revisions",
    "the largest lag of any subscriber, in revisions (durable revision minus its position)",
)
TASK_QUEUE_DEPTH = _gauge("statekeeper_task_queue_depth", "outbound tasks waiting to be leased")
TIMERS_PENDING = _gauge("statekeeper_timers_pending", "timers not yet fired")
CONSUMER_LAG = Gauge(
    "statekeeper_consumer_lag_revisions",
    "lag of each named durable consumer, in revisions",
    ["consumer"],
    registry=REGISTRY,
)


# -- the API for other parts of the server --------------------------------------------------------


def set_revision(value: Source) -> None:
    """The durable revision (instrument() binds it to the engine)."""
    _set("statekeeper_revision", value)


def set_subscribers(value: Source) -> None:
    """How many event subscribers are connected."""
    _set("statekeeper_subscribers", value)


def set_subscriber_max_lag(value: Source) -> None:
    """The largest lag of any subscriber, in revisions."""
    _set("statekeeper_subscriber_max_lag_revisions", value)


def set_consumer_lag(consumer: str, lag: Source) -> None:
    """The lag of one named durable consumer, in revisions."""
    number = 0.0 if callable(lag) else float(lag)
    source: Callable[[], float] = lag if callable(lag) else (lambda: number)

    def read() -> float:
        try:
            return float(source())
        except Exception:  # a broken callback must not break the scrape
            return math.nan

    CONSUMER_LAG.labels(consumer=consumer).set_function(read)


def remove_consumer(consumer: str) -> None:
    """Forget a durable consumer's lag series (it was deleted)."""
    with contextlib.suppress(KeyError):
        CONSUMER_LAG.remove(consumer)


def set_task_queue_depth(value: Source) -> None:
    """How many outbound tasks wait to be leased."""
    _set("statekeeper_task_queue_depth", value)


def set_timers_pending(value: Source) -> None:
    """How many timers have not fired yet."""
    _set("statekeeper_timers_pending", value)


# -- hooks -----------------------------------------------------------------------------------------

_rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """A CallObserver: method is the full name, `/package.Service/Method`."""
    children = _rpc_children.get((method, code))
    if children is None:
        service, _, name = method.lstrip("/").partition("/")
        children = (
            RPC_HANDLED.labels(service=service, method=name, code=code),
            RPC_DURATION.labels(service=service, method=name, code=code),
        )
        _rpc_children[(method, code)] = children
    children[0].inc()
    children[1].observe(seconds)


def observe_commit_group(commits: int, mutations: int, write_seconds: float) -> None:
    """A committer write listener."""
    COMMIT_GROUP_COMMITS.observe(commits)
    COMMIT_GROUP_MUTATIONS.observe(mutations)
    COMMIT_WRITE.observe(write_seconds)


def _time_commits(committer: Committer) -> None:
    """Measure enqueue → durable per commit by wrapping the committer's enqueue.

    The engine has no hook for this yet; if it grows one (an enqueue timestamp on PendingCommit
    or a listener), replace this wrapper with it."""
    enqueue = getattr(committer, "enqueue", None)
    if enqueue is None:
        return

    def timed_enqueue(intent: Intent) -> None:
        enqueue(intent)
        started = time.perf_counter()

        def done(future: Any) -> None:
            if not future.cancelled() and future.exception() is None:
                COMMIT_LATENCY.observe(time.perf_counter() - started)

        intent.future.add_done_callback(done)

    setattr(committer, "enqueue", timed_enqueue)  # noqa: B010  (mypy: assigning to a method)


def instrument(server: StatekeeperServer) -> None:
    """Wire a server's RPCs, commits and revision into the metrics."""
    engine = server.engine
    server.observers.append(observe_rpc)
    engine.committer.write_listeners.append(observe_commit_group)
    _time_commits(engine.committer)
    set_revision(lambda: engine.durable_revision)


def render() -> bytes:
    """The metrics in the Prometheus text format (what /metrics serves)."""
    return generate_latest(REGISTRY)


class MetricsHTTP:
    """The /metrics endpoint: a small HTTP server on a daemon thread."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            port_number = int(port)
        except ValueError:
            raise OSError(f"--metrics-listen must be host:port, got {listen!r}") from None
        self._server: WSGIServer
        self._server, self._thread = start_http_server(port_number, addr=host, registry=REGISTRY)
        bound = self._server.server_address
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{bound[1]}"
        log.info("metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
