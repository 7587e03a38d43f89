"""The state gauges of the metrics: subscribers and their lag, each consumer's lag, task queue
depth and timers pending. `instrument(server)` wires them (only when metrics are on).

Nothing here scans the store per scrape. Pending timers and queued outbound tasks are counted
by one key scan of their index keyspaces at start, then kept up to date from the mutations of
every durable commit group: the task indexes (storage/indexes.py) put a key when a task
becomes pending and delete it when it stops being so, so +1 per put and -1 per delete is exact.
Consumer records go through the committer too, so the same listener sees consumers come and
go. Stream counts and positions are read from memory at scrape time, on the metrics thread
(plain reads and copies that the GIL makes atomic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from statekeeper_server.app import metrics
from statekeeper_server.core.committer import PendingCommit
from statekeeper_server.features.events.consumers import ConsumerManager
from statekeeper_server.storage.base import Keyspace, Store

if TYPE_CHECKING:
    from statekeeper_server.app.server import StatekeeperServer


class StateGauges:
    """Counts of pending timers (Keyspace.TIMERS) and queued outbound tasks
    (Keyspace.OUTBOUND_QUEUE: leased ones included, since a lease lives in memory and the task
    stays queued until it is settled), and one consumer-lag series per durable consumer."""

    def __init__(self, store: Store | None, consumers: ConsumerManager) -> None:
        """store None (cluster mode): the counts cover this server's commits since it started."""
        self.timers = sum(1 for _ in store.scan(Keyspace.TIMERS)) if store is not None else 0
        self.outbound = sum(1 for _ in store.scan(Keyspace.OUTBOUND_QUEUE)) if store is not None else 0
        self._consumers = consumers
        self._consumer_names: set[str] = set()
        for name in consumers.names():
            self._add_consumer(name)

    def _add_consumer(self, name: str) -> None:
        self._consumer_names.add(name)
        metrics.set_consumer_lag(name, lambda: float(self._consumers.lag(name)))

    def on_durable(self, group: list[PendingCommit]) -> None:
        """A durable listener: apply the group's index and consumer mutations."""
        timers, queue, consumers = Keyspace.TIMERS, Keyspace.OUTBOUND_QUEUE, Keyspace.CONSUMERS
        t = q = 0
        for commit in group:
            for keyspace, key, value in commit.mutations:
                if keyspace is timers:
                    t += 1 if value is not None else -1
                elif keyspace is queue:
                    q += 1 if value is not None else -1
                elif keyspace is consumers and b"\x00" not in key:  # not an ack key
                    name = key.decode()
                    if value is None:
                        self._consumer_names.discard(name)
                        metrics.remove_consumer(name)
                    elif name not in self._consumer_names:
                        self._add_consumer(name)
        # Never below zero, whatever a repair outside the commit path did (a restart recounts).
        self.timers = max(0, self.timers + t)
        self.outbound = max(0, self.outbound + q)


def instrument(server: StatekeeperServer) -> None:
    """Wire a server's event streams, consumers and task indexes into the gauges. Call before
    the engine starts, so no commit falls between the counting scan and the listener."""
    gauges = StateGauges(server.store if server.cluster is None else None, server.consumers)
    server.engine.durable_listeners.append(gauges.on_durable)
    events = server.event_servicer
    outbound = server.tasks.outbound
    metrics.set_subscribers(events.subscriber_count)
    metrics.set_subscriber_max_lag(events.max_subscriber_lag)
    metrics.set_timers_pending(lambda: gauges.timers)
    # Waiting to be leased: queued minus those a worker holds now.
    metrics.set_task_queue_depth(lambda: max(0, gauges.outbound - len(outbound.leases)))
