"""Cluster tests: a throwaway PostgreSQL (Debian's package, run as an unprivileged user) for the
session, a fresh database per test, and statekeeper servers as real processes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.local_postgres import LocalPostgres
from tests.support import ServerProcess

LEASE_S = "2.5"  # short for fast failovers, long enough for a loaded 2-core machine
SHARDS = "8"


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        yield pg


@pytest.fixture
def dsn(postgres: LocalPostgres) -> str:
    name = "t" + uuid.uuid4().hex[:12]
    postgres.sql(f"CREATE DATABASE {name}")
    return postgres.dsn.rsplit("/", 1)[0] + "/" + name


StartCluster = Callable[..., list[ServerProcess]]


@pytest.fixture
def start_cluster(tmp_path: Path, dsn: str) -> Iterator[StartCluster]:
    """start_cluster(n, *extra_args): n servers on one store, each started after the previous
    one is serving; all killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(n: int, *extra: str) -> list[ServerProcess]:
        out = []
        for _ in range(n):
            i = len(started)
            proc = ServerProcess(
                tmp_path / f"server{i}", "--store", dsn, "--lease-s", LEASE_S, "--shards", SHARDS, *extra
            ).start()
            started.append(proc)
            out.append(proc)
        return out

    yield start
    for proc in started:
        proc.kill()
