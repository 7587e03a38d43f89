"""The inspector reaches the server only through the gRPC API: its modules import nothing of
the server but themselves (and the package's version), only the generated API of the SDK."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HTTP = Path(__file__).resolve().parents[2] / "server" / "statekeeper_server" / "entrypoints" / "http"


@pytest.mark.parametrize("path", sorted(HTTP.glob("*.py")), ids=lambda p: p.name)
def test_the_inspector_imports_only_the_api(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        for name in names:
            if name.startswith("statekeeper_server"):
                assert name.startswith("statekeeper_server.entrypoints.http"), f"{path.name} imports {name}"
            elif name.startswith("statekeeper"):
                assert name.startswith("statekeeper.v1"), (
                    f"{path.name} imports {name}: only the generated API"
                )


def test_assets_ship_in_the_package() -> None:
    pyproject = (HTTP.parents[3] / "pyproject.toml").read_text()
    assert '"statekeeper_server.entrypoints.http" = ["templates/*.html", "static/*"]' in pyproject
    assert (HTTP / "static" / "inspector.js").exists() and (HTTP / "templates" / "base.html").exists()
    for template in (HTTP / "templates").glob("*.html"):
        text = template.read_text()
        # No remote assets, no inline script or style (the CSP forbids them anyway).
        assert "http://" not in text and "https://" not in text, template.name
        assert "<script>" not in text and " style=" not in text and " on" + "click=" not in text, (
            template.name
        )
