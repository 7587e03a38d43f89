"""Request-id records (guarantee 5): a write with a request_id stores its outcome in the same
commit, so a retry gets the first outcome and applies nothing twice, for `ttl_ms`.

    REQUESTS        request id                        -> fingerprint, response, expiry, revision
    REQUEST_EXPIRY  expiry_ms (u64) + request id      -> b"" (the sweep's order)

The sweep runs every `interval_s` and deletes everything expired, a chunk at a time with a turn
of the event loop between chunks (never more than a few milliseconds in one go), so it keeps
up with any write rate the committer reaches. Each chunk of the expiry index goes with one
range delete; a record re-used since (a new expiry) is left alone. After a burst the keyspaces
are compacted on a thread (core/reclaim.py), so the disk space comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from statekeeper_server.core.committer import Mutation, PendingCommit
from statekeeper_server.core.pending import PendingOverlay
from statekeeper_server.core.reclaim import Reclaimer
from statekeeper_server.domain.errors import DomainError, InvalidArgument
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, Store

log = logging.getLogger("statekeeper.requests")

SWEEP_CHUNK = 1_000
"""Expired records deleted per turn of the event loop (a few milliseconds)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def expired_records(expiry_keys: list[bytes], record: Callable[[bytes], bytes | None]) -> list[bytes]:
    """The request ids of these expiry-index entries whose record still expires then (one
    re-used since has a later expiry and stays); record(id): its stored record, or None.
    Shared with the cluster's sweep (cluster/housekeeping.py)."""
    out = []
    for key in expiry_keys:
        expires, request_id = keys.read_u64(key[:8]), key[8:]
        raw = record(request_id)
        if raw is not None and codec.decode_request(raw)[2] == expires:
            out.append(request_id)
    return out


class RequestLog:
    def __init__(
        self,
        store: Store,
        pending: PendingOverlay,
        ttl_ms: int,
        publish: Callable[[list[Mutation]], Awaitable[None]],
    ) -> None:
        self._store = store
        self._pending = pending
        self.ttl_ms = ttl_ms
        self._publish = publish
        self._reclaim = Reclaimer(store, (Keyspace.REQUESTS, Keyspace.REQUEST_EXPIRY))

    def record(
        self, sealed: PendingCommit, now: int, request_id: str, fingerprint: bytes, response: bytes
    ) -> None:
        """Store the outcome of request_id in the commit being sealed."""
        expires = now + self.ttl_ms
        key = request_id.encode()
        value = codec.encode_request(fingerprint, response, expires, sealed.revision)
        sealed.mutations.append((Keyspace.REQUESTS, key, value))
        sealed.mutations.append((Keyspace.REQUEST_EXPIRY, keys.expiry_key(expires, request_id), b""))
        # A retry built later in the same group finds the first outcome here.
        self._pending.writes()[(Keyspace.REQUESTS, key)] = (value, sealed.revision)

    def replay(self, request_id: str, fingerprint: bytes) -> bytes | None:
        """The first outcome of request_id, from the group being built or the store (which holds
        every group written so far; the answer waits until this group is durable)."""
        key = request_id.encode()
        entry = self._pending.writes().get((Keyspace.REQUESTS, key))
        raw = entry[0] if entry is not None else self._store.get(Keyspace.REQUESTS, key)
        if raw is None:
            return None
        stored_fp, response, expires, _ = codec.decode_request(raw)
        if expires < now_ms():
            return None
        if stored_fp != fingerprint:
            raise InvalidArgument(
                "REQUEST_ID_REUSED",
                f"request_id {request_id!r} was already used for a different request; use a new id",
                field="request_id",
            )
        return response

    # -- housekeeping ------------------------------------------------------------------------

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except DomainError as e:
                log.warning("sweeping expired request ids failed: %s", e.message)
            except OSError as e:  # the store failed (e.g. the disk is full): the committer stops
                log.warning("sweeping expired request ids failed (%s); will retry", e)
            except Exception:
                log.exception("sweeping expired request ids failed; will retry")

    async def sweep(self, chunk: int = SWEEP_CHUNK) -> int:
        """Delete every record expired by now; returns how many."""
        end = keys.u64(now_ms() + 1)
        start = b""
        swept = 0
        longest = 0.0
        while True:
            began = time.perf_counter()
            done = self._sweep_chunk(start, end, chunk)
            longest = max(longest, time.perf_counter() - began)
            if done is None:
                break
            swept += done[0]
            start = done[1]
            await asyncio.sleep(0)  # let the loop serve between chunks
        if swept:
            log.log(
                logging.INFO if swept >= 10 * chunk else logging.DEBUG,
                "swept %d expired request ids (longest chunk %.1f ms)",
                swept,
                longest * 1000,
            )
            # An empty commit group: syncs the deletions and publishes them to readers.
            await self._publish([])
            drained = next(iter(self._store.scan(Keyspace.REQUEST_EXPIRY)), None) is None
            await self._reclaim.deleted(swept, drained)
        return swept

    async def close(self) -> None:
        await self._reclaim.close()

    def _sweep_chunk(self, start: bytes, end: bytes, limit: int) -> tuple[int, bytes] | None:
        """One chunk, synchronously (no commit is built meanwhile): (how many, where the next
        chunk starts), or None when nothing is left."""
        store = self._store
        found = list(itertools.islice(store.scan(Keyspace.REQUEST_EXPIRY, start, end), limit))
        if not found:
            return None
        batch = store.new_batch()
        expiring = [key for key, _ in found]
        for request_id in expired_records(expiring, lambda k: store.get(Keyspace.REQUESTS, k)):
            batch.delete(Keyspace.REQUESTS, request_id)
        after_last = found[-1][0] + b"\x00"
        batch.delete_range(Keyspace.REQUEST_EXPIRY, found[0][0], after_last)
        # Housekeeping outside the commit groups, decided and written in one go (no build runs
        # meanwhile; a group being built writes after it). A crash that loses it only delays it.
        store.write(batch, sync=False)
        return len(found), after_last
