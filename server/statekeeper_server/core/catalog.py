"""The durable machine types, all held in memory: there are few, they are immutable, and every
transition needs its type."""

from __future__ import annotations

from statekeeper_server.domain.model import MachineType
from statekeeper_server.storage import codec
from statekeeper_server.storage.base import Keyspace, Store


class TypeCatalog:
    def __init__(self, store: Store) -> None:
        self._types: dict[tuple[str, int], MachineType] = {}
        self._latest: dict[str, int] = {}
        for _, raw in store.scan(Keyspace.TYPES):
            self.add(codec.decode_machine_type(raw))

    def add(self, mt: MachineType) -> None:
        self._types[(mt.name, mt.version)] = mt
        if mt.version > self._latest.get(mt.name, 0):
            self._latest[mt.name] = mt.version

    def get(self, name: str, version: int = 0) -> MachineType | None:
        if not version:
            version = self._latest.get(name, 0)
        return self._types.get((name, version))

    def latest_version(self, name: str) -> int:
        return self._latest.get(name, 0)

    def list(self, after: tuple[str, int] | None, limit: int, all_versions: bool) -> list[MachineType]:
        """Types ordered by (name, version), strictly after `after`."""
        if all_versions:
            keys_ = sorted(self._types)
        else:
            keys_ = sorted((n, v) for n, v in self._latest.items())
        if after is not None:
            keys_ = [k for k in keys_ if k > after]
        return [self._types[k] for k in keys_[:limit]]

    def __len__(self) -> int:
        return len(self._types)
