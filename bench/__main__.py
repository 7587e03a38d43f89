"""python -m bench [--smoke] [--out DIR] [--sections a,b,...]: run the benchmark (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import report
from bench.core import Context, Params, Section
from bench.sections import SECTIONS


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark statekeeper against this machine's own ceilings and PostgreSQL doing the "
        "same work; medians, ratios, targets, JSON, chart.",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts: every section in a few seconds")
    parser.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    parser.add_argument(
        "--sections",
        default="",
        help="comma-separated section keys to run (default: all: "
        + ",".join(str(m.KEY) for m in SECTIONS)
        + "); ratios need their ceiling's and reference's sections (p: PostgreSQL)",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (median taken)")
    parser.add_argument("--seconds", type=float, help="length of one run")
    parser.add_argument("--base-nodes", type=int, help="store size for (c) and (d)")
    parser.add_argument("--big-nodes", type=int, help="store size for (f)")
    parser.add_argument("--batch-callers", type=int, help="ExecuteBatch calls in flight in (d)")
    parser.add_argument(
        "--work-dir", help="folder for stores and logs (default: a temporary folder, removed)"
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no gRPC chatter from the load process
    params = Params.smoke() if args.smoke else Params()
    overrides = {
        "runs": args.runs,
        "seconds": args.seconds,
        "base_nodes": args.base_nodes,
        "big_nodes": args.big_nodes,
        "batch_callers": args.batch_callers,
    }
    params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    modules = [m for m in SECTIONS if not wanted or m.KEY in wanted]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="statekeeper-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    info = report.machine()
    ctx = Context(params, work, args.smoke, log)
    failed = False
    started = time.perf_counter()
    try:
        for module in modules:
            log(f"({module.KEY}) {module.TITLE}")
            t0 = time.perf_counter()
            try:
                section: Section = module.run(ctx)
            except Exception:
                failed = True
                section = Section(module.KEY, module.TITLE, status="error", reason=traceback.format_exc())
                log(section.reason)
            ctx.sections[section.key] = section
            log(f"  ({time.perf_counter() - t0:.1f} s)")
    finally:
        ctx.close()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    goals = report.targets(ctx)
    print(report.table(ctx, info, goals))
    report.write_json(out / "bench.json", ctx, info, goals)
    written = [str(out / "bench.json")]
    if not args.no_chart:
        try:
            report.chart(out / "bench.png", ctx, info)
            written.append(str(out / "bench.png"))
        except ImportError:
            log("no chart: matplotlib is missing (scripts/bench installs the bench extra)")
    print(f"\nwrote {', '.join(written)} in {info['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
