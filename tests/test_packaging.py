"""Packaging: the sdist carries the API definition (proto/), the docs, deploy/ and the LICENSE;
the metadata declares the licence, project URLs and classifiers; the wheel installs the
`statekeeper` command. Built from a copy of the working tree with `python -m build`."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree_copy(dest: Path) -> Path:
    """The files git would commit (tracked and new, not ignored), without build debris."""
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not name.startswith(("tools/", "examples/")):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def test_sdist_and_wheel_carry_what_users_need(tmp_path: Path) -> None:
    src = _tree_copy(tmp_path / "src")
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (sdist,) = out.glob("statekeeper-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/PKG-INFO")
        assert pkg_info is not None
        meta = email.parser.Parser().parsestr(pkg_info.read().decode())
    # The API and the google.rpc protos it imports (buf.yaml's workspace): it compiles as shipped.
    for proto in [*(ROOT / "proto").rglob("*.proto"), *(ROOT / "third_party").rglob("*.proto")]:
        assert str(proto.relative_to(ROOT)) in names
    for wanted in (
        "docs/api.md",
        "docs/operations.md",
        "LICENSE",
        "README.md",
        "deploy/Dockerfile",
        "deploy/statekeeper.service",
    ):
        assert wanted in names, wanted
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Issues"} <= urls.keys()
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers and "Typing :: Typed" in classifiers
    assert any(
        r.startswith("grpcio<2,>=1.75.0") or r.startswith("grpcio>=1.75.0,<2")
        for r in meta.get_all("Requires-Dist")
    )

    (wheel,) = out.glob("statekeeper-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        wheel_names = set(whl.namelist())
        entry_points = next(n for n in wheel_names if n.endswith("entry_points.txt"))
        assert "statekeeper = statekeeper.cli:main" in whl.read(entry_points).decode()
        license_file = next(n for n in wheel_names if n.endswith("licenses/LICENSE"))
        assert whl.read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert "statekeeper/cli/__init__.py" in wheel_names and "statekeeper/py.typed" in wheel_names


def test_license_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert len(text.splitlines()) > 190  # the full text, not a notice
