"""Overload: with more calls in flight than --max-concurrent-rpcs, the server refuses the excess
at once with RESOURCE_EXHAUSTED (naming the limit) instead of queueing them without bound, and
is healthy and fully usable afterwards — round after round, so the bound does not drift."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import statekeeper as sk
from tests.conftest import ORDER
from tests.support import ServerProcess

LIMIT = 8
CALLS = 64


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Failpoint rpc.delay: every call takes 0.1 s, as a slow call would, so calls pile up.
    data = Path(tmp_path_factory.mktemp("overload")) / "data"
    proc = ServerProcess(data, "--max-concurrent-rpcs", str(LIMIT), "--failpoints", "rpc.delay=0.1").start()
    yield proc
    assert proc.terminate() == 0


def test_excess_calls_are_shed_with_resource_exhausted(small_server: ServerProcess) -> None:
    async def one(client: sk.Client, root_id: str) -> str:
        try:
            await client.create_root("order", root_id)
            return "OK"
        except sk.ResourceExhaustedError as e:
            assert (e.reason, e.metadata["limit"]) == ("TOO_MANY_CONCURRENT_RPCS", "max_concurrent_rpcs")
            return "RESOURCE_EXHAUSTED"

    async def scenario() -> list[Counter[str]]:
        async with await sk.Client.connect(small_server.address) as client:
            await client.register_machine_type(ORDER)
            rounds = []
            for r in range(3):
                ids = [f"load-{r}-{i}" for i in range(CALLS)]
                outcomes = await asyncio.gather(*(one(client, i) for i in ids))
                rounds.append(Counter(outcomes))
                # What was accepted is there; what was refused was not applied (checked LIMIT
                # calls at a time, so the checks themselves are not shed).
                for start in range(0, CALLS, LIMIT):
                    chunk = list(zip(ids, outcomes, strict=True))[start : start + LIMIT]
                    found = await asyncio.gather(
                        *(client.get_node(root_id) for root_id, _ in chunk), return_exceptions=True
                    )
                    for (_, outcome), node in zip(chunk, found, strict=True):
                        if outcome == "OK":
                            assert isinstance(node, sk.Node) and node.state == "new"
                        else:
                            assert isinstance(node, sk.NotFoundError), node
            await client.create_root("order", "after-the-storm")
            return rounds

    rounds = asyncio.run(scenario())
    for counts in rounds:
        # All arrive together: at most LIMIT run, the rest are refused at once. (A few more may
        # succeed when early calls finish while the burst is still arriving.) The same in every
        # round: refusals do not loosen the bound.
        assert set(counts) <= {"OK", "RESOURCE_EXHAUSTED"}, rounds
        assert LIMIT <= counts["OK"] <= 2 * LIMIT, rounds
    assert small_server.health() == 1  # SERVING
