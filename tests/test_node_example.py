"""The Node.js example client runs against a real server (a change that breaks other languages
breaks the build)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ServerProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required (the README's set-up installs them on a fresh machine)")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=EXAMPLE,
            check=True,
            timeout=300,
        )
    return EXAMPLE / "node_modules"


def test_node_client_registers_creates_transitions_and_watches(
    node_modules: Path, fresh_server: ServerProcess
) -> None:
    result = subprocess.run(
        ["node", "client.js", fresh_server.address], cwd=EXAMPLE, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    steps = {line["step"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert steps["transitioned"]["state"] == "open"
    assert "transition 'lock' is not allowed from state 'open'" in steps["refused"]["details"]
    assert steps["watched"]["events"] == [
        "EVENT_KIND_NODE_CREATED:closed",
        "EVENT_KIND_NODE_CREATED:closed",
        "EVENT_KIND_NODE_TRANSITIONED:open",
        "EVENT_KIND_NODE_TRANSITIONED:closed",
        "EVENT_KIND_NODE_TRANSITIONED:locked",
    ]
    assert steps["final"] == {"step": "final", "state": "locked", "transitionCount": 3}
