"""(t) Tasks end to end: timers fired per second, and outbound tasks completed per second by an
SDK Worker (concurrency 64) each applying a transition, beside the unary ApplyTransition rate of
(c) at its most callers (the ratio column). A fresh server of its own; the load is bench/tasks_load.py
in its own process, through the SDK (so SDK costs are part of the figures, as for a user)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench import servers
from bench.core import Context, Figure, Section, median

KEY = "t"
TITLE = "statekeeper: timers and outbound tasks"


def run(ctx: Context) -> Section:
    p = ctx.p
    timers, outbound = (2_000, 500) if ctx.smoke else (20_000, 5_000)
    section = Section(KEY, TITLE, client="SDK (statekeeper.Client, statekeeper.Worker) in its own process")
    unary = f"c.unary_{max(p.unary_callers)}"  # the plain unary-call rate of this run
    server = ctx.keep_server(
        "tasks", servers.statekeeper("tasks", ctx.work_dir / "tasks", ctx.work_dir).start()
    )
    results: dict[str, list[float]] = {"timers_per_s": [], "outbound_per_s": []}
    try:
        for i in range(p.runs):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.tasks_load",
                    "--address",
                    server.address,
                    "--timers",
                    str(timers),
                    "--outbound",
                    str(outbound),
                    "--concurrency",
                    "64",
                ],
                capture_output=True,
                text=True,
                env=servers.child_env(),
                cwd=servers.REPO,
                timeout=600,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"bench.tasks_load failed:\n{out.stderr[-3000:]}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            for k in results:
                results[k].append(float(figures[k]))
            ctx.log(
                f"    tasks run {i + 1}/{p.runs}: {figures['timers_per_s']:,.0f} timers/s, "
                f"{figures['outbound_per_s']:,.0f} outbound/s"
            )
    finally:
        ctx.drop_server("tasks")
    section.add(
        "timers",
        Figure(
            f"timers fired, {timers:,} due at once, each applying a transition",
            median(results["timers_per_s"]),
            "timers/s",
            results["timers_per_s"],
            ceiling=unary,
            note="ratio: to unary ApplyTransition at the most callers, measured in the same run",
        ),
    )
    section.add(
        "outbound",
        Figure(
            f"outbound tasks completed by an SDK Worker (64 concurrent), {outbound:,} tasks, each applying a transition",
            median(results["outbound_per_s"]),
            "tasks/s",
            results["outbound_per_s"],
            ceiling=unary,
            note="one lease-stream message and one CompleteTask call per task",
        ),
    )
    return section
