"""What every section shares: parameters, figures, the run context (servers, load worker)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadWorker
from bench.servers import SpawnedServer


@dataclass(frozen=True)
class Params:
    """How much to measure: the full run, or --smoke's tiny counts."""

    runs: int = 3  # each figure is the median of this many runs
    seconds: float = 3.0  # length of one run
    warmup: float = 0.5  # load before each run that is not counted
    base_nodes: int = 10_000  # the store (c) and (d) run against
    big_nodes: int = 1_000_000  # the store of (f)
    tree_size: int = 10  # nodes per tree: a root and tree_size - 1 children
    seed_ops: int = 10_000  # create operations per ExecuteBatch call when loading
    seed_callers: int = 2  # ExecuteBatch calls in flight when loading
    batch_callers: int = 4  # ExecuteBatch calls in flight in (d)
    unary_callers: tuple[int, ...] = (1, 64)
    batch_sizes: tuple[int, ...] = (100, 1000)
    raw_batch_sizes: tuple[int, ...] = (1, 100, 1000)
    data_bytes: int = 32  # node data size
    event_bytes: int = 120  # streamed message size for the stream ceiling; PostgreSQL event payload
    replay_events: int = 100_000  # events replayed in (e) and by the PostgreSQL reference
    later_events: int = 1_000_000  # events after them, for the replay on a big log
    load_ops: int = 1_000  # transitions per ExecuteBatch when loading the replay store

    @staticmethod
    def smoke() -> Params:
        return Params(
            runs=1,
            seconds=0.25,
            warmup=0.05,
            base_nodes=200,
            big_nodes=2_000,
            seed_ops=500,
            unary_callers=(1, 8),
            batch_sizes=(10, 100),
            raw_batch_sizes=(1, 10, 100),
            replay_events=1_000,
            later_events=10_000,
            load_ops=100,
        )


@dataclass
class Figure:
    """One measured quantity: the median of its runs, and what it is compared with."""

    label: str
    value: float
    unit: str
    runs: list[float] = field(default_factory=list)
    ceiling: str = ""  # "section.figure" this one is a fraction of
    reference: str = ""  # "section.figure" of the PostgreSQL reference doing the same work
    higher_is_better: bool = True
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "value": self.value, "unit": self.unit, "runs": self.runs}
        if self.ceiling:
            out["ceiling"] = self.ceiling
        if self.reference:
            out["reference"] = self.reference
        if not self.higher_is_better:
            out["higher_is_better"] = False
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Section:
    key: str
    title: str
    figures: dict[str, Figure] = field(default_factory=dict)
    status: str = "ok"  # ok | not_available | error
    reason: str = ""
    client: str = ""  # how the load process talks to the server
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, figure: Figure) -> Figure:
        self.figures[name] = figure
        return figure

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "title": self.title,
            "status": self.status,
            "figures": {k: f.to_json() for k, f in self.figures.items()},
        }
        for name in ("reason", "client"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.extra:
            out["extra"] = self.extra
        return out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Context:
    """Handed to every section's run(ctx)."""

    def __init__(self, params: Params, work_dir: Path, smoke: bool, log: Callable[[str], None]) -> None:
        self.p = params
        self.work_dir = work_dir
        self.smoke = smoke
        self.log = log
        self.sections: dict[str, Section] = {}
        self._load: LoadWorker | None = None
        self._servers: dict[str, SpawnedServer] = {}
        self.shared: dict[str, Any] = {}  # anything sections hand to later sections

    @property
    def load(self) -> LoadWorker:
        """The load process (separate from every server; started on first use)."""
        if self._load is None:
            self._load = LoadWorker()
        return self._load

    def figure(self, ref: str) -> Figure | None:
        """A figure measured earlier, by "section.figure"."""
        key, _, name = ref.partition(".")
        section = self.sections.get(key)
        return section.figures.get(name) if section else None

    def repeat(self, what: str, run: Callable[[], dict[str, float]]) -> dict[str, list[float]]:
        """Run a measurement p.runs times; the values of each run, by name."""
        out: dict[str, list[float]] = {}
        for i in range(self.p.runs):
            result = run()
            for k, v in result.items():
                out.setdefault(k, []).append(float(v))
            shown = ", ".join(f"{k}={v:,.2f}" for k, v in result.items())
            self.log(f"    {what} run {i + 1}/{self.p.runs}: {shown}")
        return out

    def server(self, name: str) -> SpawnedServer | None:
        return self._servers.get(name)

    def keep_server(self, name: str, server: SpawnedServer) -> SpawnedServer:
        old = self._servers.get(name)
        if old is not None and old is not server:
            old.stop()
        self._servers[name] = server
        return server

    def drop_server(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is not None:
            server.stop()

    def close(self) -> None:
        for name in list(self._servers):
            self.drop_server(name)
        if self._load is not None:
            self._load.close()
            self._load = None
