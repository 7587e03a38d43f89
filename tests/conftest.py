from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import statekeeper as sk
from tests.support import ServerProcess

ORDER = sk.MachineType(
    name="order",
    version=1,
    states=["new", "paid", "shipped", "cancelled"],
    initial_state="new",
    terminal_states=["shipped", "cancelled"],
    transitions=[
        sk.Transition("pay", ["new"], "paid", tasks=[sk.Outbound("charge", "payments", b"{}")]),
        sk.Transition("ship", ["paid"], "shipped"),
        sk.Transition("cancel", ["new", "paid"], "cancelled"),
        sk.Transition("touch", ["new", "paid"], "paid"),
    ],
)
ITEM = sk.MachineType(
    name="item",
    version=1,
    states=["open", "packed"],
    initial_state="open",
    transitions=[sk.Transition("pack", ["open"], "packed")],
)
PART = sk.MachineType(name="part", version=1, states=["ok"], initial_state="ok")

_ids = itertools.count()


@pytest.fixture
def uid() -> str:
    """A fresh id per use, unique across the shared server."""
    return f"t{os.getpid()}-{next(_ids)}"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server shared by the service tests (each test uses its own root ids)."""
    proc = ServerProcess(Path(tmp_path_factory.mktemp("shared")) / "data").start()
    with sk.SyncClient.connect(proc.address) as client:
        for mt in (ORDER, ITEM, PART):
            client.register_machine_type(mt)
    yield proc
    proc.terminate()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[sk.SyncClient]:
    with sk.SyncClient.connect(server.address) as c:
        yield c


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that restart or kill it."""
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.kill()
