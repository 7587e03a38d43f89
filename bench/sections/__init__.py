"""The benchmark's sections, run in this order. A section is a module with KEY (a short id used
in the JSON and in ceiling references such as "a.unary_64"), TITLE, and run(ctx) -> Section.
Add one by writing the module and listing it here."""

from __future__ import annotations

from types import ModuleType

from bench.sections import (
    batch,
    ceiling_grpc,
    ceiling_rocksdb,
    events,
    postgres,
    savepoints,
    scale,
    tasks,
    unary,
)

SECTIONS: list[ModuleType] = [
    ceiling_grpc,
    ceiling_rocksdb,
    postgres,
    unary,
    batch,
    events,
    tasks,
    savepoints,
    scale,
]
