"""(c) Statekeeper unary ApplyTransition per second at 1 and 64 callers, with p50/p99 latency,
against a store of p.base_nodes nodes, from a plain gRPC client (pre-serialized requests).
Ceiling: (a) unary at the same number of callers. Reference: (p) PostgreSQL's CAS write at as
many connections. Then the same at the most callers through the SDK: that many concurrent
`await client.transition(...)` on one statekeeper.Client in one process, as a user's service
would call it (SDK costs included, on the load side), and the same with connect(pipeline=True):
the calls over the client's one ExecuteStream."""

from __future__ import annotations

import functools

from bench import stores, workload
from bench.core import Context, Section

KEY = "c"
TITLE = "statekeeper: unary ApplyTransition"


def run(ctx: Context) -> Section:
    p = ctx.p
    section = Section(
        KEY,
        TITLE,
        client="generated method path with pre-serialized requests, responses not parsed (no SDK); "
        "sdk_*: statekeeper.Client (sdk_pipe_*: with pipeline=True)",
    )
    server = stores.seeded(ctx, "base", p.base_nodes)
    for callers in p.unary_callers:
        runs = stores.measure_unary(ctx, server, p.base_nodes, callers)
        stores.add_rate(
            ctx,
            section,
            f"unary_{callers}",
            f"ApplyTransition, {callers} callers, {p.base_nodes:,} nodes",
            runs,
            "calls_per_s",
            "transitions/s",
            ceiling=f"a.unary_{callers}",
            reference=f"p.cas_{callers}",
        )
    callers = p.unary_callers[-1]
    picks = workload.unary_picks(p.base_nodes, callers)

    def sdk(pipeline: bool) -> dict[str, float]:
        result = ctx.load.run(
            "sdk_transitions",
            address=server.address,
            picks=picks,
            tree_size=p.tree_size,
            concurrency=callers,
            seconds=p.seconds,
            warmup=p.warmup,
            pipeline=pipeline,
            cpu_pid=server.pid,
        )
        return {k: v for k, v in result.items() if k in ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_us")}

    for name, label, pipeline in (
        (f"sdk_{callers}", f"SDK transition(), {callers} concurrent, one client", False),
        (f"sdk_pipe_{callers}", f"SDK transition(), {callers} concurrent, one client, pipeline=True", True),
    ):
        suffix = " pipelined" if pipeline else ""
        runs = ctx.repeat(f"SDK transition() x{callers}{suffix}", functools.partial(sdk, pipeline))
        stores.add_rate(
            ctx,
            section,
            name,
            label,
            runs,
            "calls_per_s",
            "transitions/s",
            ceiling=f"c.unary_{callers}",
            reference=f"p.cas_{callers}",
        )
    return section
