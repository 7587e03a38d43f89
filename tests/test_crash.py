"""The crash test's short form: a real server SIGKILLed under load, verified after each restart
(the full run, 20 kills, is `scripts/crash_test.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_crash_test_short_form() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "crash_test.py"),
            "--cycles",
            "3",
            "--seconds",
            "0.6",
            "--workers",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crash test passed" in result.stdout and "kills=3" in result.stdout
