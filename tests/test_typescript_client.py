"""The TypeScript client (clients/typescript) against real servers: its node:test suite
(test/client.test.ts) runs with the address of a plain server it can have restarted (SIGKILL and
start again on the same port, through a small HTTP control endpoint here) and of a mutual-TLS
server with tokens."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.server.test_security import ADMIN, Pki, pki  # noqa: F401 (the certificates fixture)
from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"
README = ROOT / "README.md"
TESTS = [
    "register type, create root, add child, get by root/type:id",
    "transition with compare-and-swap and request ids",
    "errors carry the gRPC code, the ErrorInfo reason and its metadata",
    "connect to a server that is not there: UnavailableError naming the address",
    "watch resumes after the server restarts: no gap, no duplicate",
    "watch resumes after the connection drops (client side)",
    "a durable consumer: subscribe, ack moves its position",
    "a worker completes a task with heartbeats, and fails one permanently",
    "mutual TLS and a token",
]


def npm(*args: str, timeout: float = 300) -> None:
    subprocess.run(
        ["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENT, check=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def built_client() -> Path:
    """clients/typescript installed from its lock file and compiled (tsc: typecheck and build)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required (the README's set-up installs them on a fresh machine)")
    if not (CLIENT / "node_modules" / "@connectrpc" / "connect-node").exists():
        npm("ci")
    subprocess.run(["npm", "run", "--silent", "build"], cwd=CLIENT, check=True, timeout=300)
    return CLIENT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on a fixed port, so that it comes back at the same address after a restart."""
    proc = ServerProcess(tmp_path / "data", "--listen", f"127.0.0.1:{free_port()}").start()
    yield proc
    proc.kill()


@pytest.fixture
def control(restartable_server: ServerProcess) -> Iterator[str]:
    """http://127.0.0.1:PORT: `POST /restart` SIGKILLs the server and starts it again."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/restart":
                self.send_error(404)
                return
            restartable_server.restart()
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mtls_token_server(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:  # noqa: F811
    proc = ServerProcess(
        tmp_path / "mtls",
        "--tls-cert-file",
        str(pki.server_cert),
        "--tls-key-file",
        str(pki.server_key),
        "--tls-client-ca-file",
        str(pki.ca),
        env={"STATEKEEPER_TOKENS": f"{ADMIN} admin ops"},
    ).start()
    yield proc
    proc.kill()


def test_typescript_client_against_real_servers(
    built_client: Path,
    restartable_server: ServerProcess,
    control: str,
    mtls_token_server: ServerProcess,
    pki: Pki,  # noqa: F811
) -> None:
    env = {
        **os.environ,
        "STATEKEEPER_ADDRESS": restartable_server.address,
        "STATEKEEPER_CONTROL_URL": control,
        "STATEKEEPER_TLS_ADDRESS": mtls_token_server.address,
        "STATEKEEPER_TLS_CA": str(pki.ca),
        "STATEKEEPER_TLS_CERT": str(pki.client_cert),
        "STATEKEEPER_TLS_KEY": str(pki.client_key),
        "STATEKEEPER_TLS_TOKEN": ADMIN,
    }
    result = subprocess.run(
        ["node", "--test", "--test-reporter=tap", "dist/test/client.test.js"],
        cwd=built_client,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"{report}\n--- server log ---\n{restartable_server.log()[-4000:]}"
    passed = {
        line.split(" - ", 1)[1].strip()
        for line in result.stdout.splitlines()
        if line.lstrip().startswith("ok ")
    }
    assert set(TESTS) <= passed, report
    assert "# fail 0" in result.stdout, report


def test_readme_typescript_example_typechecks_and_runs(
    built_client: Path, fresh_server: ServerProcess
) -> None:
    block = re.search(r"```ts\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    script = built_client / "dist" / "readme-example.mts"  # inside the package: imports it by name
    script.write_text(block.group(1).replace("127.0.0.1:50051", fresh_server.address))
    tsc = [
        "node_modules/.bin/tsc",
        "--noEmit",
        "--strict",
        "--target",
        "es2022",
        "--module",
        "nodenext",
        "--types",
        "node",
        "--skipLibCheck",
        str(script),
    ]
    checked = subprocess.run(tsc, cwd=built_client, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compiled = script.with_suffix(".mjs")  # it uses no TypeScript-only syntax: it runs as JavaScript
    compiled.write_text(script.read_text())
    result = subprocess.run(
        ["node", str(compiled)], cwd=built_client, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["paid", "INVALID_TRANSITION paid"]
