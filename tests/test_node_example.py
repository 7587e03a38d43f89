"""The Node.js example (examples/node, on the TypeScript client) runs against a real server, exits
by itself, and leaves nothing behind (a change that breaks other languages breaks the build)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import statekeeper as sk
from tests.support import ServerProcess
from tests.test_typescript_client import built_client  # noqa: F401 (builds clients/typescript)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"


@pytest.fixture(scope="module")
def example(built_client: Path) -> Path:  # noqa: F811
    if not (EXAMPLE / "node_modules" / "@statekeeper" / "client").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=EXAMPLE, check=True, timeout=300
        )
    return EXAMPLE


def test_node_example_runs_exits_and_cleans_up(example: Path, fresh_server: ServerProcess) -> None:
    started = time.monotonic()
    result = subprocess.run(
        ["node", "client.js", fresh_server.address], cwd=example, capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    steps = {line["step"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert steps["transitioned"] == {"step": "transitioned", "state": "open", "transitionCount": 1}
    assert steps["refused"] == {
        "step": "refused",
        "code": "FAILED_PRECONDITION",
        "reason": "INVALID_TRANSITION",
        "currentState": "open",
    }
    assert steps["consumed"]["states"] == ["open", "closed", "locked"]
    # It exits when done: no open stream or connection keeps it alive (generous on a busy machine).
    assert elapsed < 30, f"the example took {elapsed:.1f}s"
    cleaned = steps["cleaned up"]
    with sk.SyncClient.connect(fresh_server.address) as client:
        with pytest.raises(sk.NotFoundError):
            client.get_node(cleaned["root"])
        with pytest.raises(sk.NotFoundError):
            client.get_consumer(cleaned["consumer"])
        assert client.list_consumers() == []
        assert client.get_machine_type("door").name == "door"  # types cannot be deleted: it stays
