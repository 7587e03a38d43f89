"""(e) Events delivered to one subscriber through EventService.Watch, against the store of (c)
and (d): the backlog read from revision 1 as fast as it comes (events/s; ceiling: the bare
stream of (a), whose messages each carry one message-sized payload while Watch sends up to 1,000
events per message), and live delivery while (c) runs at its highest caller count (events/s and
commit-to-delivery p50/p99, from each event's commit time_ms to its arrival, millisecond clock).
Then the replay: on a store of its own, Watch from revision 1 reads the first p.replay_events
events (100,000: the seeded nodes' creations, then transitions in ExecuteBatch commits of
p.load_ops), and reads them again once p.later_events more (1,000,000) lie beyond them: ratio to
itself, and to PostgreSQL's replay of as many events (reference, section p). Both replays read
the store: the server is restarted before each, so its in-memory window of the newest events
(which held most of the 100,000 when they were the newest, and none of them once a million came
after) serves neither, and the ratio shows what the history beyond the range costs, not the
window. The replay served by the window is a row of its own.

Until the generated module statekeeper.v1 has an event service with Watch, or while the server
does not implement it, the section reports "not available" (never a made-up number)."""

from __future__ import annotations

import importlib
import math
import pkgutil

from bench import servers, stores, workload
from bench.core import Context, Figure, Section, median

KEY = "e"
TITLE = "statekeeper: events to one and ten subscribers (Watch)"
PLACEHOLDER = True  # may report not_available


