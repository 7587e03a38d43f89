"""The benchmark's smoke mode runs in the suite so the script never rots. It checks that every
section comes out with numeric figures, not how large they are (targets are never asserted)."""

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
    assert {t["target"] for t in document["targets"]}
