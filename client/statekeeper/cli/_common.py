"""What every command shares: connection flags, the client, and output — JSON for machines,
tables for people. Rules (README, CLI): references print as `root/type:id`; bytes print as text
when they are UTF-8 text, else as base64 (JSON: {"encoding": "base64", "value": ...}); times
(`*_ms` fields that are points in time) are local date-times in tables and epoch ms in JSON."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from statekeeper._sync.client import SyncClient
from statekeeper._types import Ref

Handler = Callable[[SyncClient, argparse.Namespace], int]
"""A command: runs with a connected client, prints, returns the exit code."""

# -- connection -------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def common_parser() -> argparse.ArgumentParser:
    """The flags of every command that talks to a server."""
    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        default=env("STATEKEEPER_ADDRESS", "127.0.0.1:50051"),
        metavar="HOST:PORT",
        help="server address (STATEKEEPER_ADDRESS; default 127.0.0.1:50051)",
    )
    group.add_argument(
        "--token", default=env("STATEKEEPER_TOKEN", ""), help="bearer token (STATEKEEPER_TOKEN)"
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=_env_flag("STATEKEEPER_TLS"),
        help="use TLS, trusting the system's CAs (implied by --tls-ca) (STATEKEEPER_TLS)",
    )
    group.add_argument(
        "--tls-ca",
        default=env("STATEKEEPER_TLS_CA", ""),
        metavar="PEM",
        help="CA to trust for the server (STATEKEEPER_TLS_CA)",
    )
    group.add_argument(
        "--tls-cert",
        default=env("STATEKEEPER_TLS_CERT", ""),
        metavar="PEM",
        help="client certificate, for mutual TLS (STATEKEEPER_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        default=env("STATEKEEPER_TLS_KEY", ""),
        metavar="PEM",
        help="key of --tls-cert (STATEKEEPER_TLS_KEY)",
    )
    group.add_argument(
        "--tls-server-name",
        default=env("STATEKEEPER_TLS_SERVER_NAME", ""),
        metavar="NAME",
        help="name to check the server's certificate against, if not the --server host",
    )
    group.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds per call (default 10)"
    )
    group.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return common


def connect_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "token": args.token or None,
        "timeout": args.timeout,
        "wait_ready": args.timeout,
        "tls": args.tls,
        "tls_ca": args.tls_ca or None,
        "tls_cert": args.tls_cert or None,
        "tls_key": args.tls_key or None,
        "tls_server_name": args.tls_server_name or None,
    }


def connect(args: argparse.Namespace) -> SyncClient:
    return SyncClient.connect(args.server, **connect_options(args))


def ref_arg(text: str) -> Ref:
    """argparse type of a node reference: root or root/type:id/..."""
    try:
        return Ref.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def choice(valid: Iterable[str], what: str) -> Callable[[str], str]:
    """argparse type accepting one of `valid` (any case); a bad value lists the valid ones."""
    names = list(valid)

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; one of: {', '.join(names)}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def read_data(args: argparse.Namespace) -> bytes | None:
    """--data TEXT or --data-file PATH ('-' for standard input)."""
    if getattr(args, "data_file", None):
        if args.data_file == "-":
            return sys.stdin.buffer.read()
        return Path(args.data_file).read_bytes()
    return args.data.encode() if getattr(args, "data", None) is not None else None


def add_data_flags(p: argparse.ArgumentParser, what: str = "data") -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--data", metavar="TEXT", help=f"{what} as text")
    group.add_argument(
        "--data-file", metavar="PATH", help=f"{what} from a file, '-' for standard input (binary is fine)"
    )
    p.add_argument("--content-type", default="", help="content type of the data, e.g. application/json")


# -- output -----------------------------------------------------------------------------------

# `*_ms` fields that are durations or event-time positions, not points in time.
_DURATION_FIELDS = frozenset({"ack_wait_ms", "schedule_ms", "delay_ms", "lease_duration_ms"})
_EVENT_TIME_FIELDS = frozenset(
    {
        "timestamp_ms",
        "start_ms",
        "latest_savepoint_ms",
        "next_savepoint_ms",
        "first_filled_ms",
        "last_filled_ms",
        "processed_time_ms",
    }
)


def is_text(data: bytes) -> bool:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def jsonable(value: Any) -> Any:
    """A value as JSON: references as text, maps as objects, bytes as text or base64."""
    if isinstance(value, Ref):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        if is_text(value):
            return value.decode()
        return {"encoding": "base64", "value": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def json_line(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"))


def fmt_time(ms: int) -> str:
    """Epoch milliseconds as a local date-time; 0 is "-"."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def fmt_bytes(data: bytes, content_type: str = "", width: int = 80) -> str:
    """Bytes for a terminal: text (control characters escaped, cut to width), else base64."""
    kind = f", {content_type}" if content_type else ""
    if not data:
        return "-"
    if is_text(data):
        text = (
            data.decode().replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        )
        return (text if len(text) <= width else text[: width - 1] + "…") + (
            f"  ({content_type})" if content_type else ""
        )
    encoded = base64.b64encode(data).decode()
    shown = encoded if len(encoded) <= width else encoded[: width - 1] + "…"
    return f"base64:{shown}  ({len(data)} bytes{kind})"


def cell(value: Any, name: str = "") -> str:
    """One value for a table: never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and name.endswith("_ms") and name not in _DURATION_FIELDS:
        if name in _EVENT_TIME_FIELDS:
            return f"{value} ({fmt_time(value)})" if value else "0"
        return fmt_time(value)
    if isinstance(value, bytes):
        return fmt_bytes(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) or "-"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return str(getattr(value, "id", None) or getattr(value, "name", None) or type(value).__name__)
    return str(value)


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def fields_table(value: Any, *, skip: Iterable[str] = (), omit_empty: Iterable[str] = ()) -> str:
    """A dataclass as FIELD / VALUE rows."""
    rows = []
    skipped, empty_ok = set(skip), set(omit_empty)
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if f.name in skipped or (f.name in empty_ok and not v):
            continue
        rows.append([f.name, cell(v, f.name)])
    return table(rows, ["field", "value"])


def show(args: argparse.Namespace, value: Any, render: Callable[[], str] | None = None) -> int:
    """Print value as JSON with --json, else as `render()` (default: a field table)."""
    if args.json:
        print_json(value)
    else:
        print(render() if render is not None else fields_table(value))
    return 0