def watch_method() -> str:
    """The Watch method path of an event service in statekeeper.v1 ("" when there is none yet)."""
    import statekeeper.v1 as v1

    for info in pkgutil.iter_modules(v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"statekeeper.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            if any(m.name == "Watch" for m in service.methods):
                return f"/{service.full_name}/Watch"
    return ""


def run(ctx: Context) -> Section:
    p = ctx.p
    section = Section(KEY, TITLE, client="generated Watch method path, responses parsed (no SDK)")
    method = watch_method()
    if not method:
        section.status = "not_available"
        section.reason = "not available: statekeeper.v1 has no event service with a Watch RPC yet"
        return section
    from statekeeper.v1 import event_pb2

    server = stores.seeded(ctx, "base", p.base_nodes)
    try:
        ctx.load.run(
            "call", address=server.address, method=method.replace("Watch", "ListConsumers"), request=b""
        )
    except RuntimeError as e:
        if "UNIMPLEMENTED" in str(e):
            section.status = "not_available"
            section.reason = f"not available: the server does not implement {method} yet"
            return section
    backlog = event_pb2.WatchRequest(start_revision=1, progress_interval_ms=100).SerializeToString()
    runs = ctx.repeat(
        "Watch backlog",
        lambda: {
            k: v
            for k, v in ctx.load.run(
                "watch",
                address=server.address,
                method=method,
                request=backlog,
                seconds=p.seconds,
                warmup=0.0,
                latency=False,
            ).items()
            if k in ("events_per_s", "events")
        },
    )
    section.add(
        "backlog",
        Figure(
            "Watch from revision 1 (backlog), one subscriber",
            median(runs["events_per_s"]),
            "events/s",
            runs["events_per_s"],
            ceiling="a.stream",
            note=f"median backlog read: {median(runs['events']):,.0f} events",
        ),
    )
    many = ctx.repeat(
        "Watch backlog x10",
        lambda: ctx.load.run(
            "watch_many",
            address=server.address,
            method=method,
            request=backlog,
            seconds=p.seconds,
            subscribers=10,
        ),
    )
    section.add(
        "backlog_10",
        Figure(
            "Watch from revision 1 (backlog), ten subscribers in total",
            median(many["events_per_s"]),
            "events/s",
            many["events_per_s"],
            ceiling="a.stream",
            note="ten streams parsed in one load process: bounded by the load process's CPU too",
        ),
    )
    callers = p.unary_callers[-1]
    requests = workload.transition_requests(p.base_nodes, p.tree_size, max(2048, callers * 64), seed=7)
    live = event_pb2.WatchRequest(start_revision=0).SerializeToString()

    def one_run() -> dict[str, float]:
        result = ctx.load.run(
            "watch",
            address=server.address,
            method=method,
            request=live,
            seconds=p.seconds,
            warmup=p.warmup,
            latency=True,
            unary={
                "address": server.address,
                "method": workload.APPLY_TRANSITION,
                "requests": requests,
                "concurrency": callers,
                "seconds": p.seconds,
                "warmup": p.warmup,
            },
        )
        return {
            "events_per_s": result["events_per_s"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "load_per_s": result["load"]["calls_per_s"],
        }

    runs = ctx.repeat(f"Watch live during ApplyTransition x{callers}", one_run)
    section.add(
        "live",
        Figure(
            f"Watch live while (c) runs at {callers} callers",
            median(runs["events_per_s"]),
            "events/s",
            runs["events_per_s"],
        ),
    )
    section.add(
        "live_load",
        Figure(
            f"(c) at {callers} callers while watched",
            median(runs["load_per_s"]),
            "transitions/s",
            runs["load_per_s"],
            ceiling=f"c.unary_{callers}",
        ),
    )
    for q in ("p50", "p99"):
        section.add(
            f"delivery_{q}_ms",
            Figure(
                f"commit-to-delivery {q}",
                median(runs[f"{q}_ms"]),
                "ms",
                runs[f"{q}_ms"],
                higher_is_better=False,
            ),
        )
    _replay(ctx, section, method)
    return section


def _append_transitions(ctx: Context, server: servers.SpawnedServer, events: int) -> None:
    """About `events` transition events, in ExecuteBatch calls of p.load_ops (cycled requests)."""
    p = ctx.p
    requests = workload.batch_requests_of(
        workload.batch_sets(p.base_nodes, p.tree_size, p.load_ops), p.tree_size
    )
    calls = math.ceil(events / p.load_ops)
    result = ctx.load.run(
        "pipeline",
        address=server.address,
        method=workload.EXECUTE_BATCH,
        requests=[requests[k % len(requests)] for k in range(calls)],
        concurrency=p.batch_callers,
        ops_per_call=p.load_ops,
    )
    ctx.log(f"    replay store: {calls * p.load_ops:,} transitions appended in {result['seconds']:.1f} s")


def _replay(ctx: Context, section: Section, method: str) -> None:
    from statekeeper.v1 import event_pb2

    p = ctx.p
    request = event_pb2.WatchRequest(start_revision=1, progress_interval_ms=100).SerializeToString()
    server = stores.start(ctx, "replay")
    try:
        ctx.load.run("register", address=server.address, machine_types=workload.machine_types())
        ctx.load.run(
            "seed",
            address=server.address,
            first_tree=0,
            trees=p.base_nodes // p.tree_size,
            tree_size=p.tree_size,
            ops_per_call=p.seed_ops,
            concurrency=p.seed_callers,
            data_bytes=p.data_bytes,
        )
        _append_transitions(ctx, server, p.replay_events - p.base_nodes)

        def measure(what: str) -> list[float]:
            runs = ctx.repeat(
                what,
                lambda: {
                    k: v
                    for k, v in ctx.load.run(
                        "watch",
                        address=server.address,
                        method=method,
                        request=request,
                        seconds=max(p.seconds, 60.0),
                        warmup=0.0,
                        latency=False,
                        limit=p.replay_events,
                    ).items()
                    if k in ("events_per_s", "events")
                },
            )
            if min(runs["events"]) < p.replay_events:
                raise RuntimeError(
                    f"the replay read {min(runs['events']):,.0f} events, not {p.replay_events:,}"
                )
            return runs["events_per_s"]

        window = measure(f"Watch replay of {p.replay_events:,} events, the newest (window)")
        section.add(
            "replay_window",
            Figure(
                f"Watch replay of {p.replay_events:,} events, the newest (from the window)",
                median(window),
                "events/s",
                window,
                reference="p.replay",
            ),
        )
        server = stores.restart(ctx, "replay")
        alone = measure(f"Watch replay of {p.replay_events:,} events")
        section.add(
            "replay",
            Figure(
                f"Watch replay of {p.replay_events:,} events, one subscriber, from the store",
                median(alone),
                "events/s",
                alone,
                reference="p.replay",
            ),
        )
        _append_transitions(ctx, server, p.later_events)
        server = stores.restart(ctx, "replay")
        later = measure(f"Watch replay of {p.replay_events:,} events, {p.later_events:,} later")
        section.add(
            "replay_later",
            Figure(
                f"the same with {p.later_events:,} later events in the store",
                median(later),
                "events/s",
                later,
                ceiling="e.replay",
                reference="p.replay_later",
            ),
        )
    finally:
        ctx.load.run("forget", address=server.address)
        ctx.drop_server("replay")
