"""Views of the state: WriteView (the store's live state plus the group being built: what the
next transaction builds on, read only inside the committer's builds) and ReadView (the store's
durable view: everything a client is answered from, guarantee 2)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from statekeeper_server.core.catalog import TypeCatalog
from statekeeper_server.core.pending import PendingOverlay
from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.model import MachineType, NodeAddress, NodeRecord
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import DurableView, Keyspace, Store


class WriteView:
    """What the next transaction builds on: the live store overlaid with the group being built."""

    def __init__(self, store: Store, pending: PendingOverlay, catalog: TypeCatalog) -> None:
        self._store = store
        self._pending = pending
        self._catalog = catalog

    def get_node(self, address: NodeAddress) -> NodeRecord | None:
        key = keys.node_key(address)
        entry = self._pending.nodes.get(key)
        if entry is not None:
            return entry[0]
        raw = self._store.get(Keyspace.NODES, key)
        return codec.decode_node(raw) if raw is not None else None

    def get_nodes(self, addresses: Sequence[NodeAddress]) -> list[NodeRecord | None]:
        pending = self._pending.nodes
        found: list[NodeRecord | None] = []
        missing: list[tuple[int, bytes]] = []
        for i, address in enumerate(addresses):
            key = keys.node_key(address)
            entry = pending.get(key)
            if entry is None:
                missing.append((i, key))
            found.append(entry[0] if entry is not None else None)
        if missing:
            raws = self._store.get_many(Keyspace.NODES, [key for _, key in missing])
            decode = codec.decode_node
            for (i, _), raw in zip(missing, raws, strict=True):
                if raw is not None:
                    found[i] = decode(raw)
        return found

    def get_machine_type(self, name: str, version: int) -> MachineType | None:
        pending = self._pending.types
        if not version:
            version = max([self._catalog.latest_version(name), *(v for n, v in pending if n == name)])
            if not version:
                version = self._written_latest(name)
        found = pending.get((name, version)) or self._catalog.get(name, version)
        if found is None and version:
            # Written by the previous group, whose sync is still running (the catalog learns
            # a type once it is durable).
            raw = self._store.get(Keyspace.TYPES, keys.type_key(name, version))
            found = codec.decode_machine_type(raw) if raw is not None else None
        return found

    def _written_latest(self, name: str) -> int:
        prefix = name.encode() + b"\x00"
        for key, _ in self._store.scan(Keyspace.TYPES, prefix, prefix[:-1] + b"\x01", reverse=True):
            return int.from_bytes(key[len(prefix) :], "big")
        return 0

    def descendants(self, address: NodeAddress) -> Iterator[NodeAddress]:
        key = keys.node_key(address)
        start, end = key + keys.SUBTREE_START, key + keys.SUBTREE_END
        pending = self._pending.nodes
        seen = set()
        for k, _ in self._store.scan(Keyspace.NODES, start, end):
            seen.add(k)
            entry = pending.get(k)
            if entry is None or entry[0] is not None:
                yield keys.node_address(k)
        for k, (record, _) in list(pending.items()):
            if record is not None and start <= k < end and k not in seen:
                yield keys.node_address(k)


class ReadView:
    """Durable state only: every client read goes through here (guarantee 2). Each method takes
    the store's durable view once, so what it returns comes from one moment."""

    def __init__(self, store: Store, catalog: TypeCatalog) -> None:
        self._store = store
        self.catalog = catalog

    def view(self) -> DurableView:
        return self._store.durable()

    async def get_node(self, address: NodeAddress, view: DurableView | None = None) -> NodeRecord | None:
        raw = await (view or self._store.durable()).get(Keyspace.NODES, keys.node_key(address))
        return codec.decode_node(raw) if raw is not None else None

    async def list_children(
        self, parent: NodeAddress, type_name: str, after_id: str | None, limit: int
    ) -> list[tuple[NodeAddress, NodeRecord]]:
        view = self._store.durable()
        prefix = keys.collection_prefix(parent, type_name)
        seek = prefix + after_id.encode() + b"\x00" + keys.SUBTREE_END if after_id is not None else prefix
        out: list[tuple[NodeAddress, NodeRecord]] = []
        while len(out) < limit:
            found = await view.seek(Keyspace.NODES, seek)
            if found is None or not found[0].startswith(prefix):
                break
            key, raw = found
            out.append((keys.node_address(key), codec.decode_node(raw)))
            seek = key + keys.SUBTREE_END  # skip the child's own subtree
        return out

    async def walk(
        self, address: NodeAddress, cursor: bytes | None, limit: int
    ) -> list[tuple[bytes, NodeAddress, NodeRecord]]:
        """A page of the subtree in key order (parents first) as (cursor, address, record).
        Pass the last cursor back to continue; a cursor from another subtree is refused."""
        key = keys.node_key(address)
        if cursor is not None and not (cursor == key or cursor.startswith(key + keys.SUBTREE_START)):
            raise InvalidArgument(
                "INVALID_PAGE_TOKEN", "page_token belongs to another walk", field="page_token"
            )
        start = cursor + b"\x00" if cursor is not None else key
        found = await self._store.durable().scan(Keyspace.NODES, start, key + keys.SUBTREE_END, limit=limit)
        return [(k, keys.node_address(k), codec.decode_node(raw)) for k, raw in found]

    async def list_nodes(
        self, type_name: str, terminal: bool | None, state: str | None, cursor: bytes | None, limit: int
    ) -> list[tuple[bytes, NodeAddress, NodeRecord]]:
        """Nodes of a type from the (type, active/terminal, state) index, as (cursor, address,
        record), in index order. Pass the last cursor back to continue."""
        view = self._store.durable()
        flags = [terminal] if terminal is not None else [False, True]
        if state is None:
            prefixes = (
                [keys.node_index_prefix(type_name, terminal)]
                if terminal is not None
                else [keys.node_index_prefix(type_name)]
            )
        else:
            prefixes = [keys.node_index_prefix(type_name, flag, state) for flag in flags]
        if cursor is not None and not any(cursor.startswith(p) for p in prefixes):
            raise InvalidArgument(
                "INVALID_PAGE_TOKEN", "page_token belongs to another listing", field="page_token"
            )
        out: list[tuple[bytes, NodeAddress, NodeRecord]] = []
        skip = len(keys.node_index_prefix(type_name)) + 1  # type \x00 and the A/T flag
        for prefix in prefixes:
            start = prefix if cursor is None or cursor < prefix else cursor + b"\x00"
            end = prefix[:-1] + bytes([prefix[-1] + 1])
            entries = await view.scan(Keyspace.NODE_INDEX, start, end, limit=limit - len(out))
            node_keys = [k[skip:].split(b"\x00", 1)[1] for k, _ in entries]
            records = await view.get_many(Keyspace.NODES, node_keys)
            for (k, _), node_key, raw in zip(entries, node_keys, records, strict=True):
                if raw is None:  # cannot happen: index and node are written in one batch
                    continue
                out.append((k, keys.node_address(node_key), codec.decode_node(raw)))
            if len(out) >= limit:
                return out
        return out
