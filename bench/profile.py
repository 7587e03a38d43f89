"""python -m bench.profile [--out DIR] [--seconds S]: where the server's time goes under (c) and (d).

For each scenario a fresh server process (bench.probe: the real server plus a committer probe)
over the same seeded store takes the load from the load process while py-spy samples it
(`py-spy record --nonblocking --format raw`). Writes, per scenario, the collapsed stacks
(profile-<name>.txt) and a summary (profile-summary.txt): the top functions by own time and by
inclusive time, and the commit groups (commits per fsync, keys per group, synced-write time).
Needs py-spy (`.venv/bin/pip install py-spy`) and ptrace permission.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import servers, stores, workload
from bench.core import Context, Params, quantile

SCENARIOS = [("c64", "unary", 64), ("c1", "unary", 1), ("d100", "batch", 100), ("d1000", "batch", 1000)]


def collapsed_summary(path: Path, top: int = 25) -> tuple[str, int]:
    """Top functions by own samples and by inclusive samples, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"  {total} samples", "  own time:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)] if total else []
    lines.append("  inclusive time:")
    lines += (
        [f"    {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)] if total else []
    )
    return "\n".join(lines), total


def _function(frame: str) -> str:
    """'handle (statekeeper_server/entrypoints/grpc/handler.py:93)' -> 'handle (…/entrypoints/grpc/handler.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if file else name


def _bucket(commits: float) -> str:
    for top, name in ((1, "1"), (3, "2-3"), (7, "4-7"), (15, "8-15"), (31, "16-31")):
        if commits <= top:
            return name
    return "32+"


def group_summary(groups: list[list[float]], seconds: float) -> dict[str, Any]:
    if not groups:
        return {"groups": 0}
    commits = sorted(g[0] for g in groups)
    keys = sorted(g[1] for g in groups)
    writes = sorted(g[2] for g in groups)
    histogram = Counter(_bucket(c) for c in commits)
    return {
        "groups": len(groups),
        "commits": int(sum(commits)),
        "commits_per_group": {
            "mean": sum(commits) / len(commits),
            "p50": quantile(commits, 0.5),
            "p90": quantile(commits, 0.9),
            "max": commits[-1],
        },
        "commits_per_group_histogram": dict(sorted(histogram.items())),
        "keys_per_group": {"mean": sum(keys) / len(keys), "p50": quantile(keys, 0.5), "max": keys[-1]},
        "synced_write_ms": {
            "p50": 1000 * quantile(writes, 0.5),
            "p99": 1000 * quantile(writes, 0.99),
            "max": 1000 * writes[-1],
        },
        "share_of_wall_time_in_synced_write": sum(writes) / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios: " + ",".join(s[0] for s in SCENARIOS)
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="statekeeper-profile-"))
    params = Params(base_nodes=args.nodes)
    ctx = Context(params, work, False, lambda text: print(text, file=sys.stderr, flush=True))
    summary: list[str] = []
    report: dict[str, Any] = {}
    try:
        seeded = stores.seeded(ctx, "base", params.base_nodes)  # the plain server loads the store
        ctx.load.run("forget", address=seeded.address)
        ctx.drop_server("base")
        for name, kind, n in SCENARIOS:
            if args.only and name not in args.only.split(","):
                continue
            probe_file = work / f"probe-{name}.json"
            os.environ["BENCH_PROBE_OUT"] = str(probe_file)
            server = servers.statekeeper(f"probe-{name}", work / "base", work, module="bench.probe").start()
            ctx.keep_server("probe", server)
            if kind == "unary":
                requests = workload.transition_requests(params.base_nodes, params.tree_size, 4096, seed=n)
                command: dict[str, Any] = {"method": workload.APPLY_TRANSITION, "concurrency": n}
            else:
                requests = workload.batch_requests(
                    params.base_nodes, params.tree_size, n, max(4, 64_000 // n), seed=n
                )
                command = {
                    "method": workload.EXECUTE_BATCH,
                    "concurrency": params.batch_callers,
                    "ops_per_call": n,
                }
            raw = out / f"profile-{name}.txt"
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(0.5)  # let py-spy attach
            result = ctx.load.run(
                "unary",
                address=server.address,
                requests=requests,
                seconds=args.seconds,
                warmup=0.2,
                **command,
            )
            _, err = spy.communicate(timeout=60)
            ctx.load.run("forget", address=server.address)
            ctx.drop_server("probe")  # SIGTERM: the probe writes its groups
            groups = json.loads(probe_file.read_text())["groups"] if probe_file.exists() else []
            stats = group_summary(groups, args.seconds + 0.2)
            report[name] = {"load": result, "commit_groups": stats}
            text = collapsed_summary(raw)[0] if raw.exists() else f"  py-spy failed: {err.decode()}"
            summary.append(
                f"== {name}: {result.get('ops_per_s', 0):,.0f} ops/s, p50 {result['p50_ms']:.2f} ms, "
                f"p99 {result['p99_ms']:.2f} ms\n  commit groups: {json.dumps(stats)}\n{text}\n"
            )
            print(summary[-1], flush=True)
    finally:
        ctx.close()
        shutil.rmtree(work, ignore_errors=True)
    (out / "profile-summary.txt").write_text("\n".join(summary))
    (out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}/profile-summary.txt, profile.json, profile-<scenario>.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
