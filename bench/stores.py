"""Statekeeper servers holding a seeded store, shared by the sections that measure them."""

from __future__ import annotations

from bench import servers, workload
from bench.core import Context, Figure, Section, median
from bench.servers import SpawnedServer


def start(ctx: Context, name: str) -> SpawnedServer:
    """Start (or restart) the statekeeper server over the store folder `name`."""
    server = servers.statekeeper(
        name,
        ctx.work_dir / name,
        ctx.work_dir,
        "--max-batch-operations",
        str(max(10_000, ctx.p.seed_ops)),
    ).start()
    return ctx.keep_server(name, server)


def seeded(ctx: Context, name: str, nodes: int) -> SpawnedServer:
    """A running server whose store holds `nodes` nodes of the workload (made on first use)."""
    server = ctx.server(name)
    if server is not None and server.alive():
        return server
    server = start(ctx, name)
    p = ctx.p
    ctx.load.run("register", address=server.address, machine_types=workload.machine_types())
    ctx.log(f"  loading {nodes:,} nodes into {name} ...")
    seed = ctx.load.run(
        "seed",
        address=server.address,
        first_tree=0,
        trees=nodes // p.tree_size,
        tree_size=p.tree_size,
        ops_per_call=p.seed_ops,
        concurrency=p.seed_callers,
        data_bytes=p.data_bytes,
    )
    ctx.log(
        f"  loaded {seed['nodes']:,} nodes in {seed['seconds']:.1f} s ({seed['nodes_per_s']:,.0f} nodes/s)"
    )
    ctx.shared[f"{name}.seed"] = seed
    return server


def restart(ctx: Context, name: str) -> SpawnedServer:
    """Stop the server cleanly (SIGTERM) and start it again; ready_seconds is the start-up."""
    old = ctx.server(name)
    if old is not None:
        ctx.load.run("forget", address=old.address)
    ctx.drop_server(name)
    return start(ctx, name)


def add_rate(
    ctx: Context,
    section: Section,
    name: str,
    label: str,
    runs: dict[str, list[float]],
    rate_key: str,
    unit: str,
    ceiling: str = "",
    latency: bool = True,
    reference: str = "",
) -> None:
    """A rate figure (median of runs), its p50/p99 latency figures, and the server's CPU per
    operation when the runs measured it (server_cpu_us)."""
    section.add(
        name,
        Figure(label, median(runs[rate_key]), unit, runs[rate_key], ceiling=ceiling, reference=reference),
    )
    if "server_cpu_us" in runs:
        cpu = runs["server_cpu_us"]
        section.add(
            f"{name}_cpu_us",
            Figure(
                f"{label}: server CPU per {unit.removesuffix('/s').removesuffix('s')}",
                median(cpu),
                "µs",
                cpu,
                higher_is_better=False,
                reference=f"{reference}_cpu_us" if reference else "",
            ),
        )
    if latency:
        for q in ("p50_ms", "p99_ms"):
            section.add(
                f"{name}_{q}",
                Figure(f"{label}: {q[:3]} latency", median(runs[q]), "ms", runs[q], higher_is_better=False),
            )


def measure_unary(ctx: Context, server: SpawnedServer, nodes: int, callers: int) -> dict[str, list[float]]:
    """ApplyTransition calls on random nodes of the store, `callers` at once."""
    p = ctx.p
    requests = [
        workload.transition_request(i, p.tree_size, to).SerializeToString()
        for i, to in workload.unary_picks(nodes, callers)
    ]
    return ctx.repeat(
        f"{server.name}: ApplyTransition x{callers}",
        lambda: _pick(
            ctx.load.run(
                "unary",
                address=server.address,
                method=workload.APPLY_TRANSITION,
                requests=requests,
                concurrency=callers,
                seconds=p.seconds,
                warmup=p.warmup,
                cpu_pid=server.pid,
            ),
            "calls_per_s",
            "p50_ms",
            "p99_ms",
            "server_cpu_us",
        ),
    )


def measure_batch(ctx: Context, server: SpawnedServer, nodes: int, ops: int) -> dict[str, list[float]]:
    """ExecuteBatch calls of `ops` transitions each, p.batch_callers at once."""
    p = ctx.p
    requests = workload.batch_requests_of(workload.batch_sets(nodes, p.tree_size, ops), p.tree_size)
    return ctx.repeat(
        f"{server.name}: ExecuteBatch of {ops} x{p.batch_callers}",
        lambda: _pick(
            ctx.load.run(
                "unary",
                address=server.address,
                method=workload.EXECUTE_BATCH,
                requests=requests,
                concurrency=p.batch_callers,
                seconds=p.seconds,
                warmup=p.warmup,
                ops_per_call=ops,
                cpu_pid=server.pid,
            ),
            "ops_per_s",
            "p50_ms",
            "p99_ms",
            "server_cpu_us",
        ),
    )


def _pick(result: dict[str, float], *names: str) -> dict[str, float]:
    return {n: result[n] for n in names}
