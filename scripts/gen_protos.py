#!/usr/bin/env python3
"""Generate the Python code for proto/ into client/statekeeper/v1 (committed).

    python scripts/gen_protos.py          # regenerate
    python scripts/gen_protos.py --check  # fail if the committed code differs (drift check)

The proto package statekeeper.v1 becomes the Python module statekeeper.v1, so generated
imports resolve inside the SDK package without rewriting.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
# Vendored google.rpc protos: imported by proto/, their code comes from googleapis-common-protos.
THIRD_PARTY = ROOT / "third_party" / "proto"
PACKAGE_DIR = Path("statekeeper") / "v1"
OUT_ROOT = ROOT / "client"
BIN_DIR = Path(sys.executable).parent
INIT_TEXT = '"""Generated from proto/statekeeper/v1 by scripts/gen_protos.py. Do not edit."""\n'


def generate(out_root: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={THIRD_PARTY}",
        # The plugins live beside the interpreter (the project's venv), not necessarily on PATH.
        f"--plugin=protoc-gen-mypy={BIN_DIR / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN_DIR / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(cmd, check=True)
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)


def generated_files(root: Path) -> set[str]:
    return {p.name for p in (root / PACKAGE_DIR).iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when the committed code is out of date")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        (tmp_root / PACKAGE_DIR).mkdir(parents=True)
        generate(tmp_root)
        fresh, committed_dir = tmp_root / PACKAGE_DIR, OUT_ROOT / PACKAGE_DIR
        if args.check:
            names = generated_files(tmp_root)
            existing = generated_files(OUT_ROOT) if committed_dir.exists() else set()
            _, mismatch, errors = filecmp.cmpfiles(fresh, committed_dir, sorted(names), shallow=False)
            stale = sorted(set(mismatch) | set(errors) | (existing - names))
            if stale:
                print(
                    f"generated code is out of date: {', '.join(stale)}; run scripts/gen_protos.py",
                    file=sys.stderr,
                )
                return 1
            print(f"generated code is up to date ({len(names)} files)")
            return 0
        if committed_dir.exists():
            shutil.rmtree(committed_dir)
        shutil.copytree(fresh, committed_dir)
        print(f"generated {len(generated_files(OUT_ROOT))} files into {committed_dir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
