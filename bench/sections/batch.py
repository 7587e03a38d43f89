"""(d) Transitions per second through ExecuteBatch, 100 and 1,000 transitions per call on nodes
of distinct trees, p.batch_callers calls in flight, against p.base_nodes nodes.
Ceiling: (b) raw synced WriteBatches of the same number of transitions. Reference: (p) PostgreSQL
applying the same batches as single statements of CAS writes."""

from __future__ import annotations

from bench import stores
from bench.core import Context, Section

KEY = "d"
TITLE = "statekeeper: ExecuteBatch transitions"


def run(ctx: Context) -> Section:
    p = ctx.p
    section = Section(
        KEY,
        TITLE,
        client=f"generated method path with pre-serialized requests, {p.batch_callers} calls in flight (no SDK)",
    )
    server = stores.seeded(ctx, "base", p.base_nodes)
    for ops in p.batch_sizes:
        runs = stores.measure_batch(ctx, server, p.base_nodes, ops)
        stores.add_rate(
            ctx,
            section,
            f"batch_{ops}",
            f"ExecuteBatch of {ops}, {p.base_nodes:,} nodes",
            runs,
            "ops_per_s",
            "transitions/s",
            ceiling=f"b.batch_{ops}",
            reference=f"p.batch_{ops}",
        )
    return section
