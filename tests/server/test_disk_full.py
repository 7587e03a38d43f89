"""A real full disk (issue 11, item 2): the data folder on a small tmpfs, filled through the API.

The server must stop by itself (fail-stop, exit code non-zero) with a clear CRITICAL log line
saying the disk is full and no Python traceback, and once there is space again a restart holds
every acknowledged write; the write whose outcome was unknown is settled by its request_id.

Needs to mount a tmpfs (root, or CAP_SYS_ADMIN). Without that the test is skipped: a loop-
mounted image needs the same privilege, and `ulimit -f` raises SIGXFSZ/EFBIG, not ENOSPC, so it
would not exercise the same path.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import statekeeper as sk
from tests.conftest import ORDER
from tests.support import ServerProcess


def _mount(path: Path, size: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount(disk, "16m")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); see the module docstring")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_stops_the_server_clearly_and_loses_no_acknowledged_write(small_disk: Path) -> None:
    proc = ServerProcess(small_disk)  # its log and ready file are outside the small disk
    proc.start()
    acknowledged: dict[str, bytes] = {}
    unknown: list[tuple[str, bytes]] = []
    try:
        with sk.SyncClient.connect(proc.address) as c:
            c.register_machine_type(ORDER)
            for i in range(200):  # 300 kB each: the 16 MB disk is full long before the end
                data = bytes([i % 251]) * 300_000
                try:
                    c.create_root("order", f"n{i}", data, request_id=f"fill-{i}")
                except sk.UnavailableError as e:
                    assert e.reason in ("COMMIT_OUTCOME_UNKNOWN", "COMMIT_FAILED", "STORE_FAILED"), e
                    if e.reason == "COMMIT_OUTCOME_UNKNOWN":
                        unknown.append((f"n{i}", data))
                    break
                acknowledged[f"n{i}"] = data
        assert 5 < len(acknowledged) < 200
        assert proc.proc is not None
        code = proc.proc.wait(30)
    finally:
        proc.kill()
    assert code != 0
    records = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    critical = [r for r in records if r.get("level") == "critical"]
    assert critical and "the disk is full" in str(critical[0]["msg"]), proc.log()
    assert "Traceback" not in proc.log()

    # Space again: every acknowledged write is there, the unknown one settles by its request_id.
    remount = subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], capture_output=True)
    assert remount.returncode == 0, remount.stderr
    proc.start()
    try:
        with sk.SyncClient.connect(proc.address) as c:
            for root, data in acknowledged.items():
                assert c.get_node(root).data == data, root
            for root, data in unknown:
                i = root[1:]
                try:
                    c.create_root("order", root, data, request_id=f"fill-{i}")
                except sk.AlreadyExistsError:
                    pytest.fail(f"{root} exists but its request_id did not replay the first outcome")
                assert c.get_node(root).data == data
            c.create_root("order", "after", b"space again")  # and it serves writes again
        assert proc.terminate() == 0
    finally:
        proc.kill()
