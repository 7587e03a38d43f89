"""`statekeeper serve` for people: a TOML config file under flags and environment variables,
--version, and a busy port refused in one line before anything is created."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statekeeper_server.app.config import parse


def test_precedence_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "statekeeper.toml"
    config.write_text(
        'data-dir = "/from/file"\n'
        "request_ttl_s = 60\n"  # underscores work too
        "fsync = false\n"
        "max-data-bytes = 1000\n"
        'log-level = "DEBUG"\n'
    )
    env = {"STATEKEEPER_REQUEST_TTL_S": "120", "STATEKEEPER_LOG_LEVEL": "WARNING"}
    cfg = parse(["--config", str(config), "--log-level", "ERROR"], env)
    assert cfg.data_dir == "/from/file"  # file over default
    assert cfg.fsync is False and cfg.limits.max_data_bytes == 1000
    assert cfg.request_ttl_s == 120  # environment over file
    assert cfg.log_level == "ERROR"  # flag over environment
    assert cfg.listen == "127.0.0.1:50051"  # default
    # the file can also come from STATEKEEPER_CONFIG
    assert parse([], {"STATEKEEPER_CONFIG": str(config)}).data_dir == "/from/file"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('data-dri = "x"\n', "unknown setting(s) in the config file: data_dri; known: listen, data-dir,"),
        ("fsync = 3\n", "fsync: expected true or false"),
        ("max-data-bytes = 'lots'\n", "max_data_bytes: invalid literal"),
        ("listen = \n", "config file"),
    ],
)
def test_bad_config_files_are_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, says: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", str(config)], {})
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_a_server_runs_from_its_config_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    config = tmp_path / "statekeeper.toml"
    config.write_text(f'listen = "127.0.0.1:0"\ndata-dir = "{tmp_path / "data"}"\nready-file = "{ready}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "statekeeper", "serve", "--log-format", "json"],
        env={"STATEKEEPER_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(ready.read_text())["pid"] == proc.pid
        assert (tmp_path / "data").is_dir()
    finally:
        proc.terminate()
        proc.wait(30)


def test_version() -> None:
    from statekeeper import __version__

    for args in (["--version"], ["serve", "--version"]):
        result = subprocess.run(
            [sys.executable, "-m", "statekeeper", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stdout == f"statekeeper {__version__}\n", result
    assert __version__ == "0.1.0"


def test_a_busy_port_is_one_line_and_exit_2_before_the_data_folder_exists(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        data = tmp_path / "data"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "statekeeper",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"statekeeper: cannot start: 127.0.0.1:{port} is already in use (another statekeeper? choose another --listen)"
    ]
    assert not data.exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--listen", "0.0.0.0:50051"],
            "--listen (advertised, as no --advertise is given) 0.0.0.0:50051 is a wildcard",
        ),
        (["--listen", "[::]:50051"], "is a wildcard"),
        (
            ["--listen", "127.0.0.1:0", "--advertise", "0.0.0.0:7000"],
            "--advertise 0.0.0.0:7000 is a wildcard",
        ),
        (["--listen", "127.0.0.1:0", "--advertise", "10.0.0.5:0"], "--advertise 10.0.0.5:0 needs the port"),
    ],
)
def test_cluster_mode_refuses_an_address_other_servers_cannot_reach(
    capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    """A server advertising a wildcard would take shards nobody could forward calls to."""
    with pytest.raises(SystemExit) as exit_:
        parse(["--store", "postgresql://u@127.0.0.1:5432/db", *flags], {})
    assert exit_.value.code == 2 and says in capsys.readouterr().err
    # The embedded store has no peers: a wildcard listen address is fine there.
    assert parse(["--listen", "0.0.0.0:50051"], {}).listen == "0.0.0.0:50051"
    # A port chosen at bind time is advertised as bound.
    assert (
        parse(["--store", "postgresql://u@127.0.0.1:5432/db", "--listen", "127.0.0.1:0"], {}).advertise == ""
    )


def test_an_unreachable_postgresql_at_start_exits_75_so_a_supervisor_starts_it_again(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "statekeeper",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                f"postgresql://statekeeper@127.0.0.1:{port}/statekeeper",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 75, result
    assert (
        f"cannot connect to PostgreSQL at postgresql://statekeeper@127.0.0.1:{port}/statekeeper"
        in result.stderr
    )
