"""(b) The storage ceiling: raw rocksdict synced WriteBatch writes (in the load process, no
server), each batch holding `units` transitions' worth of statekeeper's records."""

from __future__ import annotations

from bench.core import Context, Figure, Section, median

KEY = "b"
TITLE = "ceiling: raw rocksdict synced WriteBatch"


def run(ctx: Context) -> Section:
    p = ctx.p
    section = Section(
        KEY,
        TITLE,
        client="rocksdict directly, store options, sync=True; per transition a node record and an event "
        "record, plus one revision key per batch; batch building timed",
    )
    for units in p.raw_batch_sizes:
        counter = iter(range(1_000_000))
        runs = ctx.repeat(
            f"raw WriteBatch of {units}",
            lambda units=units, counter=counter: ctx.load.run(  # type: ignore[misc]
                "rocks",
                path=str(ctx.work_dir / f"raw-{units}-{next(counter)}"),
                units=units,
                seconds=p.seconds,
                warmup=p.warmup,
                key_space=p.base_nodes,
                data_bytes=p.data_bytes,
            ),
        )
        section.add(
            f"batch_{units}",
            Figure(
                f"raw synced WriteBatch of {units} transition(s)",
                median(runs["transitions_per_s"]),
                "transitions/s",
                runs["transitions_per_s"],
            ),
        )
        section.add(
            f"batch_{units}_writes",
            Figure(
                f"raw synced WriteBatch of {units}: writes",
                median(runs["writes_per_s"]),
                "writes/s",
                runs["writes_per_s"],
            ),
        )
        section.add(
            f"batch_{units}_keys",
            Figure(
                f"raw synced WriteBatch of {units}: keys",
                median(runs["keys_per_s"]),
                "keys/s",
                runs["keys_per_s"],
            ),
        )
    return section
