"""Fixtures of the inspector tests: real servers with --http-listen over RocksDB in temp folders,
filled by the SDK (seed.py); one without tokens, one with read, write and admin tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import statekeeper as sk
from tests.inspector.seed import Seeded, seed
from tests.support import ServerProcess

READ, WRITE, ADMIN = "insp-read-" + "r" * 24, "insp-write-" + "w" * 24, "insp-admin-" + "a" * 24
TOKENS = f"{READ} read reader;{WRITE} write writer;{ADMIN} admin operator"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "inspector"


@dataclass
class Inspected:
    proc: ServerProcess
    grpc: str  # host:port of the gRPC API
    url: str  # http://host:port of the inspector
    seeded: Seeded
    token: str = ""  # a token that may do everything ("" without auth)

    def client(self) -> sk.SyncClient:
        return sk.SyncClient.connect(self.grpc, token=self.token or None)


def start(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[ServerProcess, dict[str, str]]:
    proc = ServerProcess(folder / "data", "--http-listen", "127.0.0.1:0", *args, env=env).start()
    ready = json.loads((folder / "data.ready").read_text())
    return proc, ready


@pytest.fixture(scope="session")
def inspected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inspected]:
    """A server without tokens, with one of everything in it."""
    proc, ready = start(tmp_path_factory.mktemp("inspector"))
    with sk.SyncClient.connect(proc.address) as client:
        seeded = seed(client)
    yield Inspected(proc, proc.address, "http://" + ready["http_address"], seeded)
    proc.terminate()


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inspected]:
    """A server with tokens (READ, WRITE, ADMIN)."""
    proc, ready = start(tmp_path_factory.mktemp("inspector-auth"), env={"STATEKEEPER_TOKENS": TOKENS})
    with sk.SyncClient.connect(proc.address, token=ADMIN) as client:
        seeded = seed(client, "a")
    yield Inspected(proc, proc.address, "http://" + ready["http_address"], seeded, ADMIN)
    proc.terminate()
