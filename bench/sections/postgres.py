"""(p) The PostgreSQL reference: a throwaway PostgreSQL (devtools/local_postgres.py, its own
processes, data in a temporary folder) doing the same logical work as statekeeper's sections,
driven by asyncpg from the load process (bench/pg_load.py), with the same record sizes and the
same number of concurrent callers:

  CAS writes      one statement per durable write (the node's compare-and-swap UPDATE plus the
                  event INSERT), at 1 and 64 connections              ↔ (c) ApplyTransition
  CAS batches     100 and 1,000 such writes in one statement (unnest arrays), 4 in flight
                                                                      ↔ (d) ExecuteBatch
  replay          100,000 events read in revision order, pages of 1,000; then the same read with
                  1,000,000 later events in the table                 ↔ (e) Watch replay

The nodes and the picks (which node, which state) are the very ones (c) and (d) use. PostgreSQL
runs with its defaults for durability (fsync on, synchronous_commit on: a write is answered once
its WAL is flushed, like statekeeper's). Statekeeper figures name these as their `reference`."""

from __future__ import annotations

from bench import workload
from bench.core import Context, Figure, Section, median
from bench.stores import add_rate

KEY = "p"
TITLE = "reference: PostgreSQL doing the same work (asyncpg)"


def run(ctx: Context) -> Section:
    from devtools.local_postgres import LocalPostgres

    p = ctx.p
    section = Section(KEY, TITLE)
    pg = LocalPostgres()  # fsync on; synchronous_commit is left at its default (on)
    try:
        pg.start()
        ids = [workload.node_text(i, p.tree_size) for i in range(p.base_nodes)]
        data = [workload.data(i, p.data_bytes).value for i in range(p.base_nodes)]
        settings = ctx.load.run("pg_setup", dsn=pg.dsn, ids=ids, data=data)["settings"]
        section.client = (
            f"asyncpg in the load process; PostgreSQL {settings['server_version'].split()[0]}, "
            f"fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']} "
            f"(durable at commit, like statekeeper), wal_sync_method={settings['wal_sync_method']}, "
            f"shared_buffers={settings['shared_buffers']}, otherwise defaults"
        )
        section.extra = {"settings": settings}
        assert pg.proc is not None
        pid = pg.proc.pid  # the postmaster: server CPU is its process tree's
        for callers in p.unary_callers:
            _cas(ctx, section, pg.dsn, pid, ids, callers)
        for ops in p.batch_sizes:
            _batches(ctx, section, pg.dsn, pid, ids, ops)
        _replay(ctx, section, pg.dsn)
    finally:
        pg.close()
    return section


def _cas(ctx: Context, section: Section, dsn: str, pid: int, ids: list[str], callers: int) -> None:
    p = ctx.p
    picks = [(ids[i], to) for i, to in workload.unary_picks(p.base_nodes, callers)]
    retries: list[int] = []

    def one() -> dict[str, float]:
        result = ctx.load.run(
            "pg_cas",
            dsn=dsn,
            picks=picks,
            concurrency=callers,
            seconds=p.seconds,
            warmup=p.warmup,
            payload_bytes=p.event_bytes,
            cpu_pid=pid,
        )
        retries.append(result["retries"])
        return {k: result[k] for k in ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_us")}

    runs = ctx.repeat(f"PostgreSQL CAS write x{callers}", one)
    add_rate(
        ctx,
        section,
        f"cas_{callers}",
        f"CAS write (UPDATE + INSERT, 1 statement), {callers} conn.",
        runs,
        "calls_per_s",
        "writes/s",
    )
    section.figures[f"cas_{callers}"].note = f"CAS failures re-read and retried, per run: {retries}"


def _batches(ctx: Context, section: Section, dsn: str, pid: int, ids: list[str], ops: int) -> None:
    p = ctx.p
    batches = []
    for batch in workload.batch_sets(p.base_nodes, p.tree_size, ops):
        ordered = sorted((ids[i], to) for i, to in batch)  # one lock order for all batches
        batches.append(([i for i, _ in ordered], [to for _, to in ordered]))
    notes: list[str] = []

    def one() -> dict[str, float]:
        result = ctx.load.run(
            "pg_cas_batch",
            dsn=dsn,
            batches=batches,
            concurrency=p.batch_callers,
            seconds=p.seconds,
            warmup=p.warmup,
            payload_bytes=p.event_bytes,
            cpu_pid=pid,
        )
        notes.append(f"{result['retries']} writes retried, {result['deadlocks']} deadlocks")
        return {k: result[k] for k in ("ops_per_s", "p50_ms", "p99_ms", "server_cpu_us")}

    runs = ctx.repeat(f"PostgreSQL CAS batch of {ops} x{p.batch_callers}", one)
    add_rate(
        ctx,
        section,
        f"batch_{ops}",
        f"{ops:,} CAS writes per statement, {p.batch_callers} in flight",
        runs,
        "ops_per_s",
        "writes/s",
    )
    section.figures[f"batch_{ops}"].note = "per run: " + "; ".join(notes)


def _replay(ctx: Context, section: Section, dsn: str) -> None:
    p = ctx.p
    trees = max(1, p.base_nodes // p.tree_size)

    def fill(after: int, events: int) -> None:
        took = ctx.load.run(
            "pg_fill_replay",
            dsn=dsn,
            after=after,
            events=events,
            tree_size=p.tree_size,
            trees=trees,
            payload_bytes=p.event_bytes,
        )["seconds"]
        ctx.log(f"    PostgreSQL: {events:,} events appended after revision {after:,} in {took:.1f} s")

    def measure(what: str) -> list[float]:
        runs = ctx.repeat(
            what,
            lambda: {
                "events_per_s": ctx.load.run(
                    "pg_replay", dsn=dsn, first=1, events=p.replay_events, page=1000
                )["events_per_s"]
            },
        )
        return runs["events_per_s"]

    fill(0, p.replay_events)
    alone = measure(f"PostgreSQL replay of {p.replay_events:,} events")
    section.add(
        "replay",
        Figure(
            f"replay of {p.replay_events:,} events in revision order",
            median(alone),
            "events/s",
            alone,
        ),
    )
    fill(p.replay_events, p.later_events)
    later = measure(f"PostgreSQL replay of {p.replay_events:,} events, {p.later_events:,} later")
    section.add(
        "replay_later",
        Figure(
            f"the same with {p.later_events:,} later events in the table",
            median(later),
            "events/s",
            later,
            ceiling="p.replay",
        ),
    )
