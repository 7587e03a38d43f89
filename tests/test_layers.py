"""The layering rules of server/statekeeper_server (see its __init__): each layer imports only
inwards, the domain stays pure, and only a store backend touches its database library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "server" / "statekeeper_server"

# layer -> the layers of statekeeper_server it may import
ALLOWED = {
    "domain": {"domain"},
    "storage": {"domain", "storage"},
    "core": {"domain", "storage", "core"},
    "features": {"domain", "storage", "core", "features"},
    "entrypoints": {"domain", "storage", "core", "features", "entrypoints"},
    "cluster": {"domain", "storage", "core", "features", "cluster"},
    "app": {"domain", "storage", "core", "features", "entrypoints", "app", "cluster"},
}
# third-party libraries that only some layers may use
LIBRARIES = {
    "grpc": {"entrypoints", "app", "cluster"},
    "google": {"entrypoints", "app", "cluster"},
    # the generated API (protobuf), and the SDK's wire helpers both ends of a stream use
    "statekeeper": {"entrypoints", "app", "cluster"},
    "rocksdict": {"storage/rocksdb"},
    "asyncpg": {"storage/postgres"},
    "msgpack": {"storage"},
}
BACKENDS = ("storage/rocksdb", "storage/postgres")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _where(path: Path) -> str:
    rel = path.relative_to(PACKAGE).as_posix()
    return rel


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _where(p))
def test_imports_point_inwards(path: Path) -> None:
    rel = _where(path)
    layer = rel.split("/")[0]
    if layer not in ALLOWED:
        return  # the package's own __init__ / __main__
    allowed = ALLOWED[layer]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "statekeeper_server" and len(parts) > 1:
            target = parts[1]
            assert target in allowed, f"{rel} imports {name}: {layer}/ may import only {sorted(allowed)}"
            sub = "/".join(parts[1:3])
            if sub in BACKENDS:
                assert (
                    rel.startswith(sub)
                    or layer == "app"
                    or (layer == "cluster" and sub == "storage/postgres")
                ), f"{rel} imports the store backend {name}: only app/ chooses a backend"
        elif parts[0] in LIBRARIES:
            places = LIBRARIES[parts[0]]
            assert any(rel.startswith(p) for p in places), (
                f"{rel} imports {name}: only {sorted(places)} may use {parts[0]}"
            )
