"""Views of the state: WriteView (durable + pending, for validating writes) and ReadView
(durable only, for answering clients)."""

from __future__ import annotations

from collections.abc import Iterator

from statekeeper_server.core.catalog import TypeCatalog
from statekeeper_server.core.pending import PendingOverlay
from statekeeper_server.domain.errors import InvalidArgument
from statekeeper_server.domain.model import MachineType, NodeAddress, NodeRecord
from statekeeper_server.storage import codec, keys
from statekeeper_server.storage.base import Keyspace, Store


class WriteView:
    """What the next transaction builds on: durable state overlaid with pending commits."""

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

    def get_machine_type(self, name: str, version: int) -> MachineType | None:
        pending = self._pending.types
        if not version:
            version = max([self._catalog.latest_version(name), *(v for n, v in pending if n == name)])
        return pending.get((name, version)) or self._catalog.get(name, version)

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
    """Durable state only: every client read goes through here (guarantee 2)."""

    def __init__(self, store: Store, catalog: TypeCatalog) -> None:
        self._store = store
        self.catalog = catalog

    def get_node(self, address: NodeAddress) -> NodeRecord | None:
        raw = self._store.get(Keyspace.NODES, keys.node_key(address))
        return codec.decode_node(raw) if raw is not None else None

    def list_children(
        self, parent: NodeAddress, type_name: str, after_id: str | None, limit: int
    ) -> list[tuple[NodeAddress, NodeRecord]]:
        prefix = keys.collection_prefix(parent, type_name)
        seek = prefix + after_id.encode() + b"\x00" + keys.SUBTREE_END if after_id is not None else prefix
        out: list[tuple[NodeAddress, NodeRecord]] = []
        while len(out) < limit:
            found = self._store.seek(Keyspace.NODES, seek)
            if found is None or not found[0].startswith(prefix):
                break
            key, raw = found
            out.append((keys.node_address(key), codec.decode_node(raw)))
            seek = key + keys.SUBTREE_END  # skip the child's own subtree
        return out

    def walk(
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
        out: list[tuple[bytes, NodeAddress, NodeRecord]] = []
        for k, raw in self._store.scan(Keyspace.NODES, start, key + keys.SUBTREE_END):
            out.append((k, keys.node_address(k), codec.decode_node(raw)))
            if len(out) >= limit:
                break
        return out

    def list_nodes(
        self, type_name: str, terminal: bool | None, state: str | None, cursor: bytes | None, limit: int
    ) -> list[tuple[bytes, NodeAddress, NodeRecord]]:
        """Nodes of a type from the (type, active/terminal, state) index, as (cursor, address,
        record), in index order. Pass the last cursor back to continue."""
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
            for k, _ in self._store.scan(Keyspace.NODE_INDEX, start, end):
                node_key = k[skip:].split(b"\x00", 1)[1]
                raw = self._store.get(Keyspace.NODES, node_key)
                if raw is None:  # cannot happen: index and node are written in one batch
                    continue
                out.append((k, keys.node_address(node_key), codec.decode_node(raw)))
                if len(out) >= limit:
                    return out
        return out
