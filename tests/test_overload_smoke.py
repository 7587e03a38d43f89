"""scripts/overload (bench/overload.py) runs end to end at a tiny size: every scenario, its
figures written (the real figures: README, "Performance")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_overload_script_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    small = ["--streams", "5", "--calls", "40", "--events", "1500", "--roots", "100"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.overload",
            *small,
            "--seconds",
            "1",
            "--settle",
            "0.2",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {r["scenario"]: r for r in json.loads(out.read_text())}
    assert set(figures) == {"ceiling", "calm", "default", "shed"}
    for name in ("calm", "default", "shed"):
        assert figures[name]["server_alive"] and figures[name]["rss_peak_mb"] > 0
        assert figures[name]["writer"]["codes"].get("OK", 0) > 0
    assert figures["default"]["unary"]["codes"] == {"OK": figures["default"]["unary"]["waves"] * 40}
