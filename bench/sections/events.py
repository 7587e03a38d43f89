"""(e) Events delivered to one subscriber through EventService.Watch, against the store of (c)
and (d): the backlog read from revision 1 as fast as it comes (events/s; ceiling: the bare
stream of (a), whose messages each carry one message-sized payload while Watch sends up to 1,000
events per message), and live delivery while (c) runs at its highest caller count (events/s and
commit-to-delivery p50/p99, from each event's commit time_ms to its arrival, millisecond clock).

Until the generated module statekeeper.v1 has an event service with Watch, or while the server
does not implement it, the section reports "not available" (never a made-up number)."""

from __future__ import annotations

import importlib
import pkgutil

from bench import stores, workload
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
    return section
