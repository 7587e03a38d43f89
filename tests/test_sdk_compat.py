"""The SDK's dependency ranges hold: the SDK's common calls (tests/sdk_compat/check_sdk.py) pass
against a real server in two throwaway virtual environments holding only the SDK's dependencies,
one at the lowest versions pyproject.toml allows and one at the newest. The two are built in
parallel; pip's cache makes them cheap after the first run."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def sdk_requirements() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def lowest(requirement: str) -> str:
    """'grpcio>=1.75.0,<2' -> 'grpcio==1.75.0'."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+).*", requirement)
    assert match, f"every SDK dependency needs a lower bound: {requirement!r}"
    return f"{match.group(1)}=={match.group(2)}"


def test_every_sdk_dependency_is_a_range() -> None:
    for requirement in sdk_requirements():
        assert "==" not in requirement and "<" in requirement, requirement
        lowest(requirement)


def test_sdk_works_at_the_lowest_and_newest_supported_versions(server: ServerProcess, tmp_path: Path) -> None:
    pins = {
        "lowest": [lowest(r) for r in sdk_requirements()],
        "newest": sdk_requirements(),
    }
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    builds = {}
    for name, requirements in pins.items():
        venv = tmp_path / name
        cmd = f"{sys.executable} -m venv --without-pip {venv} && " + " ".join(
            [*pip, "--python", str(venv / "bin" / "python"), "install", *map(repr, requirements)]
        )
        builds[name] = subprocess.Popen(
            ["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for name, build in builds.items():
        out, _ = build.communicate(timeout=600)
        assert build.returncode == 0, f"{name}: {out}"

    checks = {
        name: subprocess.Popen(
            [
                str(tmp_path / name / "bin" / "python"),
                "-I",
                "-c",
                _RUN_CHECK,
                server.address,
                f"compat{name}-",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in pins
    }
    versions = {}
    for name, check in checks.items():
        out, _ = check.communicate(timeout=300)
        assert check.returncode == 0, f"{name}: {out}"
        versions[name] = out.strip().splitlines()[-1]
    low = dict(p.split("==") for p in pins["lowest"])
    assert versions["lowest"] == f"ok grpcio {low['grpcio']} protobuf {low['protobuf']}", versions
    print(versions)


# Isolated mode (-I) keeps the test's own site-packages out; the SDK comes from the source tree.
_RUN_CHECK = f"""
import runpy, sys
sys.path[:0] = [{str(ROOT / "client")!r}]
sys.argv = ["check_sdk.py", *sys.argv[1:]]
runpy.run_path({str(ROOT / "tests" / "sdk_compat" / "check_sdk.py")!r}, run_name="__main__")
"""
