"""Concurrency through the real server: many clients, batches on overlapping trees.

Each batch moves nodes of two trees through a transition with expected_transition_count on
every node. Batches must never interleave: each one commits entirely under one revision, or
fails with ABORTED and changes nothing — so every compare-and-swap count is consumed exactly
once, pairs stay in step, and each revision of the event log holds exactly one batch.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import statekeeper as sk
from tests.support import ServerProcess

PAIR = sk.MachineType(
    name="cc_pair",
    version=1,
    states=["s"],
    initial_state="s",
    transitions=[sk.Transition("bump", ["s"], "s")],
)
CLIENTS = 4
NODES = 6


async def _setup(c: sk.Client, uid: str) -> tuple[str, str, list[sk.Ref]]:
    await c.register_machine_type(PAIR)
    a, b = f"{uid}-a", f"{uid}-b"
    batch = sk.Batch().create_root("cc_pair", a).create_root("cc_pair", b)
    for root in (a, b):
        for i in range(NODES):
            batch.add_child(root, "cc_pair", f"n{i}")
    await c.execute(batch)
    refs = [sk.Ref(root, (("cc_pair", f"n{i}"),)) for root in (a, b) for i in range(NODES)]
    return a, b, refs


async def _events_by_revision(
    c: sk.Client, start: int, end: int, roots: set[str]
) -> dict[int, list[tuple[sk.Ref, int]]]:
    """The node_transitioned events of the given roots from start to end, by revision."""
    out: dict[int, list[tuple[sk.Ref, int]]] = defaultdict(list)
    async for ev in c.watch(start_revision=start, kinds=["node_transitioned"], progress=True):
        if ev.kind == "progress":
            if ev.revision >= end:
                break
            continue
        if ev.ref is not None and ev.ref.root_id in roots:
            out[ev.revision].append((ev.ref, ev.transition_count))
        if ev.revision > end:
            break
    return out


def test_concurrent_pair_batches_with_one_expected_count_one_winner_each(
    server: ServerProcess, uid: str
) -> None:
    """Per round, several batches race for each pair (node i of tree a, node i of tree b) with
    the same expected count on both: exactly one wins per pair, the rest are ABORTED, and the
    winner moved both nodes under one revision."""
    rounds, contenders = 4, 6

    async def main() -> None:
        clients = [await sk.Client.connect(server.address) for _ in range(CLIENTS)]
        try:
            a, b, _ = await _setup(clients[0], uid)

            async def attempt(k: int, i: int, expected: int) -> sk.BatchResult | str:
                ref_a = sk.Ref(a, (("cc_pair", f"n{i}"),))
                ref_b = sk.Ref(b, (("cc_pair", f"n{i}"),))
                batch = (
                    sk.Batch()
                    .transition(ref_a, "bump", f"{k}".encode(), expected_transition_count=expected)
                    .transition(ref_b, "bump", f"{k}".encode(), expected_transition_count=expected)
                )
                try:
                    return await clients[k % CLIENTS].execute(batch)
                except sk.AbortedError as e:
                    assert e.reason == "TRANSITION_COUNT_MISMATCH"
                    assert e.metadata["operation_index"] in ("0", "1")
                    return "aborted"

            for expected in range(rounds):
                outcomes = await asyncio.gather(
                    *(attempt(k, i, expected) for i in range(NODES) for k in range(contenders))
                )
                for i in range(NODES):
                    mine = outcomes[i * contenders : (i + 1) * contenders]
                    wins = [o for o in mine if isinstance(o, sk.BatchResult)]
                    assert len(wins) == 1 and mine.count("aborted") == contenders - 1, (i, expected, mine)
                    win = wins[0]
                    assert [r.node.transition_count for r in win.results] == [expected + 1] * 2  # type: ignore[union-attr]
                    assert {r.revision for r in win.results} == {win.revision}  # type: ignore[union-attr]
            # Both trees moved in step: every pair has the same count and the same data.
            nodes = {n.ref: n for root in (a, b) for n in await clients[0].walk(root) if n.ref.path}
            for i in range(NODES):
                na = nodes[sk.Ref(a, (("cc_pair", f"n{i}"),))]
                nb = nodes[sk.Ref(b, (("cc_pair", f"n{i}"),))]
                assert (na.transition_count, na.data, na.update_revision) == (
                    rounds,
                    nb.data,
                    nb.update_revision,
                )
                assert nb.transition_count == rounds
        finally:
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_concurrent_overlapping_batches_never_interleave(server: ServerProcess, uid: str) -> None:
    """Batches over random sets of nodes from both trees, with expected counts from a shared and
    often stale view: each batch applies entirely or is ABORTED, every count is consumed once,
    and each revision of the event log holds exactly one batch's transitions. An ABORTED batch
    is retried (up to three attempts) with counts read afresh."""
    batches, in_flight = 240, 48
    rng = random.Random(7)

    async def main() -> None:
        clients = [await sk.Client.connect(server.address) for _ in range(CLIENTS)]
        try:
            a, b, refs = await _setup(clients[0], uid)
            start = (await clients[0].get_node(a)).update_revision + 1
            seen = dict.fromkeys(refs, 0)  # the last count any caller saw: stale under contention
            applied: list[tuple[sk.BatchResult, dict[sk.Ref, int]]] = []
            aborted = 0
            gate = asyncio.Semaphore(in_flight)

            async def one(k: int) -> None:
                nonlocal aborted
                chosen = rng.sample(refs[:NODES], 1) + rng.sample(refs[NODES:], rng.randint(1, 2))
                rng.shuffle(chosen)
                client = clients[k % CLIENTS]
                async with gate:
                    expected = {r: seen[r] for r in chosen}
                    for attempt in range(3):  # on ABORTED: re-read the counts and retry
                        batch = sk.Batch()
                        for r in chosen:
                            batch.transition(r, "bump", expected_transition_count=expected[r])
                        try:
                            result = await client.execute(batch)
                            break
                        except sk.AbortedError as e:
                            assert e.reason == "TRANSITION_COUNT_MISMATCH"
                            aborted += 1
                            if attempt == 2:
                                return
                            expected = {r: (await client.get_node(r)).transition_count for r in chosen}
                for r, res in zip(chosen, result.results, strict=True):
                    assert isinstance(res, sk.TransitionResult)
                    assert res.node.ref == r and res.node.transition_count == expected[r] + 1
                    assert res.revision == result.revision
                    seen[r] = max(seen[r], res.node.transition_count)
                applied.append((result, expected))

            await asyncio.gather(*(one(k) for k in range(batches)))
            assert len(applied) > batches // 4 and aborted, (len(applied), aborted)
            # Every compare-and-swap count of every node was consumed exactly once, in order.
            consumed: dict[sk.Ref, list[int]] = defaultdict(list)
            for _, expected in sorted(applied, key=lambda x: x[0].revision):
                for r, count in expected.items():
                    consumed[r].append(count)
            final = {n.ref: n.transition_count for root in (a, b) for n in await clients[0].walk(root)}
            for r in refs:
                assert consumed[r] == list(range(final[r])), (r, consumed[r], final[r])
            # One revision per applied batch; each revision holds exactly that batch's transitions.
            revisions = sorted(result.revision for result, _ in applied)
            assert len(set(revisions)) == len(revisions)
            log = await _events_by_revision(clients[0], start, revisions[-1], {a, b})
            assert sorted(log) == revisions
            for result, expected in applied:
                assert sorted(log[result.revision], key=str) == sorted(
                    ((r, count + 1) for r, count in expected.items()), key=str
                )
        finally:
            for c in clients:
                await c.close()

    asyncio.run(main())
