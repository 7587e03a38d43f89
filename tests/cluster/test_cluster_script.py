"""scripts/cluster N: starts a throwaway PostgreSQL and N servers, prints their addresses, and
Ctrl-C stops everything and removes its temporary folder."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import statekeeper as sk
from tests.conftest import ORDER

ROOT = Path(__file__).resolve().parents[2]


def _free_base_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base < 60000:
            return base
    raise RuntimeError("no port")


def test_scripts_cluster_starts_n_servers_that_take_any_call_and_ctrl_c_stops_all() -> None:
    base = _free_base_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.cluster", "2", "--base-port", str(base), "--shards", "4"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops" in line or not line:
            break
    text = "".join(lines)
    addresses = re.findall(r"server \d: (127\.0\.0\.1:\d+)", text)
    folder = re.search(r"logs and ready files in (\S+) ", text)
    try:
        assert addresses == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], text
        with sk.SyncClient.connect(addresses[0]) as a, sk.SyncClient.connect(addresses[1]) as b:
            a.register_machine_type(ORDER)
            for i in range(8):
                b.create_root("order", f"c-{i}")
            assert len(a.list_nodes("order")) == 8
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert folder is not None and not Path(folder.group(1)).exists()
