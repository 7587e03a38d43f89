#!/usr/bin/env python3
"""Generate the reference docs: docs/api.md from the comments in proto/statekeeper/v1/*.proto,
and the configuration table in docs/operations.md from the server's flags (app/config.py).

    python scripts/gen_api_docs.py          # regenerate both
    python scripts/gen_api_docs.py --check  # fail if either is out of date (drift check)

The protos are compiled with grpc_tools.protoc into a FileDescriptorSet with source info; each
element's leading comment (else its trailing one) becomes its description. The output depends
only on the protos: files in name order, elements in declaration order. The configuration table
replaces what lies between its two marker comments in docs/operations.md; the rest of that file
is written by hand.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
# Vendored google.rpc protos: imported by proto/, their code comes from googleapis-common-protos.
THIRD_PARTY = ROOT / "third_party" / "proto"
PACKAGE_DIR = Path("statekeeper") / "v1"
OUT = ROOT / "docs" / "api.md"
OPERATIONS = ROOT / "docs" / "operations.md"
CONFIG_BEGIN = (
    "<!-- BEGIN configuration table: generated from server/statekeeper_server/app/config.py by "
    "scripts/gen_api_docs.py; edit the help texts there -->"
)
CONFIG_END = "<!-- END configuration table -->"

FD = descriptor_pb2.FieldDescriptorProto
# Field numbers inside the descriptor messages, as SourceCodeInfo paths use them.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

SCALARS = {
    FD.TYPE_DOUBLE: "double",
    FD.TYPE_FLOAT: "float",
    FD.TYPE_INT64: "int64",
    FD.TYPE_UINT64: "uint64",
    FD.TYPE_INT32: "int32",
    FD.TYPE_FIXED64: "fixed64",
    FD.TYPE_FIXED32: "fixed32",
    FD.TYPE_BOOL: "bool",
    FD.TYPE_STRING: "string",
    FD.TYPE_BYTES: "bytes",
    FD.TYPE_UINT32: "uint32",
    FD.TYPE_SFIXED32: "sfixed32",
    FD.TYPE_SFIXED64: "sfixed64",
    FD.TYPE_SINT32: "sint32",
    FD.TYPE_SINT64: "sint64",
}


def compile_protos() -> descriptor_pb2.FileDescriptorSet:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.binpb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--proto_path={THIRD_PARTY}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *protos,
            ],
            check=True,
        )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


# -- text helpers ----------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Markdown-safe text: outside `code spans`, < and > would be read as HTML; | ends a cell."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(part.replace("|", "\\|"))
    return "".join(out)


def paragraphs(comment: str) -> str:
    """A comment as Markdown paragraphs: lines joined, blank lines kept as breaks."""
    blocks = re.split(r"\n\s*\n", comment.strip())
    return "\n\n".join(_escape(" ".join(line.strip() for line in b.splitlines())) for b in blocks)


def one_line(comment: str) -> str:
    """A comment for a table cell."""
    return _escape(" ".join(line.strip() for line in comment.strip().splitlines() if line.strip()))


def anchor(name: str) -> str:
    """GitHub's heading anchor for a heading that is exactly `name`."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


# -- the model -------------------------------------------------------------------------------------


class Api:
    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = sorted(files, key=lambda f: f.name)
        self.comments: dict[tuple[str, tuple[int, ...]], str] = {}
        self.local: set[str] = set()  # full names (".pkg.Name") documented here
        self.maps: dict[str, descriptor_pb2.DescriptorProto] = {}
        for f in self.files:
            for loc in f.source_code_info.location:
                text = loc.leading_comments or loc.trailing_comments
                if text:
                    self.comments[(f.name, tuple(loc.path))] = text
            for full, msg, _ in self.messages(f):
                self.local.add(full)
                if msg.options.map_entry:
                    self.maps[full] = msg
            for full, _, _ in self.enums(f):
                self.local.add(full)

    def comment(self, f: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
        return self.comments.get((f.name, path), "")

    @staticmethod
    def messages(
        f: descriptor_pb2.FileDescriptorProto,
    ) -> list[tuple[str, descriptor_pb2.DescriptorProto, tuple[int, ...]]]:
        """Every message of the file, nested ones after their parent: (full name, message, path)."""
        out = []

        def walk(prefix: str, msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...]) -> None:
            full = f"{prefix}.{msg.name}"
            out.append((full, msg, path))
            for i, nested in enumerate(msg.nested_type):
                walk(full, nested, (*path, MESSAGE_NESTED, i))

        for i, msg in enumerate(f.message_type):
            walk(f".{f.package}", msg, (FILE_MESSAGE, i))
        return out

    def enums(
        self, f: descriptor_pb2.FileDescriptorProto
    ) -> list[tuple[str, descriptor_pb2.EnumDescriptorProto, tuple[int, ...]]]:
        out = [(f".{f.package}.{e.name}", e, (FILE_ENUM, i)) for i, e in enumerate(f.enum_type)]
        for full, msg, path in self.messages(f):
            for i, e in enumerate(msg.enum_type):
                out.append((f"{full}.{e.name}", e, (*path, MESSAGE_ENUM, i)))
        return out

    def display(self, full: str) -> str:
        """The name shown for a type: relative to its package for ours."""
        for f in self.files:
            prefix = f".{f.package}."
            if full.startswith(prefix) and full in self.local:
                return full[len(prefix) :]
        return full.lstrip(".")

    def link(self, full: str) -> str:
        name = self.display(full)
        return f"[`{name}`](#{anchor(name)})" if full in self.local else f"`{name}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
            entry = self.maps.get(field.type_name)
            if entry is not None:
                key, value = entry.field[0], entry.field[1]
                if value.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
                    return f"`map<{SCALARS[key.type]},` {self.link(value.type_name)}`>`"
                return f"`map<{SCALARS[key.type]}, {SCALARS[value.type]}>`"
            base = self.link(field.type_name)
        else:
            base = f"`{SCALARS[field.type]}`"
        if field.label == FD.LABEL_REPEATED:
            return f"repeated {base}"
        if field.proto3_optional:
            return f"optional {base}"
        return base


