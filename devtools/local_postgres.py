"""A throwaway PostgreSQL server in a temporary folder, for tests, the benchmark and
scripts/cluster: Debian's `postgresql` package (installed with apt-get when missing and we are
root), `initdb` and `postgres` run as an unprivileged user when we are root (both refuse root).

    with LocalPostgres() as pg:
        pg.dsn  # postgresql://statekeeper@127.0.0.1:PORT/statekeeper
        pg.restart()  # stop (fast) and start again on the same port and data
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

USER = "statekeeper"
DATABASE = "statekeeper"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, stdout=subprocess.DEVNULL
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "install Debian's package with `apt-get install postgresql`"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged user to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError as e:
        raise RuntimeError("running as root needs the unprivileged user 'nobody' to run PostgreSQL") from e
    return entry.pw_uid, entry.pw_gid


class LocalPostgres:
    def __init__(self, port: int = 0, fsync: bool = True) -> None:
        self.bin = _bin_dir()
        self.port = port or _free_port()
        self.fsync = fsync
        self._tmp = tempfile.mkdtemp(prefix="statekeeper-pg-")
        self.data = Path(self._tmp) / "data"
        self.log = Path(self._tmp) / "postgres.log"
        self._owner = _run_as()
        self.proc: subprocess.Popen[bytes] | None = None
        if self._owner is not None:
            os.chown(self._tmp, *self._owner)
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _popen(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        extra: dict[str, object] = {}
        if self._owner is not None:
            extra = {"user": self._owner[0], "group": self._owner[1], "extra_groups": []}
        return subprocess.Popen(args, cwd=self._tmp, **extra, **kwargs)  # type: ignore[call-overload, no-any-return]

    def _initdb(self) -> None:
        proc = self._popen(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.decode(errors='replace')}")

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        log = open(self.log, "ab")  # the server's output, for as long as it runs
        if self._owner is not None:
            os.chown(self.log, *self._owner)
        settings = [
            "-c", f"port={self.port}",
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self._tmp}",
            "-c", "max_connections=300",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", "shared_buffers=128MB",
        ]  # fmt: skip
        self.proc = self._popen(
            [str(self.bin / "postgres"), "-D", str(self.data), *settings], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited at start: {self.log.read_text(errors='replace')[-2000:]}"
                )
            if self._ready():
                self._create_database()
                return self
            time.sleep(0.1)
        raise RuntimeError(
            f"postgres did not start in {timeout} s: {self.log.read_text(errors='replace')[-2000:]}"
        )

    def _psql(self, database: str, sql: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True,
            timeout=30,
        )  # fmt: skip

    def _ready(self) -> bool:
        return self._psql("postgres", "SELECT 1").returncode == 0

    def _create_database(self) -> None:
        if self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").stdout.strip():
            return
        done = self._psql("postgres", f"CREATE DATABASE {DATABASE}")
        if done.returncode != 0:
            raise RuntimeError(f"creating the database failed: {done.stderr.decode(errors='replace')}")

    def sql(self, statement: str) -> str:
        """Run one statement with psql; its output."""
        done = self._psql(DATABASE, statement)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace"))
        return done.stdout.decode()

    def stop(self, mode: str = "fast") -> None:
        """mode: fast (SIGINT: roll back sessions, shut down) or immediate (SIGQUIT: like a crash)."""
        if self.proc is None:
            return
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self, mode: str = "fast", down_s: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._tmp)

    def __enter__(self) -> LocalPostgres:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
