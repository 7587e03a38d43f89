"""(s) Savepoints: entity saves per second through the batch call (SaveEntityStates, 1,000 saves
per call, p.batch_callers calls in flight) into a run of 10,000 entities with 64-byte states.
Every save fills one savepoint; every 10 calls every entity has saved, so a savepoint of 10,000
entities completes and is persisted (keep 3) in the commit of the last save. Then the time to
load that run's latest savepoint (10,000 entities) through the SDK, as a user would. A fresh
server of its own; saves are pre-serialized requests sent from the load process, as in (d)."""

from __future__ import annotations

import math
import time

import statekeeper as sk
from bench import servers
from bench.core import Context, Figure, Section, median
from statekeeper.v1 import savepoint_pb2

KEY = "s"
TITLE = "statekeeper: savepoints"

SAVE = "/statekeeper.v1.SavepointService/SaveEntityStates"
SCHEDULE_MS = 1_000
STATE = b"s" * 64
MAX_RATE = 100_000  # saves/s: requests are made for this rate, so none is sent twice


def _requests(run_id: str, entities: int, batch: int, rounds: int) -> list[bytes]:
    """Round r saves every entity at r * SCHEDULE_MS, `batch` entities per request."""
    out = []
    for r in range(1, rounds + 1):
        for lo in range(0, entities, batch):
            saves = [
                savepoint_pb2.EntitySave(
                    run_id=run_id, entity_id=f"e{i:06d}", timestamp_ms=r * SCHEDULE_MS, state=STATE
                )
                for i in range(lo, min(lo + batch, entities))
            ]
            out.append(savepoint_pb2.SaveEntityStatesRequest(saves=saves).SerializeToString())
    return out


def run(ctx: Context) -> Section:
    p = ctx.p
    entities, batch = (200, 100) if ctx.smoke else (10_000, 1_000)
    section = Section(
        KEY,
        TITLE,
        client=f"saves: generated method path with pre-serialized requests, {p.batch_callers} calls in flight; "
        "load: the SDK (SyncClient.load_latest_savepoint)",
    )
    server = ctx.keep_server(
        "savepoints", servers.statekeeper("savepoints", ctx.work_dir / "savepoints", ctx.work_dir).start()
    )
    rounds = math.ceil(MAX_RATE * (p.seconds + p.warmup) / entities) + 1
    runs: dict[str, list[float]] = {"ops_per_s": [], "p50_ms": [], "p99_ms": []}
    loads: list[float] = []
    try:
        with sk.SyncClient.connect(server.address) as client:
            for i in range(p.runs):
                # A fresh run each time (a save is only work once); again if a hiccup left no call
                # inside the (in --smoke very short) window.
                for _ in range(3):
                    run_id = f"bench-{i}-{time.time_ns()}"
                    client.create_run(
                        run_id,
                        {f"e{k:06d}": STATE for k in range(entities)},
                        start_ms=0,
                        schedule_ms=SCHEDULE_MS,
                    )
                    requests = _requests(run_id, entities, batch, rounds)
                    result = ctx.load.run(
                        "unary",
                        address=server.address,
                        method=SAVE,
                        requests=requests,
                        concurrency=p.batch_callers,
                        seconds=p.seconds,
                        warmup=p.warmup,
                        ops_per_call=batch,
                    )
                    if result["calls"] >= len(requests):
                        raise RuntimeError("savepoints: the requests ran out; raise MAX_RATE")
                    if result["p50_ms"] > 0:
                        break
                for k in runs:
                    runs[k].append(float(result[k]))
                started = time.perf_counter()
                loaded = client.load_latest_savepoint(run_id)
                loads.append(time.perf_counter() - started)
                if len(loaded.states) != entities:
                    raise RuntimeError(f"loaded {len(loaded.states)} entities, not {entities}")
                ctx.log(
                    f"    savepoints run {i + 1}/{p.runs}: {result['ops_per_s']:,.0f} saves/s, "
                    f"load of {entities:,} entities {loads[-1] * 1000:.0f} ms (savepoint {loaded.timestamp_ms})"
                )
    finally:
        ctx.drop_server("savepoints")
    label = f"entity saves through SaveEntityStates, {batch:,} per call, run of {entities:,} entities"
    section.add("saves", Figure(label, median(runs["ops_per_s"]), "saves/s", runs["ops_per_s"]))
    for q in ("p50_ms", "p99_ms"):
        section.add(
            f"saves_{q}",
            Figure(
                f"{label}: {q[:3]} latency per call", median(runs[q]), "ms", runs[q], higher_is_better=False
            ),
        )
    section.add(
        "load",
        Figure(
            f"load the latest savepoint of a run of {entities:,} entities (SDK)",
            median(loads),
            "s",
            loads,
            higher_is_better=False,
        ),
    )
    return section
