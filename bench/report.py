"""The results: the machine, the table of medians with ratios to their ceilings, the targets,
the JSON file and the chart."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import Context, Figure, Params, Section
from bench.servers import REPO


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    memory_gb = 0.0
    try:
        with open("/proc/meminfo") as f:
            memory_gb = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for package in ("grpcio", "protobuf", "rocksdict", "msgpack"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = ""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gb": round(memory_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
        "git_commit": commit,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def ratio(ctx: Context, figure: Figure) -> float | None:
    """The figure as a fraction of its ceiling (None: no ceiling, or it was not measured)."""
    return _over(ctx, figure, figure.ceiling)


def reference_ratio(ctx: Context, figure: Figure) -> float | None:
    """The figure as a multiple of its PostgreSQL reference (None: none, or not measured)."""
    return _over(ctx, figure, figure.reference)


def _over(ctx: Context, figure: Figure, ref: str) -> float | None:
    if not ref:
        return None
    other = ctx.figure(ref)
    if other is None or not other.value:
        return None
    return figure.value / other.value


# -- targets (issue 13, and issue 6's that it does not replace), on the run's medians ------


@dataclass
class Target:
    issue: int
    text: str
    value: Callable[[Context], float | None]  # None: not measured
    bound: float
    at_most: bool = False  # value <= bound, else value >= bound
    unit: str = ""


def _fig(ref: str) -> Callable[[Context], float | None]:
    def get(ctx: Context) -> float | None:
        f = ctx.figure(ref)
        return f.value if f else None

    return get


def _ratio(
    ref: str, to: Callable[[Context, Figure], float | None] = ratio
) -> Callable[[Context], float | None]:
    def get(ctx: Context) -> float | None:
        f = ctx.figure(ref)
        return to(ctx, f) if f else None

    return get


def _vs_pg(ref: str) -> Callable[[Context], float | None]:
    return _ratio(ref, reference_ratio)


def _best_batch(sizes: tuple[int, ...]) -> Callable[[Context], float | None]:
    def get(ctx: Context) -> float | None:
        values = [f.value for n in sizes if (f := ctx.figure(f"d.batch_{n}"))]
        return max(values) if values else None

    return get


def _worst_ratio(prefixes: list[str]) -> Callable[[Context], float | None]:
    def get(ctx: Context) -> float | None:
        section = ctx.sections.get("f")
        if section is None:
            return None
        values = [
            r
            for name, f in section.figures.items()
            if any(name.startswith(x) for x in prefixes)
            and name.endswith("_big")
            and (r := ratio(ctx, f)) is not None
        ]
        return min(values) if values else None

    return get


def _worst_rss(ctx: Context) -> float | None:
    values = [f.value for n in ("f.rss_big_mb", "f.rss_big_after_load_mb") if (f := ctx.figure(n))]
    return max(values) if values else None


def target_list(p: Params) -> list[Target]:
    """The targets, with this run's parameters (the full run: 1 and 64 callers, 100 and 1,000
    per batch, 100,000 events replayed with 1,000,000 later)."""
    lo, hi = p.unary_callers[0], p.unary_callers[-1]
    batches = [
        Target(
            13,
            f"(d) ExecuteBatch of {n:,}, {p.batch_callers} in flight ≥ 1.0 x PostgreSQL (p)",
            _vs_pg(f"d.batch_{n}"),
            1.0,
            unit="x",
        )
        for n in p.batch_sizes
    ]
    return [
        *batches,
        Target(
            13,
            f"(c) SDK transition(), {hi} concurrent ≥ 1.0 x PostgreSQL CAS, {hi} conns",
            _vs_pg(f"c.sdk_{hi}"),
            1.0,
            unit="x",
        ),
        Target(
            13,
            f"(c) SDK transition(), pipeline=True, {hi} concurrent ≥ 1.0 x PostgreSQL CAS, {hi} conns",
            _vs_pg(f"c.sdk_pipe_{hi}"),
            1.0,
            unit="x",
        ),
        Target(
            13,
            f"(c) ApplyTransition (plain gRPC), {hi} callers ≥ 0.8 x bare echo (a)",
            _ratio(f"c.unary_{hi}"),
            0.8,
            unit="x",
        ),
        Target(
            13,
            f"(e) Watch replay of {p.replay_events:,} events ≥ 1.0 x PostgreSQL (p)",
            _vs_pg("e.replay"),
            1.0,
            unit="x",
        ),
        Target(
            13,
            f"(e) that replay with {p.later_events:,} later events ≥ 0.9 x itself",
            _ratio("e.replay_later"),
            0.9,
            unit="x",
        ),
        Target(
            13,
            f"(e) commit-to-delivery p99 under the {hi}-caller load ≤ 10 ms",
            _fig("e.delivery_p99_ms"),
            10,
            at_most=True,
            unit="ms",
        ),
        Target(
            13, f"(c) ApplyTransition p99 at {lo} caller ≤ 3 ms", _fig(f"c.unary_{lo}_p99_ms"), 3, True, "ms"
        ),
        Target(6, "(d) ≥ 50,000 durable transitions/s", _best_batch(p.batch_sizes), 50_000, unit="/s"),
        Target(
            6, "(e) ≥ 100,000 events/s to one subscriber (backlog)", _fig("e.backlog"), 100_000, unit="/s"
        ),
        Target(6, "(f) ready ≤ 2 s with 1M nodes", _fig("f.ready_big_s"), 2, at_most=True, unit="s"),
        Target(6, "(f) ≤ 300 MB resident with 1M nodes", _worst_rss, 300, at_most=True, unit="MB"),
        Target(6, "(f) (c) at 1M within 20 % of 10k", _worst_ratio(["unary_"]), 0.8, unit="x"),
        Target(6, "(f) (d) at 1M within 20 % of 10k", _worst_ratio(["batch_"]), 0.8, unit="x"),
    ]


def targets(ctx: Context) -> list[dict[str, Any]]:
    out = []
    for t in target_list(ctx.p):
        value = t.value(ctx)
        met = None if value is None else (value <= t.bound if t.at_most else value >= t.bound)
        out.append(
            {"issue": t.issue, "target": t.text, "value": value, "bound": t.bound, "unit": t.unit, "met": met}
        )
    return out


# -- output ------------------------------------------------------------------------------


def _num(value: float, unit: str) -> str:
    if unit in ("ms", "s", "x"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def table(ctx: Context, info: dict[str, Any], goals: list[dict[str, Any]]) -> str:
    lines = [
        f"machine: {info['nproc']} cores, {info['cpu_model']}, python {info['python']}, "
        f"grpcio {info['grpcio']}, rocksdict {info['rocksdict']}; load average at start "
        f"{info['loadavg_at_start'][0]}",
        f"medians of {ctx.p.runs} run(s) of {ctx.p.seconds:g} s"
        + (" (SMOKE: tiny counts, figures meaningless)" if ctx.smoke else ""),
        "",
        f"{'':4}{'figure':<58} {'median':>12} {'unit':<14} {'ratio':>7}  {'ceiling':<14} {'x PG':>6}  reference",
    ]
    for section in ctx.sections.values():
        lines.append(f"({section.key}) {section.title}" + (f"  [{section.client}]" if section.client else ""))
        if section.status != "ok":
            lines.append(f"    {section.status.upper()}: {section.reason}")
            continue
        for figure in section.figures.values():
            r, pg = ratio(ctx, figure), reference_ratio(ctx, figure)
            lines.append(
                f"    {figure.label:<58} {_num(figure.value, figure.unit):>12} {figure.unit:<14} "
                f"{'' if r is None else f'{r:.2f}':>7}  {figure.ceiling:<14} "
                f"{'' if pg is None else f'{pg:.2f}':>6}  {figure.reference}".rstrip()
            )
    for issue in sorted({g["issue"] for g in goals}, reverse=True):
        lines += ["", f"targets (issue {issue}):"]
        for g in goals:
            if g["issue"] != issue:
                continue
            mark = "n/a" if g["met"] is None else "MET" if g["met"] else "NOT MET"
            value = "not measured" if g["value"] is None else f"{_num(g['value'], g['unit'])} {g['unit']}"
            lines.append(f"    {mark:<8} {g['target']:<66} measured: {value}")
    return "\n".join(lines)


def write_json(path: Path, ctx: Context, info: dict[str, Any], goals: list[dict[str, Any]]) -> None:
    import json

    sections: dict[str, Any] = {}
    for key, section in ctx.sections.items():
        data = section.to_json()
        for name, figure in section.figures.items():
            r, pg = ratio(ctx, figure), reference_ratio(ctx, figure)
            if r is not None:
                data["figures"][name]["ratio"] = r
            if pg is not None:
                data["figures"][name]["reference_ratio"] = pg
        sections[key] = data
    document = {
        "machine": info,
        "smoke": ctx.smoke,
        "params": {k: v for k, v in vars(ctx.p).items()},
        "sections": sections,
        "targets": goals,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def chart(path: Path, ctx: Context, info: dict[str, Any]) -> None:
    """Throughput (log scale) and latency (p50/p99) of every rate figure, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "a": "#9e9e9e",
        "b": "#bdbdbd",
        "p": "#8c564b",
        "c": "#1f77b4",
        "d": "#2ca02c",
        "e": "#9467bd",
        "f": "#ff7f0e",
    }
    rates: list[tuple[str, Section, Figure]] = []
    latencies: list[tuple[str, Section, Figure, Figure]] = []
    for section in ctx.sections.values():
        for name, figure in section.figures.items():
            if (
                figure.unit.endswith("/s")
                and not name.endswith(("_writes", "_keys"))
                and not name.startswith("load")
            ):
                rates.append((f"({section.key}) {figure.label}", section, figure))
                p50, p99 = section.figures.get(f"{name}_p50_ms"), section.figures.get(f"{name}_p99_ms")
                if p50 is not None and p99 is not None:
                    latencies.append((f"({section.key}) {figure.label}", section, p50, p99))
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(11, 0.38 * (len(rates) + len(latencies)) + 3),
        height_ratios=[len(rates) + 1, len(latencies) + 1],
    )
    y = list(range(len(rates)))
    top.barh(y, [f.value for _, _, f in rates], color=[colors.get(s.key, "#333") for _, s, _ in rates])
    for i, (_, _, f) in enumerate(rates):
        r = ratio(ctx, f)
        pg = reference_ratio(ctx, f)
        text = (
            f" {f.value:,.0f} {f.unit}"
            + (f"  ({r:.2f}x {f.ceiling})" if r is not None else "")
            + (f"  ({pg:.2f}x PostgreSQL)" if pg is not None else "")
        )
        top.text(f.value, i, text, va="center", fontsize=7)
    top.set_yticks(y, [label for label, _, _ in rates], fontsize=7)
    top.invert_yaxis()
    top.set_xscale("log")
    if rates:
        top.set_xlim(right=max(f.value for _, _, f in rates) * 60)  # room for the ratio texts
    top.set_xlabel("per second (log scale); grey: the machine's ceilings; brown: the PostgreSQL reference")
    top.set_title(
        f"statekeeper benchmark — {info['nproc']} cores, {info['cpu_model']}, python {info['python']}, "
        f"grpcio {info['grpcio']}" + (" — SMOKE" if ctx.smoke else ""),
        fontsize=9,
    )
    y2 = list(range(len(latencies)))
    height = 0.4
    bottom.barh(
        [i - height / 2 for i in y2],
        [a.value for _, _, a, _ in latencies],
        height,
        label="p50",
        color="#1f77b4",
    )
    bottom.barh(
        [i + height / 2 for i in y2],
        [b.value for _, _, _, b in latencies],
        height,
        label="p99",
        color="#d62728",
    )
    for i, (_, _, a, b) in enumerate(latencies):
        bottom.text(b.value, i + height / 2, f" {b.value:.2f} ms", va="center", fontsize=7)
        bottom.text(a.value, i - height / 2, f" {a.value:.2f} ms", va="center", fontsize=7)
    bottom.set_yticks(y2, [label for label, _, _, _ in latencies], fontsize=7)
    bottom.invert_yaxis()
    bottom.set_xscale("log")
    bottom.set_xlabel("latency per call, ms (log scale)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
