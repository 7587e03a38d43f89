"""Servers under test, each its own process: the statekeeper server and the bare echo server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """The environment of a child process: this interpreter's, with the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


class SpawnedServer:
    """A server process that writes a ready file ({"address", "pid"}) once it serves."""

    def __init__(self, name: str, argv: list[str], work_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.ready_file = work_dir / f"{name}.ready"
        self.log_path = work_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.pid = 0
        self.ready_seconds = 0.0

    def start(self, timeout: float = 120.0) -> SpawnedServer:
        """Start and wait for the ready file; ready_seconds is process start → ready file."""
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                [*self.argv, "--ready-file", str(self.ready_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=REPO,
            )
        deadline = started + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.002)
        self.ready_seconds = time.perf_counter() - started
        info = json.loads(self.ready_file.read_text())
        self.address, self.pid = info["address"], int(info["pid"])
        return self

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def memory_kb(self) -> dict[str, int]:
        """VmRSS (resident now) and VmHWM (peak resident) from /proc/<pid>/status, in KiB."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out[name] = int(value.split()[0])
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a clean shutdown: queued commits written, store closed), SIGKILL after timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def statekeeper(name: str, data_dir: Path, work_dir: Path, *extra: str, module: str = "") -> SpawnedServer:
    """The real server: `python -m statekeeper_server` on 127.0.0.1:0, RocksDB in data_dir, fsync on.
    module replaces statekeeper_server (the profiling probe wraps the same server)."""
    argv = [
        sys.executable,
        "-m",
        module or "statekeeper_server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--fsync",
        "true",
        "--log-format",
        "json",
        "--log-level",
        "WARNING",
        *extra,
    ]
    return SpawnedServer(name, argv, work_dir)


def echo(work_dir: Path) -> SpawnedServer:
    """The bare grpc.aio server of the ceiling (bench/echo.py)."""
    return SpawnedServer("echo", [sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"], work_dir)
