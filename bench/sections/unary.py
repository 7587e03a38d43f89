"""(c) Statekeeper unary ApplyTransition per second at 1 and 64 callers, with p50/p99 latency,
against a store of p.base_nodes nodes. Ceiling: (a) unary at the same number of callers."""

from __future__ import annotations

from bench import stores
from bench.core import Context, Section

KEY = "c"
TITLE = "statekeeper: unary ApplyTransition"


def run(ctx: Context) -> Section:
    p = ctx.p
    section = Section(
        KEY,
        TITLE,
        client="generated method path with pre-serialized requests, responses not parsed (no SDK)",
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
        )
    return section
