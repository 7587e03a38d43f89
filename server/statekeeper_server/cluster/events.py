"""Every server's events reach every server's hub: read from the shared store in revision order.

Commits of all servers are ordered by the revision row's lock, so a revision is visible only
after every lower one: reading the events table in key order after the last key read never
skips one. A NOTIFY sent by each commit (and this server's own commits) wakes the reader at
once; polling every `poll_s` alone would be enough. The reader also teaches the type catalog
the machine types other servers register.

Each read also returns the compaction mark (one statement, one snapshot), so every server's
oldest retained revision follows the compactions of whichever server does them
(cluster/compaction.py). Compaction never deletes what a live server has not read (its heartbeat
reports how far it read); a server that was away longer than its lease may find events gone
before it read them: it then forgets its in-memory window, so a reader there is refused
(REVISION_COMPACTED) instead of being handed a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from statekeeper_server.core.catalog import TypeCatalog
from statekeeper_server.domain.model import Event, EventKind
from statekeeper_server.features.events.hub import EventHub
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace
from statekeeper_server.storage.postgres.store import PgStore

log = logging.getLogger("statekeeper.cluster")

PAGE = 5_000


class EventTail:
    def __init__(self, store: PgStore, hub: EventHub, catalog: TypeCatalog, poll_s: float = 0.2) -> None:
        self._store = store
        self._hub = hub
        self._catalog = catalog
        self._poll_s = poll_s
        self._next = keys.seq_key(hub.durable_revision + 1, 0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        store.commit_listeners.append(lambda top: self._wake.set())
        store.compaction_listeners.append(self._compacted)
        self._compacted(store.events_compacted + 1)

    def _compacted(self, oldest: int) -> None:
        """Events below `oldest` are gone (any server's compaction, read with the events)."""
        self._hub.oldest_revision = max(self._hub.oldest_revision, oldest)

    @property
    def revision(self) -> int:
        """Every revision up to this one has been read."""
        return self._hub.durable_revision

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="event-tail")
        self._listener = loop.create_task(self._listen(), name="event-tail-listen")

    async def stop(self) -> None:
        for task in (self._task, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _listen(self) -> None:
        await self._store.listen(lambda: self._wake.set())

    async def _run(self) -> None:
        view = self._store.durable()
        while True:
            try:
                mark, rows = await view.events(self._next, None, PAGE)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("reading events failed: %s", e)
                mark, rows = 0, []
                await asyncio.sleep(self._poll_s)
            if keys.seq_key_parts(self._next)[0] <= mark:
                self._skip(mark)
            if rows:
                await self._take(rows, full=len(rows) >= PAGE)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    def _skip(self, mark: int) -> None:
        """Events up to revision `mark` were compacted before this server read them."""
        missed = keys.seq_key_parts(self._next)[0]
        log.warning(
            "events of revisions %d to %d were compacted before this server read them (it was away "
            "longer than its lease?): readers from there are refused with REVISION_COMPACTED",
            missed,
            mark,
        )
        self._hub.drop_window()
        self._next = keys.seq_key(mark + 1, 0)
        self._hub.feed([], mark)

    async def _take(self, rows: list[tuple[bytes, bytes]], full: bool) -> None:
        events: list[Event] = []
        decode = self._hub.codec.decode
        for key, raw in rows:
            revision, index = keys.seq_key_parts(key)
            events.append(decode(revision, index, raw))
        last = events[-1].revision
        # A full page may end inside a revision: the rest of it comes with the next page.
        top = last - 1 if full else last
        self._next = keys.seq_key(last, events[-1].index + 1)
        for e in events:
            if e.kind is EventKind.MACHINE_TYPE_REGISTERED and e.detail.isdigit():
                await self._learn_type(e.node_type, int(e.detail))
        self._hub.feed(events, top)

    async def _learn_type(self, name: str, version: int) -> None:
        if self._catalog.get(name, version) is not None:
            return
        raw = await self._store.durable().get(Keyspace.TYPES, keys.type_key(name, version))
        if raw is not None:
            self._catalog.add(codec.decode_machine_type(raw))
