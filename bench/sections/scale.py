"""(f) Scale: start-up time (process start → ready file) and resident memory of a server holding
p.big_nodes nodes (1,000,000 in the full run), and (c) and (d) against it, each as a ratio to
its figure at p.base_nodes. The store is loaded through the real server with ExecuteBatch calls
of p.seed_ops create operations, then the server is stopped cleanly and started again."""

from __future__ import annotations

from bench import stores
from bench.core import Context, Figure, Section, median

KEY = "f"
TITLE = "scale: start-up, memory, and (c)/(d) on a big store"


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _startup(ctx: Context, section: Section, name: str, nodes: int) -> None:
    """Restart p.runs times: start-up seconds; resident memory right after the first."""
    ready: list[float] = []
    rss: list[float] = []
    for i in range(ctx.p.runs):
        server = stores.restart(ctx, name)
        ready.append(server.ready_seconds)
        rss.append(server.memory_kb()["VmRSS"] / 1024)
        ctx.log(
            f"    {name}: start-up run {i + 1}/{ctx.p.runs}: {ready[-1]:.2f} s, {rss[-1]:.0f} MB resident"
        )
    label = _count(nodes)
    section.add(
        f"ready_{name}_s",
        Figure(f"start-up to ready, {label} nodes", median(ready), "s", ready, higher_is_better=False),
    )
    section.add(
        f"rss_{name}_mb",
        Figure(f"resident memory after start, {label} nodes", median(rss), "MB", rss, higher_is_better=False),
    )


def run(ctx: Context) -> Section:
    p = ctx.p
    big = _count(p.big_nodes)
    section = Section(KEY, TITLE, client="as (c) and (d); memory is VmRSS/VmHWM of the server process")
    # The base store (c and d ran on it): start-up and memory, for comparison.
    stores.seeded(ctx, "base", p.base_nodes)
    _startup(ctx, section, "base", p.base_nodes)
    ctx.drop_server("base")

    stores.seeded(ctx, "big", p.big_nodes)
    seed = ctx.shared["big.seed"]
    section.add(
        "load_big",
        Figure(
            f"loading {big} nodes (ExecuteBatch of {p.seed_ops} creates, {p.seed_callers} in flight)",
            seed["nodes_per_s"],
            "nodes/s",
            [seed["nodes_per_s"]],
        ),
    )
    _startup(ctx, section, "big", p.big_nodes)
    server = ctx.server("big")
    assert server is not None
    for callers in p.unary_callers:
        runs = stores.measure_unary(ctx, server, p.big_nodes, callers)
        stores.add_rate(
            ctx,
            section,
            f"unary_{callers}_big",
            f"ApplyTransition, {callers} callers, {big} nodes",
            runs,
            "calls_per_s",
            "transitions/s",
            ceiling=f"c.unary_{callers}",
        )
    for ops in p.batch_sizes:
        runs = stores.measure_batch(ctx, server, p.big_nodes, ops)
        stores.add_rate(
            ctx,
            section,
            f"batch_{ops}_big",
            f"ExecuteBatch of {ops}, {big} nodes",
            runs,
            "ops_per_s",
            "transitions/s",
            ceiling=f"d.batch_{ops}",
        )
    memory = server.memory_kb()
    section.add(
        "rss_big_after_load_mb",
        Figure(
            f"resident memory after the runs, {big} nodes",
            memory["VmRSS"] / 1024,
            "MB",
            higher_is_better=False,
        ),
    )
    section.add(
        "peak_rss_big_mb",
        Figure(
            f"peak resident memory (VmHWM), {big} nodes", memory["VmHWM"] / 1024, "MB", higher_is_better=False
        ),
    )
    section.extra = {"base_nodes": p.base_nodes, "big_nodes": p.big_nodes, "tree_size": p.tree_size}
    ctx.drop_server("big")
    return section
