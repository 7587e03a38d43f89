"""The benchmark's smoke mode runs in the suite so the script never rots. It checks that every
section comes out with numeric figures, that every statekeeper figure with a PostgreSQL
counterpart gets its ratio and every target a measured value, and that the PostgreSQL reference
ran durable, not how large the figures are (targets are never asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_bench_smoke(tmp_path: Path) -> None:
    from bench.sections import SECTIONS

    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    document = json.loads((tmp_path / "bench.json").read_text())
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra (scripts/bench)
        assert (tmp_path / "bench.png").stat().st_size > 0
    machine = document["machine"]
    assert machine["nproc"] >= 1 and machine["python"] and machine["grpcio"]
    sections = document["sections"]
    assert set(sections) == {m.KEY for m in SECTIONS}
    for module in SECTIONS:
        section = sections[module.KEY]
        if getattr(module, "PLACEHOLDER", False) and section["status"] == "not_available":
            assert section["reason"], module.KEY
            continue
        assert section["status"] == "ok", (module.KEY, section)
        assert section["figures"], module.KEY
        for name, figure in section["figures"].items():
            value = figure["value"]
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (
                module.KEY,
                name,
                figure,
            )
            if "ceiling" in figure:
                assert figure["ratio"] > 0, (module.KEY, name, figure)
            if "reference" in figure:
                assert figure["reference"].startswith("p."), (module.KEY, name, figure)
                assert figure["reference_ratio"] > 0, (module.KEY, name, figure)
    # Every row of issue 13's table: a statekeeper figure over its same-run reference.
    for ref in (
        "c.unary_1",
        "c.unary_8",
        "c.sdk_8",
        "d.batch_10",
        "d.batch_100",
        "e.replay",
        "e.replay_later",
    ):
        key, _, name = ref.partition(".")
        assert sections[key]["figures"][name]["reference_ratio"] > 0, ref
    settings = sections["p"]["extra"]["settings"]
    assert (settings["fsync"], settings["synchronous_commit"]) == ("on", "on"), settings
    targets = document["targets"]
    assert {t["issue"] for t in targets} == {6, 13}
    assert all(t["value"] is not None for t in targets if t["issue"] == 13), targets
