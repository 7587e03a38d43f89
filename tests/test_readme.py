"""The README's SDK example runs as printed against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_sdk_example_runs(fresh_server: ServerProcess) -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    code = block.group(1).replace("127.0.0.1:50051", fresh_server.address)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "paid"
    assert lines[1].startswith("INVALID_TRANSITION {") and "'current_state': 'paid'" in lines[1]
