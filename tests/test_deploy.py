"""deploy/: what the systemd unit and the Dockerfile ask of the server is valid — their flags and
environment go through the server's own configuration parser with deploy/statekeeper.toml, and a
real server starts from that file. (Neither systemd nor a container engine runs in CI; the
README says how to check those by hand: systemd-analyze verify, docker build.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from statekeeper_server.app.config import parse
from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "statekeeper.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def dockerfile() -> tuple[list[str], dict[str, str], list[str]]:
    """Its instructions (continuations joined), ENV values, and ENTRYPOINT."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    env: dict[str, str] = {}
    for line in lines:
        if line.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(line[4:]))
    entrypoint = json.loads(
        next(line[len("ENTRYPOINT ") :] for line in lines if line.startswith("ENTRYPOINT "))
    )
    return lines, env, entrypoint


def test_the_unit_runs_serve_with_a_valid_config() -> None:
    u = unit()
    argv = shlex.split(u["ExecStart"][0])
    assert argv[0].endswith("/bin/statekeeper") and argv[1] == "serve"
    assert argv[2:] == ["--config", "/etc/statekeeper/statekeeper.toml"]
    cfg = parse(["--config", str(DEPLOY / "statekeeper.toml")], {})
    state = "/var/lib/" + u["StateDirectory"][0]
    assert cfg.data_dir.startswith(state + "/") and cfg.backup_dir.startswith(state + "/")
    assert u["WorkingDirectory"] == [state] and cfg.fsync
    # systemd waits longer than the server's shutdown grace before it kills
    assert float(u["TimeoutStopSec"][0]) > cfg.shutdown_grace_s + 5
    assert u["RestartPreventExitStatus"] == ["2"] and int(u["LimitNOFILE"][0]) >= 65536
    assert u["KillSignal"] == ["SIGTERM"] and u["User"] == ["statekeeper"]


def test_the_image_serves_on_all_interfaces_from_the_same_file() -> None:
    lines, env, entrypoint = dockerfile()
    assert lines[0] == "FROM python:3.11-slim"
    assert any('pip install ".[${EXTRAS}]"' in line for line in lines) and "ARG EXTRAS=server" in lines
    assert entrypoint == ["statekeeper", "serve"]
    for line in lines:
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    assert env["STATEKEEPER_CONFIG"] == "/etc/statekeeper/statekeeper.toml"
    environ = {**env, "STATEKEEPER_CONFIG": str(DEPLOY / "statekeeper.toml")}
    cfg = parse([], environ)
    assert cfg.listen == "0.0.0.0:50051" and cfg.metrics_listen == "0.0.0.0:9464"  # env over file
    assert cfg.data_dir == "/var/lib/statekeeper/data"  # from the file
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {int(cfg.listen.rpartition(":")[2]), int(cfg.metrics_listen.rpartition(":")[2])}


def test_a_server_starts_from_the_deploy_config(tmp_path: Path) -> None:
    proc = ServerProcess(
        tmp_path / "data",
        "--metrics-listen",
        "127.0.0.1:0",
        env={
            "STATEKEEPER_CONFIG": str(DEPLOY / "statekeeper.toml"),
            "STATEKEEPER_BACKUP_DIR": str(tmp_path / "b"),
        },
    ).start()
    try:
        assert proc.health() == 1  # SERVING
    finally:
        assert proc.terminate() == 0