# -- rendering -------------------------------------------------------------------------------------


def render(api: Api) -> str:
    out: list[str] = []
    emit = out.append
    package = api.files[0].package if api.files else ""
    emit("# API reference")
    emit("")
    emit(
        f"Package `{package}` (`proto/{PACKAGE_DIR.as_posix()}/`). Generated from the comments in the "
        "`.proto` files by `scripts/gen_api_docs.py`: do not edit by hand; change the comments and run "
        "`.venv/bin/python scripts/gen_api_docs.py` (`scripts/test` fails when this file is out of date)."
    )
    emit("")
    emit(
        "Errors carry a `google.rpc.Status` with an `ErrorInfo` (domain `statekeeper.v1`, a `reason` "
        "and metadata); see the README's API section for the codes."
    )
    emit("")

    services = [(f, i, s) for f in api.files for i, s in enumerate(f.service)]
    emit("## Services")
    emit("")
    for f, _, s in services:
        rpcs = ", ".join(f"`{m.name}`" for m in s.method)
        emit(f"- [{s.name}](#{anchor(s.name)}) ({f.name.rsplit('/', 1)[-1]}): {rpcs}")
    emit("")
    for f, i, s in services:
        emit(f"### {s.name}")
        emit("")
        text = api.comment(f, (FILE_SERVICE, i))
        if text:
            emit(paragraphs(text))
            emit("")
        emit("| RPC | request → response | description |")
        emit("| --- | --- | --- |")
        for j, m in enumerate(s.method):
            request = ("stream " if m.client_streaming else "") + api.link(m.input_type)
            response = ("stream " if m.server_streaming else "") + api.link(m.output_type)
            description = one_line(api.comment(f, (FILE_SERVICE, i, SERVICE_METHOD, j)))
            emit(f"| `{m.name}` | {request} → {response} | {description} |")
        emit("")

    emit("## Messages")
    emit("")
    for f in api.files:
        for full, msg, path in api.messages(f):
            if msg.options.map_entry:
                continue  # shown as map<K, V> where used
            name = api.display(full)
            emit(f"### {name}")
            emit("")
            text = api.comment(f, path)
            if text:
                emit(paragraphs(text))
                emit("")
            if not msg.field:
                emit("No fields.")
                emit("")
                continue
            emit("| field | number | type | description |")
            emit("| --- | --- | --- | --- |")
            for k, field in enumerate(msg.field):
                description = one_line(api.comment(f, (*path, MESSAGE_FIELD, k)))
                if field.HasField("oneof_index") and not field.proto3_optional:
                    oneof = msg.oneof_decl[field.oneof_index].name
                    description = f"*One of `{oneof}`.* {description}".rstrip()
                emit(f"| `{field.name}` | {field.number} | {api.field_type(field)} | {description} |")
            emit("")

    emit("## Enums")
    emit("")
    for f in api.files:
        for full, enum, path in api.enums(f):
            name = api.display(full)
            emit(f"### {name}")
            emit("")
            text = api.comment(f, path)
            if text:
                emit(paragraphs(text))
                emit("")
            emit("| value | number | description |")
            emit("| --- | --- | --- |")
            for k, value in enumerate(enum.value):
                description = one_line(api.comment(f, (*path, ENUM_VALUE, k)))
                emit(f"| `{value.name}` | {value.number} | {description} |")
            emit("")
    return "\n".join(out).rstrip("\n") + "\n"


# -- the configuration table ----------------------------------------------------------------------


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value in ("", {}, None):
        return "\N{EN DASH}"
    return f"`{value}`"


def config_table() -> str:
    """Every `statekeeper serve` flag with its variable, default and help, as parse() builds them."""
    from statekeeper_server.app import config
    from statekeeper_server.domain.limits import Limits

    defaults, limits = config.Config(), Limits()
    rows = [
        (f.name, getattr(defaults, f.name), config._HELP[f.name])
        for f in fields(config.Config)
        if f.name != "limits"
    ]
    rows += [
        (f.name, getattr(limits, f.name), config._LIMIT_HELP.get(f.name, "limit")) for f in fields(Limits)
    ]
    out = [
        "| flag | environment variable | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, default, text in rows:
        flag, env = "--" + name.replace("_", "-"), config.ENV_PREFIX + name.upper()
        out.append(f"| `{flag}` | `{env}` | {_default(default)} | {_escape(text)} |")
    return "\n".join(out)


def with_config_table(operations: str) -> str:
    begin, end = operations.find(CONFIG_BEGIN), operations.find(CONFIG_END)
    if begin < 0 or end < begin:
        raise SystemExit(
            f"{OPERATIONS.relative_to(ROOT)}: the configuration table's marker comments are missing"
        )
    return operations[: begin + len(CONFIG_BEGIN)] + "\n" + config_table() + "\n" + operations[end:]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when a generated doc is out of date")
    args = parser.parse_args()
    operations = OPERATIONS.read_text()
    wanted = {OUT: render(Api(compile_protos().file)), OPERATIONS: with_config_table(operations)}
    stale = [path for path, text in wanted.items() if (path.read_text() if path.exists() else "") != text]
    names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
    if args.check:
        if stale:
            print(f"out of date: {names}; run scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        print("docs/api.md and the configuration table in docs/operations.md are up to date")
        return 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
    print(f"wrote {names}" if stale else "nothing to write: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
