"""The README's durable-consumer example runs as printed against a real server (the SDK example
and the savepoints example have their own tests: tests/test_readme.py, tests/server/test_savepoints.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def section_code(heading: str) -> str:
    section = README.read_text().split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, heading
    return block.group(1)


def test_readme_durable_consumer_example_runs(fresh_server: ServerProcess) -> None:
    code = section_code("## Durable consumers").replace("127.0.0.1:50051", fresh_server.address)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["node_transitioned t-1 closed 1", "True"]
