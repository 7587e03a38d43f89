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
    if not figure.ceiling:
        return None
    ceiling = ctx.figure(figure.ceiling)
    if ceiling is None or not ceiling.value:
        return None
    return figure.value / ceiling.value


# -- targets (issue 6), evaluated on the run's medians ------------------------------------


@dataclass
class Target:
    text: str
    value: Callable[[Context, Params], float | None]  # None: not measured
    bound: float
    at_most: bool = False  # value <= bound, else value >= bound
    unit: str = ""


def _fig(ref: str) -> Callable[[Context, Params], float | None]:
    def get(ctx: Context, p: Params) -> float | None:
        f = ctx.figure(ref.format(hi=p.unary_callers[-1], lo=p.unary_callers[0]))
        return f.value if f else None

    return get


def _ratio(ref: str) -> Callable[[Context, Params], float | None]:
    def get(ctx: Context, p: Params) -> float | None:
        f = ctx.figure(ref.format(hi=p.unary_callers[-1], lo=p.unary_callers[0]))
        return ratio(ctx, f) if f else None

    return get


def _best_batch(ctx: Context, p: Params) -> float | None:
    values = [f.value for n in p.batch_sizes if (f := ctx.figure(f"d.batch_{n}"))]
    return max(values) if values else None


def _worst_ratio(prefixes: list[str]) -> Callable[[Context, Params], float | None]:
    def get(ctx: Context, p: Params) -> float | None:
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


def _worst_rss(ctx: Context, p: Params) -> float | None:
    values = [f.value for n in ("f.rss_big_mb", "f.rss_big_after_load_mb") if (f := ctx.figure(n))]
    return max(values) if values else None


TARGETS = [
    Target("(c) at 64 callers ≥ 0.8 x bare unary (a)", _ratio("c.unary_{hi}"), 0.8, unit="x"),
    Target("(c) p99 at 1 caller ≤ 10 ms", _fig("c.unary_{lo}_p99_ms"), 10, at_most=True, unit="ms"),
    Target("(d) ≥ 50,000 durable transitions/s", _best_batch, 50_000, unit="/s"),
    Target("(e) ≥ 100,000 events/s to one subscriber", _fig("e.backlog"), 100_000, unit="/s"),
    Target("(e) commit-to-delivery p99 ≤ 20 ms", _fig("e.delivery_p99_ms"), 20, at_most=True, unit="ms"),
    Target("(f) ready ≤ 2 s with 1M nodes", _fig("f.ready_big_s"), 2, at_most=True, unit="s"),
    Target("(f) ≤ 300 MB resident with 1M nodes", _worst_rss, 300, at_most=True, unit="MB"),
    Target("(f) (c) at 1M within 20 % of 10k", _worst_ratio(["unary_"]), 0.8, unit="x"),
    Target("(f) (d) at 1M within 20 % of 10k", _worst_ratio(["batch_"]), 0.8, unit="x"),
]


def targets(ctx: Context) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        value = t.value(ctx, ctx.p)
        met = None if value is None else (value <= t.bound if t.at_most else value >= t.bound)
        out.append({"target": t.text, "value": value, "bound": t.bound, "unit": t.unit, "met": met})
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
        f"{'':4}{'figure':<58} {'median':>12} {'unit':<14} {'ratio':>7}  ceiling",
    ]
    for section in ctx.sections.values():
        lines.append(f"({section.key}) {section.title}" + (f"  [{section.client}]" if section.client else ""))
        if section.status != "ok":
            lines.append(f"    {section.status.upper()}: {section.reason}")
            continue
        for figure in section.figures.values():
            r = ratio(ctx, figure)
            lines.append(
                f"    {figure.label:<58} {_num(figure.value, figure.unit):>12} {figure.unit:<14} "
                f"{'' if r is None else f'{r:.2f}':>7}  {figure.ceiling}"
            )
    lines += ["", "targets:"]
    for g in goals:
        mark = "n/a" if g["met"] is None else "MET" if g["met"] else "NOT MET"
        value = "not measured" if g["value"] is None else f"{_num(g['value'], g['unit'])} {g['unit']}"
        lines.append(f"    {mark:<8} {g['target']:<44} measured: {value}")
    return "\n".join(lines)


def write_json(path: Path, ctx: Context, info: dict[str, Any], goals: list[dict[str, Any]]) -> None:
    import json

    sections: dict[str, Any] = {}
    for key, section in ctx.sections.items():
        data = section.to_json()
        for name, figure in section.figures.items():
            r = ratio(ctx, figure)
            if r is not None:
                data["figures"][name]["ratio"] = r
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

    colors = {"a": "#9e9e9e", "b": "#bdbdbd", "c": "#1f77b4", "d": "#2ca02c", "e": "#9467bd", "f": "#ff7f0e"}
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
        text = f" {f.value:,.0f} {f.unit}" + (f"  ({r:.2f}x {f.ceiling})" if r is not None else "")
        top.text(f.value, i, text, va="center", fontsize=7)
    top.set_yticks(y, [label for label, _, _ in rates], fontsize=7)
    top.invert_yaxis()
    top.set_xscale("log")
    top.set_xlabel("per second (log scale); grey: the machine's ceilings")
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
